"""The state database: engine set-up (SQLite WAL by default, or PostgreSQL), schema and short
sessions.

Rule of the house: never hold a transaction open across network I/O. Callers open a session,
read or write, commit, and leave before any SSH call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from fleet.models import tables  # noqa: F401  (registers the tables on SQLModel.metadata)


def make_engine(url: str) -> Engine:
    """Create the engine for ``url``; for SQLite, turn on WAL and a busy timeout."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            _wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _wal(cur: Any) -> None:
    """Turn on WAL (persistent: a no-op once any connection did). Switching needs the file to
    itself and SQLite answers "database is locked" at once, without waiting, while another
    process holds a lock (several replicas starting on a new database): retry for a while."""
    import sqlite3
    import time

    for attempt in range(200):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.05)


class Database:
    """Owns the engine; ``session()`` yields a short-lived session that commits on success."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        # Told how long each write transaction took (seconds): fleet.metrics' histogram.
        self.on_write: Callable[[float], None] | None = None

    def create_schema(self) -> None:
        """Upgrade the schema to the newest migration (a fresh database gets every table; one
        made by fleet 0.1.0 is upgraded in place). Idempotent. See ``fleet.migrations``."""
        from fleet.migrations import upgrade  # alembic is only needed here

        upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session
            session.commit()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A Core connection in a transaction, for hot-path writes (no ORM unit of work)."""
        started = time.perf_counter()
        with self.engine.begin() as conn:
            yield conn
        if self.on_write is not None:
            self.on_write(time.perf_counter() - started)

    def dispose(self) -> None:
        self.engine.dispose()
