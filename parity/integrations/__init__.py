"""Integrations of the client with training frameworks; each imports its framework itself."""
