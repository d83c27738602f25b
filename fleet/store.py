"""Typed database operations on jobs, attempts, results, users and tokens.

Each function opens one short transaction; none does network I/O. The scheduler and the API
share this module, so state transitions are written in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, or_, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import defer
from sqlmodel import col, select

from fleet.db import Database
from fleet.errors import FleetError, NotFound
from fleet.hoststore import HostStore
from fleet.ids import new_id
from fleet.matrixstore import MatrixStore
from fleet.models.enums import AttemptState, JobState, Reason
from fleet.models.spec import JobSpec
from fleet.models.tables import (
    Artifact,
    Attempt,
    Event,
    Job,
    MatrixRun,
    MatrixSchedule,
    NewJob,
    Result,
    SubmitKey,
    Token,
    Upload,
    User,
)
from fleet.results import key_columns
from fleet.statements import (
    ATTEMPT_EVENT,
    ATTEMPTS,
    EVENTS,
    IN_CHUNK,
    INSERT_ATTEMPT,
    INSERT_JOB,
    INSERT_SUBMIT_KEY,
    JOB_FIELDS,
    JOB_RUNNING,
    JOBS,
    PENDING_AMONG,
    RESULTS,
    STARTING_JOBS,
    TOKEN_USED,
    TOKEN_USER,
    attempt_event,
    by_columns,
    chunked,
    exec_driver,
    exec_driver_many,
    job_events,
    update_by_id,
)

ACTIVE_JOB_STATES = [JobState.STARTING.value, JobState.RUNNING.value, JobState.CANCELLING.value]
QUEUED_JOB_STATES = [JobState.PENDING.value, JobState.RETRYING.value]


NOTIFY_CHANNEL = "fleet_events"  # PostgreSQL: every event write NOTIFYs it (fleet.events)


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptRef:
    """An attempt as the scheduler follows it: what placing, launching and ending it need
    (no ORM object on the hot path: building one cost more than writing its row)."""

    id: str
    job_id: str
    number: int
    host: str
    backend: str
    slots: int
    state: str

    @classmethod
    def of(cls, a: Attempt) -> AttemptRef:
        return cls(id=a.id, job_id=a.job_id, number=a.number, host=a.host, backend=a.backend,
                   slots=a.slots, state=a.state)


Start = tuple[str, str, float]  # an attempt's start: (job id, attempt id, started at)


@dataclasses.dataclass(frozen=True, slots=True)
class Ended:
    """How an attempt ended, for :meth:`Store.finish_many`: its row's new values, its job's,
    and the result and artifact rows it made."""

    attempt_id: str
    attempt_values: dict[str, Any]
    job_id: str
    job_values: dict[str, Any]
    result: dict[str, Any] | None = None
    artifacts: tuple[dict[str, Any], ...] = ()


_ID_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _prefix_bounds(prefix: str) -> tuple[str, str | None] | None:
    """``[low, high)`` holding exactly the ids that start with ``prefix`` (None: no id can).

    ``high`` is the prefix "plus one" in digits-then-letters, not ``prefix + "\\x7f"``: that is
    only right in byte order (SQLite, PostgreSQL's C collation); a linguistic collation such as
    en_US ignores control characters. Both bounds keep the lookup on the primary key index.
    """
    if any(c not in _ID_CHARS for c in prefix):
        return None
    stem = prefix.rstrip("z")
    if not stem:
        return prefix, None
    return prefix, stem[:-1] + _ID_CHARS[_ID_CHARS.index(stem[-1]) + 1]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


JOB_SORTS = {"created": "id", "name": "name", "state": "state", "user": "user", "host": "host",
             "priority": "priority", "pool": "pool", "kind": "kind"}  # sort name -> jobs column


class JobLike(Protocol):
    """A job row or the scheduler's record of one (fleet.scheduler.records.JobRef)."""

    id: str
    attempt_count: int


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Called (from any thread) after a transaction that wrote events commits: the event
        # hub of this process reads them at once (fleet.events). Other processes learn of
        # them by PostgreSQL NOTIFY.
        self.on_event: Callable[[], None] | None = None
        self.matrix = MatrixStore(db, self._by_id)  # matrix runs, verdicts, schedules
        self.hosts = HostStore(db, self._telling, self.add_event)  # health, drain, facts
        # A token's user as its row read now says it is (a User made per request cost as much
        # as the lookup); a changed row (renamed, made admin) is another key. Read-only.
        self._users: dict[tuple[Any, ...], User] = {}

    @contextmanager
    def _telling(self) -> Iterator[Connection]:
        """A write transaction that writes events: NOTIFY (PostgreSQL) at its commit, and
        ``on_event`` after it."""
        with self.db.write() as conn:
            yield conn
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
        if self.on_event is not None:
            self.on_event()

    # ------------------------------------------------------------------ events

    def add_event(self, type: str, *, user: str | None = None, job_id: str | None = None,
                  host: str | None = None, state: str | None = None, message: str | None = None,
                  data: dict[str, Any] | None = None) -> None:
        with self._telling() as conn:
            conn.execute(insert(EVENTS), {
                "at": time.time(), "type": type, "user": user, "job_id": job_id,
                "attempt_id": None, "host": host, "state": state, "reason": None,
                "message": message, "data_json": json.dumps(data) if data else None})

    def events_after(self, after: int, limit: int = 1000) -> list[Event]:
        """Events numbered above ``after``, oldest first."""
        with self.db.session() as s:
            return list(s.exec(select(Event).where(col(Event.id) > after).order_by(col(Event.id))
                               .limit(limit)).all())

    def last_event_id(self) -> int:
        with self.db.write() as conn:
            return int(conn.execute(select(func.max(EVENTS.c.id))).scalar() or 0)

    def expire_events(self, before: float) -> int:
        with self.db.write() as conn:
            return int(conn.execute(delete(EVENTS).where(EVENTS.c.at < before)).rowcount or 0)

    # ------------------------------------------------------------------ users and tokens

    def create_user(self, name: str, is_admin: bool = False) -> User:
        with self.db.session() as s:
            if s.exec(select(User).where(User.name == name)).first() is not None:
                raise FleetError(f"user {name} already exists")
            user = User(name=name, is_admin=is_admin, created_at=time.time())
            s.add(user)
            s.flush()
            s.refresh(user)
            return user

    def get_user(self, name: str) -> User | None:
        with self.db.session() as s:
            return s.exec(select(User).where(User.name == name)).first()

    def list_users(self) -> Sequence[User]:
        with self.db.session() as s:
            return s.exec(select(User).order_by(User.name)).all()

    def create_token(self, user: User, name: str = "default", expires_at: float | None = None) -> str:
        """Make a new token for ``user``; returns it in clear (only its hash is stored)."""
        return self.issue_token(user, name, expires_at)[0]

    def issue_token(self, user: User, name: str = "default",
                    expires_at: float | None = None) -> tuple[str, Token]:
        """A new token for ``user``: (the token in clear, shown once; its row)."""
        token = "flt_" + secrets.token_urlsafe(32)
        with self.db.session() as s:
            assert user.id is not None
            row = Token(user_id=user.id, name=name, token_hash=hash_token(token), created_at=time.time(),
                        expires_at=expires_at)
            s.add(row)
            s.flush()
            s.refresh(row)
        return token, row

    def user_for_token(self, token: str, now: float | None = None) -> User | None:
        """The user of a valid token: not revoked, not expired. Read from the database on every
        call, so a revocation holds at once on every replica. Marks the token used (at most
        once a minute: a write per request would cost more than the lookup)."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            row = exec_driver(conn, TOKEN_USER, {"hash": hash_token(token)}).fetchone()
            if row is None:
                return None
            token_id, expires_at, revoked_at, last_used_at, user_id, name, is_admin, created_at = row
            if revoked_at is not None or (expires_at is not None and expires_at <= now):
                return None
            if last_used_at is None or now - last_used_at > 60:
                exec_driver(conn, TOKEN_USED, {"_id": token_id, "at": now})
        key = (user_id, name, bool(is_admin), created_at)
        user = self._users.get(key)
        if user is None:
            if len(self._users) >= 1024:
                self._users.clear()
            user = self._users[key] = User(id=user_id, name=name, is_admin=bool(is_admin), created_at=created_at)
        return user

    def list_tokens(self, user: str | None = None) -> list[tuple[Token, str]]:
        """Tokens (never their value) with their user's name, newest first; ``user``: one user's."""
        q = select(Token, User.name).join(User, col(User.id) == col(Token.user_id))
        if user is not None:
            q = q.where(User.name == user)
        with self.db.session() as s:
            return [(t, n) for t, n in s.exec(q.order_by(col(Token.id).desc())).all()]

    def revoke_token(self, token_id: int, user: str | None = None) -> tuple[Token, str] | None:
        """Revoke a token (``user``: only if it is theirs). Returns it, or None if there is no
        such token. Idempotent."""
        with self.db.session() as s:
            q = select(Token, User.name).join(User, col(User.id) == col(Token.user_id)).where(Token.id == token_id)
            if user is not None:
                q = q.where(User.name == user)
            found = s.exec(q).first()
            if found is None:
                return None
            token, name = found
            if token.revoked_at is None:
                token.revoked_at = time.time()
                s.add(token)
            return token, name

    def count_users(self) -> int:
        with self.db.session() as s:
            return int(s.exec(select(func.count()).select_from(User)).one())

    # ------------------------------------------------------------------ jobs

    def create_jobs(self, specs: Sequence[tuple[JobSpec, str]], user: str,
                    links: Sequence[dict[str, Any] | None] | None = None,
                    idempotency_key: str | None = None, run: MatrixRun | None = None,
                    samples: Sequence[tuple[int, int | None]] | None = None) -> list[NewJob]:
        """Insert PENDING jobs (spec, queue key) in one transaction: all or none.

        ``links[i]`` puts job i in a chain: ``{"step": NAME, "after": INDEX or None}`` (INDEX:
        an earlier job of this batch; the chain is named by its first job), or ``{"after_id":
        JOB}`` for a job that waits for an existing one."""
        jobs = [self._new_job(spec, user, queue) for spec, queue in specs]
        for job, link in zip(jobs, links or [None] * len(jobs), strict=True):
            if not link:
                continue
            if link.get("after_id"):
                job.after = link["after_id"]
                continue
            job.step = link["step"]
            before = link.get("after")
            job.after = jobs[before].id if before is not None else None
            job.chain = jobs[link["first"]].id
        if run is not None:  # a matrix run: its row and its jobs (point, sample) together
            for job, (point, repeat) in zip(jobs, samples or [], strict=True):
                job.matrix_run, job.matrix_point, job.matrix_repeat = run.id, point, repeat
        with self._telling() as conn:
            if run is not None:
                conn.execute(insert(MatrixRun.__table__), run.model_dump())  # type: ignore[attr-defined]
            if idempotency_key is not None:  # first, so a concurrent twin fails before any job
                exec_driver(conn, INSERT_SUBMIT_KEY, {"user": user, "key": idempotency_key,
                                                      "job_ids": json.dumps([j.id for j in jobs]),
                                                      "created_at": time.time()})
            exec_driver_many(conn, INSERT_JOB, [{n: getattr(job, n) for n in JOB_FIELDS} for job in jobs])
            job_events(conn, [j.id for j in jobs], time.time())
        return jobs

    def jobs_for_key(self, user: str, key: str) -> list[Job] | None:
        """The jobs an earlier submission with this idempotency key made, or None."""
        with self.db.write() as conn:
            row = conn.execute(select(SubmitKey.job_ids).where(SubmitKey.user == user,
                                                               SubmitKey.key == key)).first()
        if row is None:
            return None
        ids = json.loads(row[0])
        by_id = {j.id: j for j in self.jobs_by_id(ids)}
        return [by_id[i] for i in ids if i in by_id]

    def forget_submit_keys(self, before: float) -> int:
        with self.db.write() as conn:
            return int(conn.execute(delete(SubmitKey).where(col(SubmitKey.created_at) < before)).rowcount or 0)

    @staticmethod
    def _new_job(spec: JobSpec, user: str, queue: str) -> NewJob:
        now = time.time()
        return NewJob(id=new_id("j"), name=spec.name, user=user, kind=spec.kind.value,
                      runner=spec.runner or "shell", pool=spec.resources.pool, queue=queue,
                      priority=spec.priority, spec_json=spec.model_dump_json(), state=JobState.PENDING.value,
                      created_at=now, updated_at=now)

    def get_job(self, job_id: str, owner: str | None = None) -> Job:
        """A job by id or unique id prefix (at least 6 characters); with ``owner``, only among
        that user's jobs (a prefix must not tell that someone else's job exists). Raises
        NotFound."""
        job: Job = self._by_id(Job, "job", job_id, owner)
        return job

    def _by_id(self, model: Any, what: str, key: str, owner: str | None) -> Any:
        """A row of ``model`` (jobs, artifacts: time-ordered string ids with a ``user``) by id
        or unique prefix of 6+ characters, among ``owner``'s rows when given."""
        with self.db.session() as s:
            row = s.get(model, key)
            if row is not None and owner is not None and row.user != owner:
                row = None
            if row is None and len(key) >= 6 and (bounds := _prefix_bounds(key)):
                q = select(model).where(col(model.id) >= bounds[0])
                if bounds[1] is not None:
                    q = q.where(col(model.id) < bounds[1])
                if owner is not None:
                    q = q.where(model.user == owner)
                rows = s.exec(q.limit(2)).all()
                if len(rows) == 1:
                    row = rows[0]
                elif len(rows) > 1:
                    raise NotFound(f"{what} id prefix {key} is ambiguous")
            if row is None:
                raise NotFound(f"no {what} {key}")
            return row

    def list_jobs(
        self,
        *,
        owner: str | None,
        states: Sequence[str] = (),
        pool: str | None = None,
        user: str | None = None,
        limit: int = 50,
        before: str | None = None,
        kind: str | None = None,
        matrix_run: str | None = None,
        search: str | None = None,
        sort: str = "-created",
        offset: int = 0,
    ) -> list[Job]:
        """Newest first unless ``sort`` says otherwise (a field of JOB_SORTS, ``-`` for
        descending; ties by id). ``owner`` restricts to one user's jobs (non-admin callers);
        ``search`` matches a part of the name, user or host, or the start of the id.
        The rows leave out ``spec_json`` (the largest column); ``get_job`` has it."""
        q = self._jobs_where(select(Job).options(defer(Job.spec_json)),  # type: ignore[arg-type]
                             owner, states, pool, user, kind, matrix_run, search)
        if before is not None:
            q = q.where(col(Job.id) < before)
        field, descending = sort.lstrip("-"), sort.startswith("-")
        column = col(getattr(Job, JOB_SORTS[field]))
        ident = col(Job.id).desc() if descending else col(Job.id)
        q = q.order_by(ident) if field == "created" else q.order_by(column.desc() if descending else column, ident)
        q = q.offset(offset).limit(limit)
        with self.db.session() as s:
            return list(s.exec(q).all())

    def count_jobs(self, *, owner: str | None, states: Sequence[str] = (), pool: str | None = None,
                   user: str | None = None, kind: str | None = None, matrix_run: str | None = None,
                   search: str | None = None) -> int:
        """How many jobs ``list_jobs`` with these filters would page through."""
        q = self._jobs_where(select(func.count()).select_from(Job),
                             owner, states, pool, user, kind, matrix_run, search)
        with self.db.session() as s:
            return int(s.exec(q).one())

    @staticmethod
    def _jobs_where(q: Any, owner: str | None, states: Sequence[str], pool: str | None, user: str | None,
                    kind: str | None, matrix_run: str | None, search: str | None) -> Any:
        if owner is not None:
            q = q.where(Job.user == owner)
        if user is not None:
            q = q.where(Job.user == user)
        if states:
            q = q.where(col(Job.state).in_(list(states)))
        if pool is not None:
            q = q.where(Job.pool == pool)
        if kind is not None:
            q = q.where(Job.kind == kind)
        if matrix_run is not None:
            q = q.where(Job.matrix_run == matrix_run)
        if search:
            like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            q = q.where(or_(col(Job.name).ilike(like, escape="\\"), col(Job.user).ilike(like, escape="\\"),
                            col(Job.host).ilike(like, escape="\\"), col(Job.id).ilike(like[1:], escape="\\")))
        return q

    def queued_jobs(self) -> list[NewJob]:
        """Every PENDING and RETRYING job, oldest first, as plain rows (a new leader reads
        50,000 of them: an ORM object each was five objects for the garbage collector to walk
        while it takes them)."""
        with self.db.session() as s:
            return [NewJob(**row._mapping) for row in s.connection().execute(
                JOBS.select().where(JOBS.c.state.in_(QUEUED_JOB_STATES)).order_by(JOBS.c.id))]

    def dependents(self, job_id: str) -> list[Job]:
        """Unfinished jobs that wait for ``job_id``."""
        with self.db.session() as s:
            return list(s.exec(select(Job).where(Job.after == job_id, Job.state == JobState.PENDING.value)
                               .order_by(Job.id)).all())

    def chain_jobs(self, chain: str) -> list[Job]:
        with self.db.session() as s:
            return list(s.exec(select(Job).where(Job.chain == chain).order_by(Job.id)).all())

    def pending_job_ids(self, since: str | None = None) -> list[str]:
        """Ids of PENDING jobs (the (state, id) index, ids only); with ``since``, only those
        with an id from it on (ids are time-ordered: the jobs made since a moment)."""
        q = select(Job.id).where(Job.state == JobState.PENDING.value)
        if since is not None:
            q = q.where(col(Job.id) >= since)
        with self.db.write() as conn:
            return list(conn.execute(q).scalars())

    def pending_among(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are PENDING now (by primary key; a query per ``IN_CHUNK`` ids)."""
        with self.db.write() as conn:
            return {i for part in chunked(list(ids)) for i in conn.execute(PENDING_AMONG, {"ids": part}).scalars()}

    def jobs_by_id(self, ids: Sequence[str]) -> list[Job]:
        """The jobs of ``ids`` that exist, by id (a query per ``IN_CHUNK`` ids)."""
        ids = sorted(ids)
        with self.db.session() as s:
            return [job for i in range(0, len(ids), IN_CHUNK)
                    for job in s.exec(select(Job).where(col(Job.id).in_(list(ids[i:i + IN_CHUNK]))).order_by(Job.id))]

    def set_job(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        if "state" not in fields:
            with self.db.write() as conn:
                conn.execute(update_by_id(JOBS, tuple(sorted(fields))), dict(fields, _id=job_id))
            return
        with self._telling() as conn:
            conn.execute(update_by_id(JOBS, tuple(sorted(fields))), dict(fields, _id=job_id))
            job_events(conn, [job_id], fields["updated_at"])

    def finish_job(self, job_id: str, state: JobState, reason: Reason, message: str | None) -> None:
        now = time.time()
        self.set_job(job_id, state=state.value, reason=reason.value, message=message, ended_at=now)

    # ------------------------------------------------------------------ attempts

    def start_attempt(self, job: JobLike, host: str, slots: int, backend: str = "ssh") -> AttemptRef:
        """Commit a placement: the attempt row is the slot lease; the job becomes STARTING."""
        return self.start_attempts([(job, host, slots, backend)])[0]

    def start_attempts(self, placed: Sequence[tuple[JobLike, str, int, str]]) -> list[AttemptRef]:
        """Commit a scheduling pass's placements ``(job, host, slots, backend)`` in one
        transaction: their attempt rows (the slot leases) and their jobs STARTING."""
        now = time.time()
        attempts = [AttemptRef(id=new_id("a"), job_id=job.id, number=job.attempt_count + 1, host=host,
                               backend=backend, slots=slots, state=AttemptState.STARTING.value)
                    for job, host, slots, backend in placed]
        names = ("attempt_count", "current_attempt", "host", "message", "reason", "state", "updated_at")
        rows = [dict(state=JobState.STARTING.value, host=a.host, attempt_count=a.number,
                     current_attempt=a.id, updated_at=now, reason=None, message=None, _id=a.job_id)
                for a in attempts]
        with self._telling() as s:
            exec_driver_many(s, INSERT_ATTEMPT, [
                {"id": a.id, "job_id": a.job_id, "number": a.number, "host": a.host, "backend": a.backend,
                 "slots": a.slots, "state": a.state, "created_at": now, "log_bytes": 0} for a in attempts])
            exec_driver_many(s, update_by_id(JOBS, names), rows)
            exec_driver_many(s, ATTEMPT_EVENT, [
                {"at": now, "type": "attempt.started", "id": a.id,
                 "data": json.dumps({"backend": a.backend, "number": a.number})} for a in attempts])
            job_events(s, [a.job_id for a in attempts], now)
        for (job, *_rest), a in zip(placed, attempts, strict=True):
            job.attempt_count = a.number
        return attempts

    def attempt_running(self, job_id: str, attempt_id: str, started_at: float) -> None:
        self.attempts_running([(job_id, attempt_id, started_at)])

    def attempts_running(self, started: Sequence[Start]) -> None:
        """Attempts ``(job id, attempt id, started at)`` whose process started, in one
        transaction: RUNNING, and their jobs too (the first attempt's start is the job's; a job
        no longer STARTING, such as one being cancelled, keeps its state)."""
        if not started:
            return
        with self._telling() as s:
            self._running(s, started, time.time())

    @staticmethod
    def _running(s: Connection, started: Sequence[Start], now: float) -> None:
        """Attempts ``(job id, attempt id, started at)`` RUNNING, in transaction ``s``."""
        if not started:
            return
        exec_driver_many(s, update_by_id(ATTEMPTS, ("started_at", "state")),
                          [{"_id": a, "state": AttemptState.RUNNING.value, "started_at": at} for _j, a, at in started])
        exec_driver_many(s, ATTEMPT_EVENT, [{"at": now, "type": "attempt.running", "id": a, "data": None}
                                              for _j, a, _at in started])
        ids = [j for j, _a, _at in started]
        moving = {j for part in chunked(ids) for j in s.execute(STARTING_JOBS, {"ids": part}).scalars()}
        if moving:
            exec_driver_many(s, JOB_RUNNING, [
                {"_id": j, "_state": JobState.STARTING.value, "state": JobState.RUNNING.value,
                 "started_at": at, "updated_at": now} for j, _a, at in started if j in moving])
            job_events(s, [j for j in ids if j in moving], now)

    def reopen_attempt(self, job_id: str, attempt_id: str, message: str) -> None:
        """An attempt given up on is followed again: it is active again (a restart reattaches
        it) until its real end is known."""
        now = time.time()
        with self._telling() as s:
            s.execute(update_by_id(ATTEMPTS, ("ended_at", "message", "reason", "state")),
                      {"_id": attempt_id, "state": AttemptState.RUNNING.value, "reason": None,
                       "message": message, "ended_at": None})
            s.execute(update_by_id(JOBS, ("message", "state", "updated_at")),
                      {"_id": job_id, "state": JobState.RUNNING.value, "message": message, "updated_at": now})
            attempt_event(s, attempt_id, "attempt.running", now)
            job_events(s, [job_id], now)

    def finish_attempt(
        self, attempt_id: str, state: AttemptState, reason: Reason, message: str | None,
        exit_code: int | None, log_bytes: int, started_at: float | None = None,
        ended_at: float | None = None,
    ) -> None:
        values: dict[str, Any] = dict(
            state=state.value, reason=reason.value, message=message, exit_code=exit_code,
            ended_at=ended_at or time.time(), log_bytes=log_bytes,
        )
        if started_at is not None:
            values["started_at"] = started_at
        with self._telling() as s:
            s.execute(update_by_id(ATTEMPTS, tuple(sorted(values))), dict(values, _id=attempt_id))
            attempt_event(s, attempt_id, "attempt.ended", time.time(), {"exit_code": exit_code})

    def finish_many(self, ended: Sequence[Ended], started: Sequence[Start] = ()) -> None:
        """End attempts (those that ended in one turn of the scheduler's loop: hundreds under
        load), move their jobs on, store their results and artifacts: one transaction, one
        statement per kind of row. ``started``: attempts whose start is not written yet
        (``attempts_running``), written first in the same transaction."""
        if not ended:
            self.attempts_running(started)
            return
        now = time.time()
        with self._telling() as s:
            self._running(s, started, now)
            for names, rows in by_columns((e.attempt_values, e.attempt_id) for e in ended).items():
                exec_driver_many(s, update_by_id(ATTEMPTS, names), rows)
            exec_driver_many(s, ATTEMPT_EVENT, [
                {"at": now, "type": "attempt.ended", "id": e.attempt_id,
                 "data": json.dumps({"exit_code": e.attempt_values.get("exit_code")})} for e in ended])
            jobs = ((dict(e.job_values, updated_at=now), e.job_id) for e in ended)
            for names, rows in by_columns(jobs).items():
                exec_driver_many(s, update_by_id(JOBS, names), rows)
            job_events(s, [e.job_id for e in ended], now)
            results = [dict(e.result, created_at=now) for e in ended if e.result is not None]
            if results:
                s.execute(insert(RESULTS), results)
            artifacts = [a for e in ended for a in e.artifacts]
            if artifacts:
                s.execute(insert(Artifact), artifacts)

    def attempts(self, job_id: str) -> list[Attempt]:
        with self.db.session() as s:
            return list(s.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number))).all())

    def attempts_of(self, job_ids: Sequence[str]) -> dict[str, list[Attempt]]:
        """The attempts of each of ``job_ids``, in order (a query per ``IN_CHUNK`` jobs)."""
        out: dict[str, list[Attempt]] = {}
        with self.db.session() as s:
            for i in range(0, len(job_ids), IN_CHUNK):
                for a in s.exec(select(Attempt).where(col(Attempt.job_id).in_(list(job_ids[i:i + IN_CHUNK])))
                                .order_by(col(Attempt.job_id), col(Attempt.number))):
                    out.setdefault(a.job_id, []).append(a)
        return out

    def get_attempt(self, attempt_id: str) -> Attempt | None:
        with self.db.session() as s:
            return s.get(Attempt, attempt_id)

    def active_attempts(self) -> list[Attempt]:
        with self.db.session() as s:
            return list(s.exec(select(Attempt).where(
                col(Attempt.state).in_([AttemptState.STARTING.value, AttemptState.RUNNING.value]))).all())

    def unfinished_attempts(self) -> dict[str, list[str]]:
        """Attempts whose job has not ended, by host: their directories stay on their hosts
        (a lost attempt may still be followed again and its result taken). One query from the
        jobs' state index, whatever the number of hosts and of attempts ever made."""
        unfinished = [s.value for s in JobState if not s.terminal]
        out: dict[str, list[str]] = {}
        with self.db.session() as s:
            for host, attempt in s.exec(select(Attempt.host, Attempt.id).join(Job, col(Job.id) == col(Attempt.job_id))
                                        .where(col(Job.state).in_(unfinished))):
                out.setdefault(host, []).append(attempt)
        return out

    # ------------------------------------------------------------------ artifacts

    def list_artifacts(self, owner: str | None, *, job_id: str | None = None, kind: str | None = None,
                       key: str | None = None, limit: int = 50, before: str | None = None) -> list[Artifact]:
        """Newest first; ``owner`` None: everyone's (admins)."""
        q = select(Artifact)
        if owner is not None:
            q = q.where(Artifact.user == owner)
        if job_id is not None:
            q = q.where(Artifact.job_id == job_id)
        if kind is not None:
            q = q.where(Artifact.kind == kind)
        if key is not None:
            q = q.where(Artifact.key == key)
        if before is not None:
            q = q.where(col(Artifact.id) < before)
        with self.db.session() as s:
            return list(s.exec(q.order_by(col(Artifact.id).desc()).limit(limit)).all())

    def get_artifact(self, artifact_id: str, owner: str | None = None) -> Artifact:
        """An artifact by id or unique id prefix (6+ characters), among ``owner``'s when given.
        Raises NotFound."""
        art: Artifact = self._by_id(Artifact, "artifact", artifact_id, owner)
        return art

    def delete_artifacts(self, ids: Sequence[str]) -> list[str]:
        """Remove artifact rows; returns the sha256 of content no remaining artifact uses."""
        if not ids:
            return []
        shas: set[str] = set()
        still: set[str] = set()
        with self.db.write() as conn:
            for part in chunked(ids):
                shas.update(conn.execute(select(Artifact.sha256).where(col(Artifact.id).in_(part))).scalars())
                conn.execute(delete(Artifact).where(col(Artifact.id).in_(part)))
            for part in chunked(sorted(shas)):
                still.update(conn.execute(select(Artifact.sha256).where(col(Artifact.sha256).in_(part))).scalars())
        return sorted(shas - still)

    # ------------------------------------------------------------------ uploads (who may use a blob)

    def record_upload(self, user: str, sha256: str, size: int) -> None:
        """``user`` sent this content (or proved having it by sending it again)."""
        with self.db.write() as conn:
            exists = conn.execute(select(Upload.sha256).where(
                Upload.user == user, Upload.sha256 == sha256)).first()
            if exists is None:
                conn.execute(insert(Upload), {"user": user, "sha256": sha256, "size": size,
                                              "created_at": time.time()})
            else:
                conn.execute(update(Upload).where(col(Upload.user) == user, col(Upload.sha256) == sha256)
                             .values(created_at=time.time()))

    def blob_visible(self, user: str, sha256: str) -> bool:
        """Whether ``user`` may use this content: they uploaded it, or own an artifact of it."""
        with self.db.write() as conn:
            if conn.execute(select(Upload.sha256).where(Upload.user == user, Upload.sha256 == sha256)).first():
                return True
            return conn.execute(select(Artifact.id).where(
                Artifact.user == user, Artifact.sha256 == sha256).limit(1)).first() is not None

    def upload_usage(self, user: str) -> int:
        """Bytes of the uploads ``user`` holds (their quota counts these)."""
        with self.db.write() as conn:
            return int(conn.execute(select(func.coalesce(func.sum(Upload.size), 0))
                                    .where(Upload.user == user)).scalar_one())

    def stale_uploads(self, before: float, limit: int = 1000) -> list[tuple[str, str]]:
        """(user, sha256) of uploads older than ``before``; callers skip those still in use."""
        with self.db.write() as conn:
            return [(r[0], r[1]) for r in conn.execute(
                select(Upload.user, Upload.sha256).where(Upload.created_at < before).limit(limit))]

    def delete_upload(self, user: str, sha256: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(Upload).where(col(Upload.user) == user, col(Upload.sha256) == sha256))

    def blob_referenced(self, sha256: str) -> bool:
        """Whether anything still needs this content: an upload, an artifact, an unfinished job."""
        with self.db.write() as conn:
            if conn.execute(select(Upload.sha256).where(Upload.sha256 == sha256).limit(1)).first():
                return True
            if conn.execute(select(Artifact.id).where(Artifact.sha256 == sha256).limit(1)).first():
                return True
        return self.blob_in_use(sha256)

    def blob_in_use(self, sha256: str) -> bool:
        """Whether an unfinished job's spec or a matrix schedule refers to this content (as an
        input: a scheduled matrix runs it again every night)."""
        with self.db.session() as s:
            if s.exec(select(MatrixSchedule.name).where(
                    col(MatrixSchedule.uploads_json).contains(sha256)).limit(1)).first() is not None:
                return True
            return s.exec(select(Job.id).where(
                col(Job.state).not_in([s.value for s in JobState if s.terminal]),
                col(Job.spec_json).contains(sha256)).limit(1)).first() is not None

    def expired_artifacts(self, before: float, limit: int = 1000) -> list[str]:
        """Artifacts made before ``before`` whose job no unfinished job waits for."""
        waiting = select(Job.after).where(col(Job.after).is_not(None),
                                          col(Job.state).not_in([s.value for s in JobState if s.terminal]))
        with self.db.session() as s:
            return list(s.exec(select(Artifact.id).where(
                Artifact.created_at < before, col(Artifact.job_id).not_in(waiting)).limit(limit)).all())

    # ------------------------------------------------------------------ results

    def import_result(self, result_id: str, user: str, runner: str, host: str, device_class: str,
                      record: dict[str, Any]) -> Result:
        """Store a record parsed from a log someone captured by hand (no job behind it)."""
        row = dict(job_id=result_id, attempt_id="", user=user, runner=runner, host=host,
                   device_class=device_class, created_at=time.time(), record_json=json.dumps(record),
                   **key_columns(record))
        with self.db.write() as conn:
            conn.execute(insert(RESULTS), row)
        with self.db.session() as s:
            return s.exec(select(Result).where(Result.job_id == result_id)).one()

    def result_for(self, job_id: str) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.exec(select(Result).where(Result.job_id == job_id).order_by(col(Result.id).desc())).first()
            return json.loads(row.record_json) if row else None

    def list_results(self, owner: str | None, limit: int = 50, before: int | None = None) -> list[Result]:
        q = select(Result)
        if owner is not None:
            q = q.where(Result.user == owner)
        if before is not None:
            q = q.where(col(Result.id) < before)
        with self.db.session() as s:
            return list(s.exec(q.order_by(col(Result.id).desc()).limit(limit)).all())

    def lost_attempts(self, host: str, since: float) -> list[str]:
        """Ids of attempts on ``host`` declared lost since ``since`` (they may still run there)."""
        with self.db.session() as s:
            return list(s.exec(select(Attempt.id).where(
                Attempt.host == host, Attempt.reason == Reason.HOST_LOST.value,
                col(Attempt.ended_at) >= since)).all())
