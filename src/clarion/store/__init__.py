"""The database: the source of truth."""
