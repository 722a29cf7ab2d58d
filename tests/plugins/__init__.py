"""Third-party-style plugin modules used by the tests (never registered by default)."""
