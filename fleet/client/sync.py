"""The sync face of fleet's client (the CLI, scripts, the Ansible module): the routes of
``fleet.client.calls`` over ``httpx.Client``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx

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
    ResultOut,
    ResultPage,
    TokenInfo,
    TokenOut,
    UserOut,
    WhyOut,
)
from fleet.client import calls
from fleet.client.calls import RETRY_SAFE, SUBMIT_TRIES, Call, check

T = TypeVar("T")


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0, verify: bool = True) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                 transport=calls.local_transport(self.url, verify))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, c: Call[T], **extra: Any) -> T:
        """Send one route of ``fleet.client.calls`` and read its answer; a safe one again when
        the connection broke (``Call.safe``)."""
        for attempt in range(RETRY_SAFE if c.safe else 1):
            try:
                return c.read(self.http.request(c.method, c.path, **c.request(), **extra))
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                if attempt == RETRY_SAFE - 1 or not c.safe:
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ server

    def health(self) -> dict[str, Any]:
        return self.call(calls.health())

    def whoami(self) -> UserOut:
        return self.call(calls.whoami())

    # ------------------------------------------------------------------ blobs

    def upload(self, path: Path) -> tuple[str, int]:
        """Upload a file by content unless the server has it; returns (sha256, size)."""
        sha, size = calls.digest(path)
        if self.call(calls.blob_known(sha)):
            return sha, size

        def body() -> Iterator[bytes]:
            with path.open("rb") as fh:
                yield from iter(lambda: fh.read(1 << 20), b"")

        check(self.http.put(f"/blobs/{sha}", content=body()))
        return sha, size

    # ------------------------------------------------------------------ jobs

    def _submit(self, c: Call[T]) -> T:
        """A submission with an idempotency key, sent again with the same key when the answer
        is lost (the connection broke, the server restarted): the jobs are made once."""
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        delay = 0.5
        for attempt in range(SUBMIT_TRIES):
            try:
                return self.call(c, headers=headers)
            except httpx.TransportError:
                if attempt == SUBMIT_TRIES - 1:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def submit(self, spec: dict[str, Any]) -> JobOut:
        return self._submit(calls.submit(spec))

    def submit_many(self, specs: list[dict[str, Any]]) -> list[JobOut]:
        """Submit several specs in one request: all are queued, or none (SpecError-like 422)."""
        return self._submit(calls.submit_many(specs))

    def job(self, job_id: str) -> JobDetail:
        return self.call(calls.job(job_id))

    def wait(self, job_id: str, timeout: float = 30.0) -> JobDetail:
        return self.call(calls.wait(job_id, timeout))

    def jobs(self, *, states: list[str] | None = None, pool: str | None = None, user: str | None = None,
             limit: int = 50, before: str | None = None) -> JobPage:
        return self.call(calls.jobs(states=states, pool=pool, user=user, limit=limit, before=before))

    def cancel(self, job_id: str) -> CancelOut:
        return self.call(calls.cancel(job_id))

    def why(self, job_id: str) -> WhyOut:
        return self.call(calls.why(job_id))

    def logs(self, job_id: str, *, follow: bool = False, attempt: int | None = None) -> Iterator[bytes]:
        params: dict[str, Any] = {"follow": str(follow).lower()}
        if attempt is not None:
            params["attempt"] = attempt
        with self.http.stream("GET", f"/jobs/{calls.q(job_id)}/logs", params=params,
                              timeout=calls.stream_timeout(self.http.timeout)) as resp:
            if resp.status_code >= 400:
                resp.read()
                check(resp)
            yield from resp.iter_bytes()

    # ------------------------------------------------------------------ events

    def events(self, *, after: int | None = None, jobs: list[str] | tuple[str, ...] = (),
               types: list[str] | tuple[str, ...] = (), reconnect: int = 5,
               keepalive: bool = False) -> Generator[dict[str, Any]]:
        """The event stream (``GET /events``) as dicts with ``type`` and ``id``; the first is
        ``{"type": "ready", "id": N}`` (the stream starts after event N). A dropped connection
        is resumed from the last event seen (``Last-Event-ID``), up to ``reconnect`` times in
        a row; events are neither lost nor repeated across it. ``keepalive``: also yield
        ``{"type": "keepalive"}`` when the server says it is there (every 5 s of quiet)."""
        params = calls.events_params(jobs, types)
        resume = calls.Resume(after, reconnect)
        while True:
            try:
                with self.http.stream("GET", "/events", params=params, headers=resume.headers(),
                                      timeout=calls.stream_timeout(self.http.timeout)) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        check(resp)
                    sse = calls.SSE()
                    for line in resp.iter_lines():
                        event = sse.feed(line)
                        if event is None or (event["type"] == "keepalive" and not keepalive):
                            continue
                        resume.seen(event)
                        yield event
                delay = resume.dropped(None)  # the server ended the stream (it stopped)
            except httpx.TransportError as exc:
                delay = resume.dropped(exc)
            time.sleep(delay)

    def wait_all(self, job_ids: list[str], timeout: float | None = None) -> list[JobDetail]:
        """Block until every job is terminal, woken by their ``job.state`` events (no polling),
        or until about ``timeout`` seconds passed (checked at least every 5 s); returns the
        jobs as they are then."""
        from fleet.models.enums import JobState

        deadline = None if timeout is None else time.monotonic() + timeout
        details = [self.job(j) for j in job_ids]  # ids resolved, visibility checked
        left = {d.id for d in details if not JobState(d.state).terminal}
        if left:
            stream = self.events(jobs=sorted(left), types=["job.state"], keepalive=True)
            try:
                for event in stream:
                    if event["type"] == "ready":  # subscribed: look once more, then only listen
                        left = {j for j in left if not JobState(self.job(j).state).terminal}
                    elif event.get("state") and JobState(event["state"]).terminal:
                        left.discard(event["job"])
                    if not left or (deadline is not None and time.monotonic() >= deadline):
                        break
            finally:
                stream.close()
        return [self.job(d.id) for d in details]

    # ------------------------------------------------------------------ results, artifacts

    def results(self, limit: int = 50, before: int | None = None) -> ResultPage:
        return self.call(calls.results(limit, before))

    def import_result(self, fmt: str, text: str, *, host: str | None = None,
                      device_class: str | None = None, name: str | None = None,
                      source: str | None = None) -> ResultOut:
        return self.call(calls.import_result(fmt, text, host=host, device_class=device_class, name=name,
                                             source=source))

    def artifacts(self, *, job: str | None = None, kind: str | None = None, key: str | None = None,
                  limit: int = 50, before: str | None = None) -> ArtifactPage:
        return self.call(calls.artifacts(job=job, kind=kind, key=key, limit=limit, before=before))

    def artifact(self, artifact_id: str) -> ArtifactOut:
        return self.call(calls.artifact(artifact_id))

    def download_artifact(self, artifact_id: str, dest: BinaryIO) -> int:
        """Stream an artifact's content into the open binary file ``dest``; returns bytes."""
        size = 0
        with self.http.stream("GET", f"/artifacts/{calls.q(artifact_id)}/content") as resp:
            if resp.status_code >= 400:
                resp.read()
                check(resp)
            for chunk in resp.iter_bytes(1 << 20):
                dest.write(chunk)
                size += len(chunk)
        return size

    def delete_artifact(self, artifact_id: str) -> ArtifactOut:
        return self.call(calls.delete_artifact(artifact_id))

    # ------------------------------------------------------------------ hosts, users

    def hosts(self) -> list[HostOut]:
        return self.call(calls.hosts())

    def ansible(self, what: str, pattern: str = "all", check: bool = False) -> list[Any]:
        return self.call(calls.ansible(what, pattern, check))

    def ssh_config(self) -> str:
        return self.call(calls.ssh_config())

    def host_action(self, name: str, action: str, **params: Any) -> HostOut:
        return self.call(calls.host_action(name, action, **params))

    def check_host(self, name: str) -> HostCheckOut:
        return self.call(calls.check_host(name))

    def hooks(self) -> list[HookOut]:
        return self.call(calls.hooks())

    def pools(self) -> list[PoolOut]:
        return self.call(calls.pools())

    def add_user(self, name: str, admin: bool = False) -> TokenOut:
        return self.call(calls.add_user(name, admin))

    def users(self) -> list[UserOut]:
        return self.call(calls.users())

    def create_token(self, user: str | None = None, name: str = "default",
                     expires: str | None = None) -> TokenOut:
        return self.call(calls.create_token(user, name, expires))

    def tokens(self, user: str | None = None, everyone: bool = False) -> list[TokenInfo]:
        return self.call(calls.tokens(user, everyone))

    def revoke_token(self, token_id: int) -> TokenInfo:
        return self.call(calls.revoke_token(token_id))
