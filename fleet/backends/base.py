"""The backend contract (DESIGN.md §5.8).

Every method is idempotent and safe to call again after a controller crash. ``launch`` both
starts and follows: on the ssh backend one channel carries the launch, the log stream and the
exit record, so a short job costs one round of SSH work. Calling ``launch`` for an attempt that
already started attaches to it instead (the attempt directory is the launch marker), which is
also how ``reattach`` works.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fleet.errors import FleetError
from fleet.inventory import Host
from fleet.models.enums import Reason

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fleet.config import Settings


class BackendError(FleetError):
    """An execution problem, classified where it happened (``reason``), with what a user needs
    to act on it where it is known: the host, the command, its exit status and the tail of
    its output (as asyncssh's ProcessError carries them)."""

    reason: Reason = Reason.CONTROLLER_ERROR

    def __init__(self, message: str, *, host: str | None = None, command: str | None = None,
                 exit_status: int | None = None, output: str | None = None) -> None:
        super().__init__(message)
        self.host, self.command, self.exit_status = host, command, exit_status
        self.output = output[-2000:] if output else output  # the tail is what tells


class HostLost(BackendError):
    """The host cannot be reached or dropped the connection (infrastructure's fault).

    ``sent``: whether the launch or follow request went out before the host was lost."""

    reason = Reason.HOST_LOST
    sent = True


class HostKeyRefused(HostLost):
    """The host's key is unknown or changed and trust-on-first-use is off."""


class SetupFailed(BackendError):
    """The host lacks what the attempt needs (python3, a runner tool, an input)."""

    reason = Reason.SETUP_FAILED


class OutputUnreadable(BackendError):
    """An output the job declared cannot be collected as it was reported (a link, not a
    regular file, gone, changed since): the job's failure. Counting it against the host would
    let any job quarantine hosts by leaving a bad output behind."""

    reason = Reason.OUTPUT_MISSING


class Unsupported(BackendError):
    """The backend cannot do what was asked (it does not declare the capability): the job asked
    for something this backend lacks, so it is the job's failure, not the host's."""

    reason = Reason.SETUP_FAILED


class Capability(StrEnum):
    """What a backend may do beyond launch/cancel/close. A backend lists the ones it has in
    ``capabilities``; the scheduler never calls a method whose capability is not listed."""

    CHECK = "check"  # health checks: prove a host can run attempts now
    KILL_STALE = "kill_stale"  # stop attempts given up on, on a host that came back
    FETCH = "fetch"  # copy output files of an ended attempt (artifacts)
    GC = "gc"  # retention of ended attempts' directories on hosts


@dataclass
class BackendContext:
    """What fleet hands a backend when it makes one (``Backend.create``)."""

    name: str  # the name it is configured under (``backends: {NAME: ...}``)
    settings: Settings  # fleet's own settings
    inventory: list[Host]  # the hosts of the Ansible inventory
    blob_path: Callable[[str], Path]  # sha256 -> the file of an uploaded input
    state_dir: Path  # a private directory for the backend's own files (0700)


@dataclass
class InputFile:
    """A file to place in the attempt directory from the host's content-addressed cache."""

    rel_path: str  # relative to the attempt directory, under inputs/
    sha256: str
    size: int


@dataclass
class AttemptPlan:
    """Everything a backend needs to run one attempt; built by the scheduler."""

    attempt_id: str
    job_id: str
    host: Host
    job: dict[str, Any]  # written as job.json
    argv: list[str] | None  # None: the runner entry is resolved by the backend
    runner: str
    setup: str | None
    env: dict[str, str]
    timeout: float | None
    grace: float
    inputs: list[InputFile] = field(default_factory=list)
    run_as: str | None = None  # the Unix account the job runs as (None: the agent's own)
    secrets: list[str] = field(default_factory=list)  # values to mask in what is kept of it
    image: str | None = None  # run in this container image (the spec's image: a name or a reference)
    network: bool = False  # a container job's network
    pull: str = "if-missing"  # a container job's pull policy: if-missing | always | never
    limits: tuple[str, ...] = ()  # a container job's resource flags (its slots' share of the host)
    reattach: bool = False  # following an attempt a previous controller launched
    follow_only: bool = False  # never launch: only learn how an attempt given up on ended
    # What the controller's copy of the log already holds of an attempt it may still launch
    # (lines it wrote itself, e.g. an image shipped before a crash): a fresh launch writes them
    # first into the host's log, so the two line up.
    preamble: bytes = b""


@dataclass
class Outcome:
    """How an attempt ended, as read from the host."""

    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    phase: str = "run"
    error: str | None = None  # wrapper/prepare error text
    result: dict[str, Any] | None = None  # result.json of a runner
    runner_error: dict[str, Any] | None = None  # error.json of a runner
    started_at: float | None = None
    ended_at: float | None = None
    lost: str | None = None  # set when the supervisor vanished without a status
    fenced: bool = False  # the job stopped itself: its attempt lease ran out (controller gone)
    outputs: list[dict[str, Any]] = field(default_factory=list)  # {path, size, sha256} to collect
    outputs_problem: str | None = None  # an output glob that matched nothing, a refused path


class AttemptSink(Protocol):
    """Receives what an attempt produces while it runs. Methods must not block."""

    def started(self, pid: int, at: float) -> None: ...

    def log(self, data: bytes) -> None: ...


class Backend(abc.ABC):
    """Async base class of execution backends (DESIGN.md §5.8).

    A backend comes from the ``fleet.backends`` entry-point group (the ssh backend is one too)
    and is made by ``create`` from its validated settings. It offers placement hosts
    (``offers``): fixed hosts with slots, or an elastic pool (a ``Host`` with ``elastic=True``,
    its limit as slots). Methods beyond launch/cancel/close exist only if the backend lists
    their ``Capability``; the base versions raise ``Unsupported``, never a silent no-op.
    """

    name: str = "base"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # The pydantic model of the backend's settings (``backends: {NAME: {...}}``), or None if
    # it takes none. Validated at start; errors name ``backends.NAME.key``.
    settings_model: ClassVar[type[BaseModel] | None] = None

    @classmethod
    @abc.abstractmethod
    def create(cls, settings: BaseModel | None, ctx: BackendContext) -> Backend:
        """Make the backend from its validated settings (None when it takes none)."""

    @abc.abstractmethod
    def offers(self) -> list[Host]:
        """The hosts (or elastic pools) this backend offers placement; their ``backend`` is
        this backend's name."""

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def unsupported(self, capability: Capability) -> Unsupported:
        return Unsupported(f"backend {self.name} cannot {capability.value.replace('_', ' ')}")

    @abc.abstractmethod
    async def launch(self, plan: AttemptPlan, sink: AttemptSink, log_offset: int = 0) -> Outcome:
        """Start the attempt (or attach if it already started) and follow it to its end.

        Returns when the attempt has ended. Log bytes from ``log_offset`` on go to ``sink``.
        Raises ``HostLost`` if the host cannot be reached or is lost while following (the
        attempt may still be running there: ``launch`` again later reattaches), ``SetupFailed``
        when the host lacks something the attempt needs.
        """

    @abc.abstractmethod
    async def cancel(self, plan: AttemptPlan, grace: float) -> None:
        """Signal the attempt's process group (TERM, KILL after ``grace``).

        Returns quietly if the attempt never started or already ended.
        """

    async def check(self, host: Host, timeout: float) -> dict[str, Any] | None:
        """Health check: prove the host can run attempts now (reachable, fleet's runners
        installed, agent answering). Raises a BackendError saying what is wrong. May return
        facts it found (an elastic pool's free capacity): they are kept as the host's facts
        (``fleet hosts``), as a probe's are."""
        raise self.unsupported(Capability.CHECK)

    async def kill_stale(self, host: Host, attempt_ids: list[str], grace: float) -> None:
        """Stop attempts this controller gave up on (declared lost, retried elsewhere) in case
        they still run on a host that came back. Idempotent; quiet for attempts long gone."""
        raise self.unsupported(Capability.KILL_STALE)

    async def fetch(self, plan: AttemptPlan, rel_path: str, dest: Path, size: int = 0) -> None:
        """Copy a file of the ended attempt (``rel_path`` inside its directory) to ``dest``.
        Raises HostLost if the host goes away, BackendError if the file cannot be read."""
        raise self.unsupported(Capability.FETCH)

    async def gc_attempts(self, host: Host, max_age: float, max_bytes: int, keep: list[str],
                          timeout: float) -> tuple[int, int, int] | None:
        """Retention on the host: remove ended attempt directories (logs, results' raw files)
        older than ``max_age`` seconds, then the oldest until they take at most ``max_bytes``;
        never those in ``keep``. Returns (removed, bytes freed, bytes left)."""
        raise self.unsupported(Capability.GC)

    @abc.abstractmethod
    async def close(self) -> None:
        """Close connections. Running attempts are left running on their hosts."""
