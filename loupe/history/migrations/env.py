"""Alembic's environment: always run from `history_schema.migrate` with an open connection."""

from alembic import context

from loupe.history.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through history_schema.migrate(), which passes a connection")
# Batch mode lets ALTERs work on SQLite (table copy) and is plain ALTER elsewhere.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
