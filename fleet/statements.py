"""The SQL of the hot path: statements built once (building one per write cost more than
SQLite's own work) and run through the driver's own ``execute``/``executemany`` with plain
parameters (Core's parameter processing cost three times the driver call). The store
(fleet.store) composes them into its transactions."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, insert, null, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from fleet.models.enums import JobState
from fleet.models.tables import Attempt, Event, Job, NewJob, Result, SubmitKey, Token, User

T = TypeVar("T")

JOBS = Job.__table__  # type: ignore[attr-defined]
ATTEMPTS = Attempt.__table__  # type: ignore[attr-defined]
RESULTS = Result.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]
EVENT_COLS = ["at", "type", "user", "job_id", "attempt_id", "host", "state", "reason", "message",
              "data_json"]
_UPDATES: dict[tuple[str, tuple[str, ...]], Any] = {}


def update_by_id(table: Any, names: tuple[str, ...]) -> Any:
    """A cached Core ``UPDATE table SET names... WHERE id = :_id`` (statement built once).

    Hot-path writes go through Core with bound parameters: building ORM/DML statements per
    call cost more than SQLite's own work.
    """
    key = (table.name, names)
    stmt = _UPDATES.get(key)
    if stmt is None:
        stmt = update(table).where(table.c.id == bindparam("_id")).values({n: bindparam(n) for n in names})
        _UPDATES[key] = stmt
    return stmt


# STARTING -> RUNNING; the job's started_at is its first attempt's start (retries keep it).
JOB_RUNNING = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("_id"), JOBS.c.state == bindparam("_state"))
    .values(state=bindparam("state"), updated_at=bindparam("updated_at"),
            started_at=func.coalesce(JOBS.c.started_at, bindparam("started_at")))
)


# A new job's row, every column NewJob has; a submission's idempotency key.
JOB_FIELDS = tuple(f.name for f in dataclasses.fields(NewJob))
INSERT_JOB = insert(JOBS).values({n: bindparam(n) for n in JOB_FIELDS})
_KEYS = SubmitKey.__table__  # type: ignore[attr-defined]
INSERT_SUBMIT_KEY = insert(_KEYS).values({n: bindparam(n) for n in ("user", "key", "job_ids", "created_at")})

# A new attempt's row (its other columns start NULL).
INSERT_ATTEMPT = insert(ATTEMPTS).values({n: bindparam(n) for n in (
    "id", "job_id", "number", "host", "backend", "slots", "state", "created_at", "log_bytes")})

_J, _A = JOBS.c, ATTEMPTS.c


def _ids_in(state: JobState) -> Any:
    """Which of the jobs ``ids`` (an expanding parameter) are in ``state`` now."""
    return sa_select(_J.id).where(_J.id.in_(bindparam("ids", expanding=True)), _J.state == state.value)


STARTING_JOBS = _ids_in(JobState.STARTING)  # their first attempt's start moves them to RUNNING
PENDING_AMONG = _ids_in(JobState.PENDING)  # a batch's hand-over (fleet.api.submit)


def _job_event_insert(which: Any) -> Any:
    """``INSERT INTO events SELECT`` a job.state row for the jobs ``which`` selects."""
    return insert(EVENTS).from_select(EVENT_COLS, sa_select(
        bindparam("at"), bindparam("type"), _J.user, _J.id, _J.current_attempt, _J.host, _J.state,
        _J.reason, _J.message, null()).where(which))


# Built once (building a statement per write cost more than SQLite's own work): an event for
# jobs / an attempt as they are now in the transaction, by id.
JOB_EVENTS = _job_event_insert(_J.id.in_(bindparam("ids", expanding=True)))
# One job (most writes): an expanding IN is rendered again on every execution.
JOB_EVENT = _job_event_insert(_J.id == bindparam("id"))
ATTEMPT_EVENT = insert(EVENTS).from_select(EVENT_COLS, sa_select(
    bindparam("at"), bindparam("type"), _J.user, _A.job_id, _A.id, _A.host, _A.state, _A.reason,
    _A.message, bindparam("data")).select_from(ATTEMPTS.join(JOBS, _J.id == _A.job_id))
    .where(_A.id == bindparam("id")))


# The user of a token, with what decides whether the token is valid: one statement, built
# once (it runs on every API request).
_TOKENS = Token.__table__  # type: ignore[attr-defined]
_USERS = User.__table__  # type: ignore[attr-defined]
TOKEN_USER = (
    sa_select(_TOKENS.c.id.label("token_id"), _TOKENS.c.expires_at, _TOKENS.c.revoked_at,
              _TOKENS.c.last_used_at, _USERS.c.id, _USERS.c.name, _USERS.c.is_admin, _USERS.c.created_at)
    .select_from(_TOKENS.join(_USERS, _USERS.c.id == _TOKENS.c.user_id))
    .where(_TOKENS.c.token_hash == bindparam("hash"))
)
TOKEN_USED = update(_TOKENS).where(_TOKENS.c.id == bindparam("_id")).values(last_used_at=bindparam("at"))


_DRIVER_SQL: dict[tuple[int, str], tuple[str, tuple[str, ...] | None]] = {}


def _driver_sql(conn: Connection, stmt: Any) -> tuple[str, tuple[str, ...] | None]:
    """A prebuilt statement as the driver's SQL and its parameter order, compiled once per
    dialect."""
    key = (id(stmt), conn.dialect.name)
    compiled = _DRIVER_SQL.get(key)
    if compiled is None:
        c = stmt.compile(dialect=conn.dialect)
        compiled = _DRIVER_SQL[key] = (c.string, tuple(c.positiontup) if c.positional else None)
    return compiled


def exec_driver(conn: Connection, stmt: Any, params: dict[str, Any]) -> Any:
    """Run a prebuilt statement on the driver's own cursor, in ``conn``'s transaction: five
    event rows per job went through Core's execute (~60 us of Python each, more than SQLite's
    own work), and Core's ``exec_driver_sql`` still builds a result (its column metadata: ~35
    us for the token lookup every request makes, against 6 us for SQLite's query). Parameters
    need no type processing here. Returns the driver's cursor: a query's rows are plain tuples
    in the statement's column order (``fetchone``), values as the driver gives them. A driver
    error is raised as SQLAlchemy's (``IntegrityError``, ``OperationalError``), as Core would."""
    sql, order = _driver_sql(conn, stmt)
    return _on_cursor(conn, sql, tuple(params[n] for n in order) if order is not None else params, False)


def _on_cursor(conn: Connection, sql: str, params: Any, many: bool) -> Any:
    """Run ``sql`` on the driver's cursor; a driver error is raised as SQLAlchemy's, and a
    connection the database dropped is invalidated first, as Core does (the transaction's
    rollback then does not hide the cause behind "the connection is lost")."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        cursor = conn.connection.cursor()
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
    except dbapi.Error as exc:
        gone = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if gone:
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, params, exc, dbapi.Error, connection_invalidated=gone,
                                  dialect=conn.dialect) from exc
    return cursor


def job_events(conn: Connection, ids: Sequence[str], now: float) -> None:
    """``job.state`` events for jobs as they are now in this transaction (one statement)."""
    if len(ids) == 1:
        exec_driver(conn, JOB_EVENT, {"at": now, "type": "job.state", "id": ids[0]})
    else:
        for part in chunked(ids):
            conn.execute(JOB_EVENTS, {"at": now, "type": "job.state", "ids": part})


def attempt_event(conn: Connection, attempt_id: str, kind: str, now: float,
                   data: dict[str, Any] | None = None) -> None:
    """An ``attempt.*`` event for an attempt as it is now in this transaction."""
    exec_driver(conn, ATTEMPT_EVENT, {"at": now, "type": kind, "id": attempt_id,
                                        "data": json.dumps(data) if data else None})


def exec_driver_many(conn: Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> None:
    """:func:`exec_driver` for many rows at once (the driver's executemany)."""
    if len(rows) == 1:
        exec_driver(conn, stmt, rows[0])
        return
    sql, order = _driver_sql(conn, stmt)
    assert order is not None or conn.dialect.paramstyle in ("named", "pyformat")
    _on_cursor(conn, sql, [tuple(r[n] for n in order) for r in rows] if order is not None else list(rows), True)


def by_columns(rows: Iterable[tuple[dict[str, Any], str]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows to update ``(values, id)`` grouped by the columns they set (one executemany each)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for values, row_id in rows:
        groups.setdefault(tuple(sorted(values)), []).append(dict(values, _id=row_id))
    return groups


# Values in one ``IN (...)`` list: under SQLite's limit of bound variables per statement
# (999 before SQLite 3.32, as Ubuntu 20.04 ships).
IN_CHUNK = 500


def chunked(values: Sequence[T]) -> Iterator[list[T]]:
    """``values`` in lists of at most IN_CHUNK, for one ``IN (...)`` each."""
    for i in range(0, len(values), IN_CHUNK):
        yield list(values[i:i + IN_CHUNK])
