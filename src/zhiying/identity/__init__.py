"""ONE_ID: every identifier of a person (user id, device, phone, email, WeChat ids) → one user."""
