"""alembic's environment: fleet's models, on the connection ``fleet.migrations`` passes.

Run migrations through ``fleet.migrations`` (``Database.create_schema``, which ``fleet serve``
calls on start, or ``python -m fleet.migrations``); the ``alembic`` command line is not set up.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from fleet.migrations import render_item

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("run fleet's migrations through fleet.migrations (fleet serve does it on start)")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=True,  # ALTERs that SQLite cannot do become copy-and-move (no-op elsewhere)
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
