"""Request and response bodies of the API (they make up the published OpenAPI schema)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from fleet.models.enums import AttemptState, JobKind, JobState, Reason

if TYPE_CHECKING:  # the CLI reads these bodies without the database layer (a fast start)
    from fleet.models.tables import Attempt, Job, NewJob


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class AttemptOut(BaseModel):
    id: str
    number: int
    host: str
    state: AttemptState
    reason: Reason | None
    message: str | None
    exit_code: int | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    log_bytes: int
    backend: str = Field("ssh", description="the backend that ran it (fleet.backends plugin)")
    cost: float | None = Field(None, description="cloud time it took, at its elastic pool's price per "
                                                 "slot-hour (None on the lab's own hosts)")

    @classmethod
    def of(cls, a: Attempt, price: float = 0.0) -> AttemptOut:
        """``price``: the attempt's pool's cost of one slot-hour (elastic pools)."""
        cost = None
        if price and a.started_at:
            cost = round(price * a.slots * ((a.ended_at or time.time()) - a.started_at) / 3600, 4)
        return cls(id=a.id, number=a.number, host=a.host, backend=a.backend, state=AttemptState(a.state), reason=Reason(a.reason) if a.reason else None,
                   message=a.message, exit_code=a.exit_code, created_at=iso(a.created_at),
                   started_at=iso(a.started_at), ended_at=iso(a.ended_at), log_bytes=a.log_bytes, cost=cost)


class ArtifactOut(BaseModel):
    id: str
    name: str
    kind: str
    sha256: str
    size: int
    job_id: str
    attempt_id: str
    user: str
    host: str
    device_class: str
    tool: str | None
    tool_version: str | None
    key: str | None
    key_basis: dict[str, Any] | None
    created_at: str | None

    @classmethod
    def of(cls, a: Any) -> ArtifactOut:
        return cls(id=a.id, name=a.name, kind=a.kind, sha256=a.sha256, size=a.size, job_id=a.job_id,
                   attempt_id=a.attempt_id, user=a.user, host=a.host, device_class=a.device_class,
                   tool=a.tool, tool_version=a.tool_version, key=a.key,
                   key_basis=json.loads(a.key_json) if a.key_json else None, created_at=iso(a.created_at))


class JobOut(BaseModel):
    id: str
    name: str
    user: str
    kind: JobKind
    runner: str
    pool: str | None
    queue: str
    priority: int
    state: JobState
    reason: Reason | None
    message: str | None
    host: str | None
    attempts: int
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    created_ts: float
    started_ts: float | None
    ended_ts: float | None
    chain: str | None = Field(None, description="the first job of its chain (pipelines)")
    step: str | None = Field(None, description="its step's name in the chain")
    after: str | None = Field(None, description="the job it waits for")

    @classmethod
    def of(cls, j: Job | NewJob) -> JobOut:
        return cls(id=j.id, name=j.name, user=j.user, kind=JobKind(j.kind), runner=j.runner, pool=j.pool,
                   queue=j.queue, priority=j.priority, state=JobState(j.state), reason=Reason(j.reason) if j.reason else None,
                   message=j.message, host=j.host, attempts=j.attempt_count,
                   created_at=iso(j.created_at), started_at=iso(j.started_at),
                   ended_at=iso(j.ended_at), created_ts=j.created_at, started_ts=j.started_at,
                   ended_ts=j.ended_at, chain=j.chain, step=j.step, after=j.after)


class JobDetail(JobOut):
    spec: dict[str, Any]
    attempt_list: list[AttemptOut] = Field(default_factory=list)
    result: dict[str, Any] | None = None
    chain_jobs: list[JobOut] = Field(default_factory=list, description="every step of its chain")
    artifacts: list[ArtifactOut] = Field(default_factory=list)

    @classmethod
    def build(cls, j: Job, attempts: list[Attempt], result: dict[str, Any] | None,
              chain: list[Job] | None = None, artifacts: list[Any] | None = None,
              prices: dict[str, float] | None = None) -> JobDetail:
        """``prices``: elastic pools' cost per slot-hour by host name (for each attempt's cost)."""
        base = JobOut.of(j).model_dump()
        spec = json.loads(j.spec_json)
        for key, value in list((spec.get("envs") or {}).items()):
            if isinstance(value, dict) and value.get("secret"):
                spec["envs"][key] = {"value": "***", "secret": True}
        return cls(**base, spec=spec, attempt_list=[AttemptOut.of(a, (prices or {}).get(a.host, 0.0)) for a in attempts],
                   result=result,
                   chain_jobs=[JobOut.of(c) for c in chain or []],
                   artifacts=[ArtifactOut.of(a) for a in artifacts or []])


class JobPage(BaseModel):
    items: list[JobOut]
    next: str | None = Field(None, description="pass as ?before= for the next page (default order)")
    total: int | None = Field(None, description="every job that matches (asked with ?total=true)")


class ResultOut(BaseModel):
    id: int
    job_id: str
    attempt_id: str
    user: str
    runner: str
    host: str
    device_class: str
    created_at: str | None
    record: dict[str, Any]


class ArtifactPage(BaseModel):
    items: list[ArtifactOut]
    next: str | None = None


class ResultImportIn(BaseModel):
    """A log captured by hand, to parse into a result record."""

    format: Literal["trtexec", "hailortcli", "tegrastats", "ort-perf"]
    text: str = Field(max_length=16 << 20, description="the tool's output as printed")
    host: str | None = Field(None, max_length=200, description="the host it ran on (default: manual)")
    device_class: str | None = Field(None, max_length=200, description="e.g. aarch64/jetson-orin-nano")
    name: str | None = Field(None, max_length=200, description="model or run name")
    source: str | None = Field(None, max_length=1000, description="where the text came from (a file name)")


class ResultPage(BaseModel):
    items: list[ResultOut]
    next: int | None = None


class HostOut(BaseModel):
    name: str
    pools: list[str]
    arch: str
    accelerator: str
    device_class: str
    slots: int
    used_slots: int
    labels: dict[str, str]
    target: str
    state: str = Field(description="idle, busy, draining, drained, offline (not reachable or not "
                                   "checked yet: see health_message) or gateway (runs no jobs)")
    health: str = Field(description="good, unknown, bad or maintenance")
    health_message: str | None = None
    facts: dict[str, Any] = Field(default_factory=dict, description="what the last probe found")
    mismatches: list[str] = Field(default_factory=list, description="inventory vs host, from the last probe")
    isolation: str = Field("none", description="none: jobs share one account; user: one account per fleet "
                                                "user; container: that, and every job in a container")
    job_user: str | None = Field(None, description="the account other users' jobs run as (fleet_job_user)")
    container_engine: str | None = Field(None, description="docker or podman: jobs with image: run here")
    container_image: str | None = Field(None, description="the image jobs without image: run in here")
    backend: str = Field("ssh", description="the backend that runs its attempts")
    running: list[str] = Field(default_factory=list, description="the jobs running on it that the "
                                "caller may see (an admin: all; a user: their own)")
    elastic: bool = Field(False, description="an elastic pool of a backend (cloud burst): slots is "
                                             "its limit; it takes only jobs with burst: allowed or only")


class AnsibleIn(BaseModel):
    pattern: str = Field("all", max_length=1000, description="Ansible host pattern, e.g. jetson or rtx-1")
    check: bool = Field(False, description="provision: report what would change, change nothing")


class ProbeOut(BaseModel):
    host: str
    status: str = Field(description="ok, unreachable or failed")
    message: str | None = None
    facts: dict[str, Any] = Field(default_factory=dict)
    mismatches: list[str] = Field(default_factory=list)


class ProvisionOut(BaseModel):
    host: str
    status: str = Field(description="ok (nothing to change), changed, failed or unreachable")
    ok: int
    changed: int
    failed: int
    unreachable: int
    message: str | None = None
    check: bool


class HostCheckOut(BaseModel):
    host: str
    ok: bool
    message: str | None
    health: str


class PoolOut(BaseModel):
    name: str
    hosts: int
    slots: int
    used_slots: int
    states: dict[str, int]
    health: dict[str, int]


class WhyOut(BaseModel):
    job: str
    state: str
    queue: str
    summary: str
    queued: int | None = None
    ahead: int | None = None
    reasons: dict[str, int] = Field(default_factory=dict)
    hosts: dict[str, str] = Field(default_factory=dict)


class QueueJobOut(BaseModel):
    id: str
    name: str
    user: str
    priority: int
    state: JobState
    host: str | None = None
    created_ts: float
    position: int | None = Field(None, description="1 = the next the scheduler takes (waiting jobs)")


class QueueOut(BaseModel):
    key: str = Field(description="the device-class queue (arch/accelerator[/pool])")
    waiting: int
    running: int
    jobs: list[QueueJobOut] = Field(description="running jobs, then waiting ones in the order they "
                                                "will be taken (the first N; a user sees only theirs)")
    why: WhyOut | None = Field(None, description="why the first waiting job waits (its id only if "
                                                 "the caller may see it)")


class SeriesPoint(BaseModel):
    result: int
    job_id: str
    created_ts: float
    value: float
    valid: bool


class SeriesOut(BaseModel):
    key: str = Field(description="the comparison key: results of one key are comparable")
    label: str = Field(description="model, device class, runner, precision, batch")
    device_class: str
    metric: str
    unit: str | None = None
    points: list[SeriesPoint] = Field(description="oldest first")
    regression: bool = Field(False, description="a matrix verdict found a regression on this key, "
                                                "not followed by an improvement")


class CancelOut(BaseModel):
    id: str
    state: str


class UserIn(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    admin: bool = False


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds a character that is not valid unicode (a lone surrogate)") from None
    return value


# Free text from a client: it goes to the database, which stores UTF-8.
Text = Annotated[str, Field(max_length=256), AfterValidator(_valid_unicode)]


MAX_TOKEN_SECONDS = 100 * 365 * 86400
# The largest integer a query parameter may carry into SQL or a file offset (a signed 64-bit
# column): past it, a request is a 422 naming the parameter, not a 500 from the driver.
INT64_MAX = 2**63 - 1
# A token's lifetime: a whole number of seconds, minutes, hours or days (each well under the
# maximum), at least 1.
_DURATION = r"^\s*(0*[1-9]\d{0,8}\s*s?|0*[1-9]\d{0,6}\s*m|0*[1-9]\d{0,5}\s*h|0*[1-9]\d{0,3}\s*d)\s*$"


class TokenIn(BaseModel):
    user: Text | None = None
    name: Text = "default"
    expires: Annotated[str, Field(pattern=_DURATION)] | Annotated[float, Field(ge=1, le=MAX_TOKEN_SECONDS)] \
        | None = Field(None, description="how long the token lasts: seconds or a duration like '30d', "
                                         "'12h' (at least a second)")


class TokenOut(BaseModel):
    user: str
    token: str
    id: int | None = None
    name: str | None = None
    expires_at: str | None = None


class TokenInfo(BaseModel):
    """A token as listed: never its value (only its hash is stored)."""

    id: int
    user: str
    name: str
    state: str = Field(description="active, expired or revoked")
    created_at: str | None
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, token: Any, user: str, now: float) -> TokenInfo:
        state = "revoked" if token.revoked_at is not None else (
            "expired" if token.expires_at is not None and token.expires_at <= now else "active")
        return cls(id=token.id, user=user, name=token.name, state=state, created_at=iso(token.created_at),
                   expires_at=iso(token.expires_at), last_used_at=iso(token.last_used_at),
                   revoked_at=iso(token.revoked_at))


class UserOut(BaseModel):
    name: str
    admin: bool


class HookVarOut(BaseModel):
    type: str
    description: str
    required: bool
    default: Any = None


class HookOut(BaseModel):
    """A hook of the server's catalog: jobs name it and pass its variables."""

    name: str
    description: str
    vars: dict[str, HookVarOut]
    error: str | None = None


class ErrorOut(BaseModel):
    detail: str
    errors: list[dict[str, str]] | None = None

