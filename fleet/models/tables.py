"""Database tables (sqlmodel). Times are UNIX epoch seconds (float, UTC).

Ids are time-ordered strings (``fleet.ids``), so "newest first" is ``ORDER BY id DESC`` and a
page cursor is just the last id seen. The composite indexes match the listings:
``fleet jobs --state/--user/--pool`` each walk one index backwards.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import BigInteger, Index, Text
from sqlmodel import Column, Field, SQLModel


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    is_admin: bool = False
    created_at: float


class Token(SQLModel, table=True):
    """An API token. Only its SHA-256 is stored; the token itself is shown once."""

    __tablename__ = "tokens"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = "default"
    token_hash: str = Field(index=True, unique=True)
    created_at: float
    last_used_at: float | None = None
    expires_at: float | None = None
    revoked_at: float | None = None


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_user_id", "user", "id"),
        Index("ix_jobs_pool_id", "pool", "id"),
        # A listing filtered twice (`fleet jobs --pool rtx --state RUNNING`, a user's running
        # jobs) walks only its rows, newest first.
        Index("ix_jobs_user_state_id", "user", "state", "id"),
        Index("ix_jobs_pool_state_id", "pool", "state", "id"),
    )
    id: str = Field(primary_key=True)
    name: str
    user: str
    kind: str
    runner: str
    pool: str | None = None
    queue: str = Field(description="device-class queue key")
    priority: int = 500
    spec_json: str = Field(sa_column=Column(Text, nullable=False))
    state: str
    reason: str | None = None
    message: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    ended_at: float | None = None
    host: str | None = None
    attempt_count: int = 0
    current_attempt: str | None = None
    chain: str | None = Field(default=None, index=True, description="first job of its chain")
    step: str | None = Field(default=None, description="its step's name in the chain")
    after: str | None = Field(default=None, index=True, description="job it waits for")
    matrix_run: str | None = Field(default=None, index=True, description="matrix run it belongs to")
    matrix_point: int | None = Field(default=None, description="its point's index in the run")
    matrix_repeat: int | None = Field(default=None, description="which sample of its point (1..repeat); "
                                      "None for a step that only prepares (a compile)")


@dataclasses.dataclass(slots=True)
class NewJob:
    """A job row just written by ``create_jobs``, as plain data (attribute names as ``Job``'s;
    an ORM object per job cost a third of a large submission's time). Whoever changes a job
    reads it from the store."""

    id: str
    name: str
    user: str
    kind: str
    runner: str
    pool: str | None
    queue: str
    priority: int
    spec_json: str
    state: str
    created_at: float
    updated_at: float
    reason: str | None = None
    message: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    host: str | None = None
    attempt_count: int = 0
    current_attempt: str | None = None
    chain: str | None = None
    step: str | None = None
    after: str | None = None
    matrix_run: str | None = None
    matrix_point: int | None = None
    matrix_repeat: int | None = None


class Attempt(SQLModel, table=True):
    """One execution of a job on one host. A non-terminal attempt holds its slots (the lease)."""

    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_state_host", "state", "host"),)
    id: str = Field(primary_key=True)
    job_id: str = Field(index=True)
    number: int
    host: str
    backend: str = "ssh"
    slots: int = 1
    state: str
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    log_bytes: int = 0
    remote_dir: str | None = None


class Result(SQLModel, table=True):
    """A result record. What decides whether two results may be compared (the comparison key,
    DESIGN.md §5.11) is kept in columns, so a series is an index walk, not a scan of JSON."""

    __tablename__ = "results"
    __table_args__ = (Index("ix_results_user_id", "user", "id"),
                      Index("ix_results_key_id", "comparison_key", "id"))
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(index=True)
    attempt_id: str
    user: str
    runner: str
    host: str
    device_class: str
    created_at: float
    record_json: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="ok", sa_column_kwargs={"server_default": "ok"})
    matrix_run: str | None = Field(default=None, index=True)
    comparison_key: str | None = None
    model_sha256: str | None = None
    accelerator: str | None = None
    precision: str | None = None
    shapes: str | None = None
    batch: int | None = None
    tool: str | None = None
    tool_major: str | None = None
    driver: str | None = None
    jetpack: str | None = None
    hailort: str | None = None
    power_mode: str | None = None
    clocks_locked: bool | None = None
    image_digest: str | None = None


class MatrixRun(SQLModel, table=True):
    """One run of a benchmark matrix: its points are ordinary jobs (``jobs.matrix_run``)."""

    __tablename__ = "matrix_runs"
    __table_args__ = (Index("ix_matrix_runs_user_id", "user", "id"),
                      Index("ix_matrix_runs_name_id", "name", "id"))
    id: str = Field(primary_key=True)
    name: str
    user: str
    spec_json: str = Field(sa_column=Column(Text, nullable=False), description="the matrix, inputs resolved")
    points_json: str = Field(sa_column=Column(Text, nullable=False), description="axis values per point")
    trigger: str = "manual"  # manual | schedule
    state: str = "RUNNING"  # RUNNING, then DONE (every job ended) or CANCELLED
    created_at: float
    ended_at: float | None = None
    deadline: float | None = None  # its time budget's end: jobs still waiting then are cancelled
    report_json: str | None = Field(default=None, sa_column=Column(Text),
                                    description="its report as judged when its last job ended")


class MatrixVerdict(SQLModel, table=True):
    """The verdict on one metric of one point of a judged run: the series' memory (the last
    reported change starts the next baseline) and what ``fleet regressions`` lists."""

    __tablename__ = "matrix_verdicts"
    __table_args__ = (Index("ix_matrix_verdicts_series", "user", "name", "series", "metric", "id"),
                      Index("ix_matrix_verdicts_user_status", "user", "status", "id"))
    id: int | None = Field(default=None, primary_key=True)
    run: str = Field(index=True)
    user: str
    name: str  # the matrix
    point: int
    series: str  # hash of the point's axis values and its comparison key
    metric: str
    status: str  # regression, improvement, unchanged, invalid, not_enough_samples
    kind: str | None = None  # step | drift
    first_run: str | None = None
    change_pct: float | None = None
    created_at: float
    data_json: str = Field(sa_column=Column(Text, nullable=False))


class MatrixSchedule(SQLModel, table=True):
    """A matrix run by the leader on its cron schedule. ``last_fired``: the schedule time of
    the last run it made (a night missed while the controller was down runs once, not N times)."""

    __tablename__ = "matrix_schedules"
    user: str = Field(primary_key=True)  # names are per user: another's are neither seen nor taken
    name: str = Field(primary_key=True)
    cron: str
    spec_json: str = Field(sa_column=Column(Text, nullable=False))
    uploads_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float
    last_fired: float
    last_run: str | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))


class Artifact(SQLModel, table=True):
    """A file a job made (an engine, a HEF, an output), kept in the blob store by content.

    ``key`` is the hash of what makes two artifacts interchangeable (for an engine: model
    sha256, GPU or SM, TensorRT version, precision, shapes), ``key_json`` that basis itself."""

    __tablename__ = "artifacts"
    __table_args__ = (Index("ix_artifacts_user_id", "user", "id"),)
    id: str = Field(primary_key=True)
    name: str
    kind: str = "file"
    sha256: str = Field(index=True)
    size: int
    job_id: str = Field(index=True)
    attempt_id: str
    user: str
    host: str
    device_class: str
    tool: str | None = None
    tool_version: str | None = None
    key: str | None = Field(default=None, index=True)
    key_json: str | None = Field(default=None, sa_column=Column(Text))
    created_at: float


class Upload(SQLModel, table=True):
    """Who uploaded which content: a blob is visible only to its uploaders (and to owners of a
    job or artifact that holds it). ``size`` counts against the uploader's quota."""

    __tablename__ = "uploads"
    user: str = Field(primary_key=True)
    sha256: str = Field(primary_key=True, index=True)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: float


class SubmitKey(SQLModel, table=True):
    """An idempotency key of a submission: a retried request with the same key and user gets
    the jobs the first one made instead of new ones."""

    __tablename__ = "submit_keys"
    user: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    job_ids: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float = Field(index=True)


class HostStatus(SQLModel, table=True):
    """What operators and health checks say about a host (its state comes from the scheduler)."""

    __tablename__ = "hosts"
    name: str = Field(primary_key=True)
    health: str = "good"
    health_message: str | None = None
    drained: bool = False
    updated_at: float
    facts_json: str | None = Field(default=None, sa_column=Column(Text), description="last probe")
    probed_at: float | None = None


class Lease(SQLModel, table=True):
    """An expiring lease held by one controller; ``scheduler`` names the leader (HA)."""

    __tablename__ = "leases"
    name: str = Field(primary_key=True)
    holder: str
    url: str | None = None
    expires_at: float
    updated_at: float


class Event(SQLModel, table=True):
    """What happened, numbered (``GET /events``): written in the same transaction as the change
    it tells of, so a reader that follows ``id`` misses nothing and sees nothing undone.
    ``user``: whose job it is (None: everyone may see it, e.g. a host's health)."""

    __tablename__ = "events"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    type: str  # job.state, attempt.started, attempt.ended, host.health, host.drain, queue.depth
    user: str | None = None
    job_id: str | None = None
    attempt_id: str | None = None
    host: str | None = None
    state: str | None = None
    reason: str | None = None
    message: str | None = Field(default=None, sa_column=Column(Text))
    data_json: str | None = Field(default=None, sa_column=Column(Text))
