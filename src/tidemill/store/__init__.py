"""Durable state: SQLite (WAL) by default, Postgres by URL."""
