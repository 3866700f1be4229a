"""Postgres for the web process: see `dashboard.core.db.base`."""
