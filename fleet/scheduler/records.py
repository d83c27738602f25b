"""What the scheduler keeps about jobs and attempts while it runs them (plain data)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fleet.backends.base import AttemptPlan, InputFile
from fleet.inventory import Host
from fleet.models.spec import JobSpec
from fleet.models.tables import Job, NewJob
from fleet.scheduler.burst import BurstPolicy
from fleet.scheduler.placement import Demand
from fleet.store import AttemptRef


@dataclass(frozen=True)
class Policy:
    """Operator knobs of the scheduler (from fleet.config.Settings)."""

    kill_grace: float = 10.0
    check_timeout: float = 15.0  # a health check that takes longer fails
    bad_after: int = 3  # consecutive failed checks before a host is quarantined (bad)
    recheck_interval: float = 30.0  # seconds between checks of a bad host (doubling from 1 s)
    check_concurrency: int = 32  # health checks at once (a thousand at once time each other out)
    sync_interval: float = 0.5  # how often the leader looks for jobs other replicas queued
    attempt_lease: float = 60.0  # a job out of touch with the controller this long stops itself
    burst: BurstPolicy = field(default_factory=lambda: BurstPolicy.model_validate({}))  # when queues may go to elastic pools

    @property
    def lost_hold(self) -> float:
        """How long after losing touch with an attempt it is surely stopped (lease + grace)."""
        return self.attempt_lease + self.kill_grace + 1.0


@dataclass(slots=True)
class JobRef:
    """What the scheduler keeps of a job's row while it holds the job: a few hundred bytes,
    not an ORM object (50,000 queued jobs, issue 16). Field names as on ``Job``."""

    id: str
    user: str
    queue: str
    runner: str
    created_at: float
    spec_json: str
    attempt_count: int = 0
    matrix_run: str | None = None

    @classmethod
    def of(cls, job: Job | JobRef | NewJob) -> JobRef:
        if isinstance(job, JobRef):
            return job
        return cls(id=job.id, user=job.user, queue=job.queue, runner=job.runner, created_at=job.created_at,
                   spec_json=job.spec_json, attempt_count=job.attempt_count, matrix_run=job.matrix_run)


@dataclass(slots=True)
class QueuedJob:
    """A job the scheduler holds: its spec, what it asks of a host, its retry history. A job
    deep in a long queue lets go of its parsed spec (``compact``); it is parsed again from
    the row's text when needed (placement, retry), the same spec either way."""

    job: JobRef
    _spec: JobSpec | None
    demand: Demand
    # Tuples, not lists and sets: an empty tuple is one shared object the garbage collector
    # does not track, and 50,000 queued jobs with three containers each were 150,000 objects
    # more for every full collection to walk (each one held the event loop; bench/scale.py).
    inputs: tuple[InputFile, ...]
    failed_on: tuple[str, ...] = ()
    no_capacity: tuple[str, ...] = ()  # elastic pools its pod found no room in
    infra_failures: int = 0
    job_failures: int = 0
    expiry: asyncio.TimerHandle | None = None  # queue_timeout

    @property
    def spec(self) -> JobSpec:
        if self._spec is None:
            self._spec = JobSpec.model_validate_json(self.job.spec_json)
        return self._spec

    def compact(self) -> None:
        self._spec = None


@dataclass
class Running:
    """An attempt the scheduler follows (launched, reattached, or followed again)."""

    qj: QueuedJob
    attempt: AttemptRef
    host: Host
    plan: AttemptPlan
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_requested: bool = False
    resolving: bool = False  # following up an attempt lost earlier: how did it really end?
    collected: list[dict[str, Any]] = field(default_factory=list)  # outputs now in the blob store


@dataclass
class Held:
    """A retry waiting for a lost attempt's lease to run out (then its host is asked how it
    ended, if it is back)."""

    qj: QueuedJob
    handle: asyncio.TimerHandle
    until: float  # epoch seconds
    attempt: AttemptRef | None
    host: Host | None


@dataclass(frozen=True)
class Why:
    """Why a job is where it is (``fleet why``): for a waiting job, the hosts counted by the
    reason each cannot take it now, and each host's reason."""

    job: str
    state: str  # waiting, running or done
    queue: str
    summary: str
    queued: int | None = None
    ahead: int | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)


@dataclass
class QueueView:
    """One device-class queue as ``GET /queues`` shows it."""

    key: str
    waiting: int
    order: list[str]  # waiting job ids, the next to be taken first (the first N)
    running: list[str]
    why: Why | None  # of the first waiting job


@dataclass(frozen=True)
class HostCheck:
    """An operator's health check (``fleet hosts check``) and the health it left."""

    host: str
    ok: bool
    message: str | None
    health: str
