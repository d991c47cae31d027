"""Profiles: a person's current traits, identifiers and activity, read across merged ONE_IDs."""
