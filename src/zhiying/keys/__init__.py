"""API keys: write keys (ingest only) and admin keys (the management API)."""
