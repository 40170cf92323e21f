"""Alembic migrations of the inspection records schema (run by vqc.records.migrate)."""
