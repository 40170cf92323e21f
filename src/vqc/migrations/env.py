"""Alembic environment: vqc.records.migrate hands over an open connection; no alembic.ini."""
from alembic import context

connection = context.config.attributes["connection"]
# batch mode: SQLite cannot ALTER most things in place, so later migrations copy the table there
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
