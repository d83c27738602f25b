"""Schema migrations (alembic), run by fleet itself: no ``alembic.ini`` at run time.

``Database.create_schema()`` calls :func:`upgrade`. A fresh database gets every table; a
database made before migrations existed (fleet 0.1.0: tables but no ``alembic_version``) is
stamped ``0001``, the schema of that release, then upgraded; one at the head is left alone. The
whole upgrade is one transaction under a lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL advisory
lock), so replicas that start together migrate once and never see half a schema.

To change the schema (a column, a table, an index):

1. edit ``fleet/models/tables.py``;
2. ``python -m fleet.migrations revision -m "jobs: add deadline"`` writes
   ``fleet/migrations/versions/000N_jobs_add_deadline.py``: what the models have and the head
   lacks (alembic autogenerate, batch mode so it also runs on SQLite);
3. read it: a NOT NULL column added to a table with rows needs a ``server_default``; renames
   come out as drop + add, and data moves are yours to write;
4. ``pytest tests/test_migrations.py`` fails while the head and the models differ
   (:func:`schema_diff`) and runs every revision on SQLite and PostgreSQL.

Never edit a revision that has been released; add one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from fleet.models import tables  # noqa: F401  (registers the tables on SQLModel.metadata)

BASELINE = "0001"  # fleet 0.1.0's schema, the one a database without alembic_version has
_PG_LOCK_KEY = 0x666C656574  # "fleet": one advisory lock for all of fleet's migrations


def config(connection: Connection | None = None) -> Config:
    """An alembic config for the migrations in this package (env.py uses ``connection``)."""
    cfg = Config()
    cfg.set_main_option("script_location", "fleet:migrations")
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    head = ScriptDirectory.from_config(config()).get_current_head()
    assert head is not None
    return head


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: no alembic_version, fresh or 0.1.0)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """One transaction that only one process at a time gets; committed on success."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # takes the write lock now, not at 1st write
        elif conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        yield conn
        conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (see the module docstring). Idempotent."""
    with _locked(engine) as conn:
        cfg = config(conn)
        names = set(inspect(conn).get_table_names())
        if "alembic_version" not in names and "jobs" in names:
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, revision)


def schema_diff(engine: Engine) -> list[Any]:
    """What autogenerate would change to make the database match the models (empty: none).

    On a database upgraded to head, anything here is a model change without a migration."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, SQLModel.metadata))


def render_item(type_: str, obj: Any, _ctx: Any) -> Any:
    """Autogenerate writes sqlmodel's AutoString as plain ``sa.String()`` (no sqlmodel import
    in revisions: they must not change when the models do)."""
    if type_ == "type" and isinstance(obj, AutoString):
        return "sa.String()"
    return False
