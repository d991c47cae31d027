"""HTTP: the FastAPI app factory, auth dependencies and problem-details errors."""
