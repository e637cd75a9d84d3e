"""Examples of mtls-auth in applications; each is tested in tests/."""
