"""The API's routes, once: each function says how to ask (method, path, parameters, body) and
how to read the answer. ``Client`` (sync) and ``AsyncClient`` only send them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from fleet.api.schemas import (
    ArtifactOut,
    ArtifactPage,
    CancelOut,
    HookOut,
    HostCheckOut,
    HostOut,
    JobDetail,
    JobOut,
    JobPage,
    PoolOut,
    ProbeOut,
    ProvisionOut,
    QueueOut,
    ResultOut,
    ResultPage,
    SeriesOut,
    TokenInfo,
    TokenOut,
    UserOut,
    WhyOut,
)
from fleet.errors import ApiError, NotFound

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

SUBMIT_TRIES = 4  # a submission is sent up to this often (0.5, 1, 2 s apart) if its answer is lost
LONG = httpx.Timeout(1900.0, connect=10.0)  # probe/provision run Ansible on the server


RETRY_SAFE = 3  # tries of a safe call whose connection broke (see Call.safe)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    timeout: httpx.Timeout | None = None
    errors: bool = True  # False: ``parse`` reads error answers too (a HEAD that may be 404)

    def read(self, resp: httpx.Response) -> T:
        return self.parse(check(resp) if self.errors else resp)

    @property
    def safe(self) -> bool:
        """Sending it twice does what sending it once does (a read, a cancel): it is sent
        again when the connection broke before the answer came (a keep-alive connection the
        server had just closed: httpx.ReadError)."""
        return self.method in ("GET", "HEAD") or (self.method == "POST" and self.path.endswith("/cancel"))

    def request(self) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` (and its async twin)."""
        kw: dict[str, Any] = {"params": {k: v for k, v in self.params.items() if v is not None}}
        if self.json is not None:
            kw["json"] = self.json
        if self.timeout is not None:
            kw["timeout"] = self.timeout
        return kw


def check(resp: httpx.Response) -> httpx.Response:
    """The response, or the API's error as ``NotFound``/``ApiError`` with its message."""
    if resp.status_code < 400:
        return resp
    try:
        body = resp.json()
        message = body.get("detail") if isinstance(body, dict) else str(body)
        if not isinstance(message, str):
            message = str(message)
    except ValueError:
        message = resp.text or resp.reason_phrase
    if resp.status_code == 404:
        raise NotFound(message)
    raise ApiError(resp.status_code, message)


def one(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda resp: model.model_validate(resp.json())


def many(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    return lambda resp: [model.model_validate(x) for x in resp.json()]


def _json(resp: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = resp.json()
    return data


def q(part: str | int) -> str:
    return quote(str(part), safe="")


# ---------------------------------------------------------------------- the routes

def health() -> Call[dict[str, Any]]:
    return Call("GET", "/health", _json)


def whoami() -> Call[UserOut]:
    return Call("GET", "/whoami", one(UserOut))


def blob_known(sha: str) -> Call[bool]:
    return Call("HEAD", f"/blobs/{q(sha)}", lambda resp: resp.status_code == 200, errors=False)


def submit(spec: dict[str, Any]) -> Call[JobOut]:
    return Call("POST", "/jobs", one(JobOut), json=spec)


def submit_many(specs: list[dict[str, Any]]) -> Call[list[JobOut]]:
    """Several specs (chains become one job per step) in one request: all queued, or none."""
    return Call("POST", "/jobs/batch", many(JobOut), json={"jobs": specs})


def job(job_id: str) -> Call[JobDetail]:
    return Call("GET", f"/jobs/{q(job_id)}", one(JobDetail))


def wait(job_id: str, timeout: float = 30.0) -> Call[JobDetail]:
    return Call("GET", f"/jobs/{q(job_id)}/wait", one(JobDetail), {"timeout": timeout},
                timeout=httpx.Timeout(timeout + 30.0, connect=10.0))


def jobs(*, states: list[str] | None = None, pool: str | None = None, user: str | None = None,
         limit: int = 50, before: str | None = None, kind: str | None = None, matrix: str | None = None,
         search: str | None = None, sort: str | None = None, offset: int | None = None,
         total: bool = False) -> Call[JobPage]:
    """A page of jobs (newest first unless ``sort``); ``offset`` gives random access, ``total``
    asks for the number of matches."""
    params: dict[str, Any] = {"pool": pool, "user": user, "limit": limit, "before": before,
                              "state": states or None, "kind": kind, "matrix": matrix, "q": search or None,
                              "sort": sort, "offset": offset or None, "total": "true" if total else None}
    return Call("GET", "/jobs", one(JobPage), params)


def queues() -> Call[list[QueueOut]]:
    return Call("GET", "/queues", many(QueueOut))


def series(limit: int = 50) -> Call[list[SeriesOut]]:
    return Call("GET", "/series", many(SeriesOut), {"limit": limit})


def cancel(job_id: str) -> Call[CancelOut]:
    return Call("POST", f"/jobs/{q(job_id)}/cancel", one(CancelOut), json={})


def why(job_id: str) -> Call[WhyOut]:
    return Call("GET", f"/jobs/{q(job_id)}/why", one(WhyOut))


def results(limit: int = 50, before: int | None = None) -> Call[ResultPage]:
    return Call("GET", "/results", one(ResultPage), {"limit": limit, "before": before})


def import_result(fmt: str, text: str, *, host: str | None = None, device_class: str | None = None,
                  name: str | None = None, source: str | None = None) -> Call[ResultOut]:
    body = {"format": fmt, "text": text, "host": host, "device_class": device_class, "name": name,
            "source": source}
    return Call("POST", "/results/import", one(ResultOut), json=body)


def artifacts(*, job: str | None = None, kind: str | None = None, key: str | None = None,
              limit: int = 50, before: str | None = None) -> Call[ArtifactPage]:
    return Call("GET", "/artifacts", one(ArtifactPage),
                {"job": job, "kind": kind, "key": key, "limit": limit, "before": before})


def artifact(artifact_id: str) -> Call[ArtifactOut]:
    return Call("GET", f"/artifacts/{q(artifact_id)}", one(ArtifactOut))


def delete_artifact(artifact_id: str) -> Call[ArtifactOut]:
    return Call("DELETE", f"/artifacts/{q(artifact_id)}", one(ArtifactOut))


def hosts() -> Call[list[HostOut]]:
    return Call("GET", "/hosts", many(HostOut))


def host(name: str) -> Call[HostOut]:
    return Call("GET", f"/hosts/{q(name)}", one(HostOut))


def ansible(what: str, pattern: str = "all", check: bool = False) -> Call[list[Any]]:
    """``probe`` or ``provision`` the hosts matching an Ansible pattern (admins)."""
    model: type[BaseModel] = ProbeOut if what == "probe" else ProvisionOut
    return Call("POST", f"/hosts/{q(what)}", many(model), json={"pattern": pattern, "check": check},
                timeout=LONG)


def ssh_config() -> Call[str]:
    return Call("GET", "/ssh-config", lambda resp: resp.text)


def host_action(name: str, action: str, **params: Any) -> Call[HostOut]:
    """drain, undrain or maintenance (``on=``) on one host (admins)."""
    return Call("POST", f"/hosts/{q(name)}/{q(action)}", one(HostOut), params, json={})


def check_host(name: str) -> Call[HostCheckOut]:
    return Call("POST", f"/hosts/{q(name)}/check", one(HostCheckOut), json={})


def hooks() -> Call[list[HookOut]]:
    return Call("GET", "/hooks", many(HookOut))


def pools() -> Call[list[PoolOut]]:
    return Call("GET", "/pools", many(PoolOut))


def add_user(name: str, admin: bool = False) -> Call[TokenOut]:
    return Call("POST", "/users", one(TokenOut), json={"name": name, "admin": admin})


def users() -> Call[list[UserOut]]:
    return Call("GET", "/users", many(UserOut))


def create_token(user: str | None = None, name: str = "default", expires: str | None = None) -> Call[TokenOut]:
    return Call("POST", "/tokens", one(TokenOut), json={"user": user, "name": name, "expires": expires})


def tokens(user: str | None = None, everyone: bool = False) -> Call[list[TokenInfo]]:
    return Call("GET", "/tokens", many(TokenInfo), {"user": user, "all": everyone or None})


def revoke_token(token_id: int) -> Call[TokenInfo]:
    return Call("DELETE", f"/tokens/{int(token_id)}", one(TokenInfo))


class Resume:
    """How an event stream is resumed, for both faces: the ``Last-Event-ID`` to send, and after
    a drop (a broken connection or a server that stopped) how long to wait, or the error once
    ``reconnect`` drops came in a row."""

    def __init__(self, after: int | None, reconnect: int) -> None:
        self.last, self.reconnect, self.failures = after, reconnect, 0

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.last)} if self.last is not None else {}

    def seen(self, event: dict[str, Any]) -> None:
        self.failures = 0
        self.last = event.get("id", self.last)

    def dropped(self, exc: Exception | None) -> float:
        """Seconds to wait before resuming; raises ``exc`` (or ApiError 503 for a stream the
        server ended) once there were too many drops in a row."""
        self.failures += 1
        if self.failures > self.reconnect:
            raise exc if exc is not None else ApiError(503, "the event stream ended")
        return float(min(0.2 * 2 ** self.failures, 5.0))


def events_params(jobs: list[str] | tuple[str, ...] = (), types: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    return {"job": list(jobs), "type": list(types)}


class SSE:
    """Server-Sent Events, a line at a time (both faces feed it): ``feed`` returns an event's
    JSON ``data`` with its ``type`` and ``id`` when the blank line that ends it comes."""

    def __init__(self) -> None:
        self.kind, self.ident, self.data = "message", None, []  # type: str, str | None, list[str]

    def feed(self, line: str) -> dict[str, Any] | None:
        import json

        if not line:
            event = None
            if self.data:
                event = json.loads("\n".join(self.data))
                event.setdefault("type", self.kind)
                if self.ident is not None:
                    event["id"] = int(self.ident)
            self.kind, self.ident, self.data = "message", None, []
            return event
        if line.startswith(":"):
            return {"type": "keepalive"} if line.startswith(": keepalive") else None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.ident = value
        return None


def digest(path: Any) -> tuple[str, int]:
    """sha256 and size of a file (what an upload is named by)."""
    from fleet.blobs import file_digest

    return file_digest(path)


def is_local(url: str) -> bool:
    """Plain HTTP to this machine (the local server): no TLS context and no proxy needed
    (making the context costs ~50 ms, most of a short command's own time)."""
    return url.startswith(("http://127.", "http://localhost", "http://[::1]"))


def local_transport(url: str, verify: bool = True) -> httpx.HTTPTransport | None:
    """The transport for ``url``: for the local server (or with ``verify`` off) one without a
    verifying TLS context; else None, httpx's default."""
    return httpx.HTTPTransport(verify=False) if is_local(url) or not verify else None


def stream_timeout(http_timeout: httpx.Timeout) -> httpx.Timeout:
    """A stream (logs, events) may be quiet for long: no read timeout."""
    return httpx.Timeout(http_timeout.connect, read=None, write=http_timeout.write, pool=http_timeout.pool)


def matrix_run(matrix: dict[str, Any], uploads: dict[str, Any], source: str | None) -> Call[dict[str, Any]]:
    """Start a run of a matrix (its points become jobs, all queued or none)."""
    return Call("POST", "/matrix/runs", _json, json={"matrix": matrix, "uploads": uploads, "source": source})


def matrix_runs(name: str | None = None, limit: int = 50) -> Call[list[dict[str, Any]]]:
    return Call("GET", "/matrix/runs", lambda r: list(r.json()), {"name": name, "limit": limit})


def matrix_status(run_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/matrix/runs/{q(run_id)}", _json)


def matrix_cancel(run_id: str) -> Call[dict[str, Any]]:
    return Call("POST", f"/matrix/runs/{q(run_id)}/cancel", _json)


def matrix_report(run_id: str, fmt: str = "json") -> Call[str]:
    return Call("GET", f"/matrix/runs/{q(run_id)}/report", lambda r: r.text, {"format": fmt},
                timeout=httpx.Timeout(600.0, connect=10.0))


def matrix_schedule(matrix: dict[str, Any], uploads: dict[str, Any], source: str | None) -> Call[dict[str, Any]]:
    return Call("POST", "/matrix/schedules", _json, json={"matrix": matrix, "uploads": uploads, "source": source})


def matrix_schedules() -> Call[list[dict[str, Any]]]:
    return Call("GET", "/matrix/schedules", lambda r: list(r.json()))


def matrix_unschedule(name: str) -> Call[dict[str, Any]]:
    return Call("DELETE", f"/matrix/schedules/{q(name)}", _json)


def regressions() -> Call[list[dict[str, Any]]]:
    return Call("GET", "/regressions", lambda r: list(r.json()))
