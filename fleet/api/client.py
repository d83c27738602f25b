"""Typed client of the fleet API (sync, httpx). The CLI uses nothing else to reach fleet."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
    ProbeOut,
    ProvisionOut,
    ResultOut,
    ResultPage,
    TokenInfo,
    TokenOut,
    UserOut,
    WhyOut,
)
from fleet.errors import ApiError, NotFound

SUBMIT_TRIES = 4  # a submission is sent up to this often (0.5, 1, 2 s apart) if its answer is lost


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Plain HTTP to this machine (the local server) needs no TLS context and no proxy:
        # making the context costs ~50 ms, most of a short command's own time.
        local = self.url.startswith(("http://127.", "http://localhost", "http://[::1]"))
        transport = httpx.HTTPTransport(verify=False) if local else None
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, resp: httpx.Response) -> httpx.Response:
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

    def _get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return self._check(self.http.get(path, params=params)).json()

    def _post(self, path: str, body: Any) -> Any:
        return self._check(self.http.post(path, json=body)).json()

    # ------------------------------------------------------------------ server

    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = self._get("/health")
        return data

    def whoami(self) -> UserOut:
        return UserOut.model_validate(self._get("/whoami"))

    # ------------------------------------------------------------------ blobs

    def upload(self, path: Path) -> tuple[str, int]:
        """Upload a file by content unless the server has it; returns (sha256, size)."""
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        if self.http.head(f"/blobs/{sha}").status_code == 200:
            return sha, size

        def body() -> Iterator[bytes]:
            with path.open("rb") as fh:
                yield from iter(lambda: fh.read(1 << 20), b"")

        self._check(self.http.put(f"/blobs/{sha}", content=body()))
        return sha, size

    # ------------------------------------------------------------------ jobs

    def _submit(self, path: str, body: Any) -> Any:
        """POST a submission with an idempotency key, retried with the same key when the
        answer is lost (the connection broke, the server restarted): the jobs are made once."""
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        delay = 0.5
        for attempt in range(SUBMIT_TRIES):
            try:
                return self._check(self.http.post(path, json=body, headers=headers)).json()
            except httpx.TransportError:
                if attempt == SUBMIT_TRIES - 1:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def submit(self, spec: dict[str, Any]) -> JobOut:
        return JobOut.model_validate(self._submit("/jobs", spec))

    def submit_many(self, specs: list[dict[str, Any]]) -> list[JobOut]:
        """Submit several specs in one request: all are queued, or none (SpecError-like 422)."""
        return [JobOut.model_validate(j) for j in self._submit("/jobs/batch", {"jobs": specs})]

    def job(self, job_id: str) -> JobDetail:
        return JobDetail.model_validate(self._get(f"/jobs/{job_id}"))

    def wait(self, job_id: str, timeout: float = 30.0) -> JobDetail:
        return JobDetail.model_validate(self._get(f"/jobs/{job_id}/wait", timeout=timeout))

    # ------------------------------------------------------------------ events

    def events(self, *, after: int | None = None, jobs: list[str] | tuple[str, ...] = (),
               types: list[str] | tuple[str, ...] = (), reconnect: int = 5) -> Generator[dict[str, Any]]:
        """The event stream (``GET /events``) as dicts with ``type`` and ``id``; the first is
        ``{"type": "ready", "id": N}`` (the stream starts after event N). A dropped connection
        is resumed from the last event seen (``Last-Event-ID``), up to ``reconnect`` times in
        a row; events are neither lost nor repeated across it."""
        params: dict[str, Any] = {"job": list(jobs), "type": list(types)}
        last, failures = after, 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with self.http.stream("GET", "/events", params=params, headers=headers,
                                      timeout=httpx.Timeout(self.http.timeout.connect, read=None)) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        self._check(resp)
                    for event in _sse(resp.iter_lines()):
                        failures = 0
                        if event.get("id") is not None:
                            last = event["id"]
                        yield event
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > reconnect:
                    raise
                time.sleep(min(0.2 * 2 ** failures, 5.0))
                continue
            # The server closed the stream (it stopped): resume like after a broken connection.
            failures += 1
            if failures > reconnect:
                raise ApiError(503, "the event stream ended")
            time.sleep(min(0.2 * 2 ** failures, 5.0))

    def wait_all(self, job_ids: list[str]) -> list[JobDetail]:
        """Block until every job is terminal, woken by their ``job.state`` events (no polling)."""
        from fleet.models.enums import JobState

        details = {j: self.job(j) for j in job_ids}  # ids resolved and visibility checked
        ids = [d.id for d in details.values()]
        left = {d.id for d in details.values() if not JobState(d.state).terminal}
        if left:
            for event in self.events(jobs=sorted(left), types=["job.state"]):
                if event["type"] == "ready":  # subscribed: look once more, then only listen
                    left = {j for j in left if not JobState(self.job(j).state).terminal}
                elif event.get("state") and JobState(event["state"]).terminal:
                    left.discard(event["job"])
                if not left:
                    break
        by_id = {j: self.job(j) for j in ids}
        return [by_id[d.id] for d in details.values()]

    def jobs(
        self, *, states: list[str] | None = None, pool: str | None = None, user: str | None = None,
        limit: int = 50, before: str | None = None,
    ) -> JobPage:
        params: dict[str, Any] = {"pool": pool, "user": user, "limit": limit, "before": before}
        if states:
            params["state"] = states
        return JobPage.model_validate(self._get("/jobs", **params))

    def cancel(self, job_id: str) -> CancelOut:
        return CancelOut.model_validate(self._post(f"/jobs/{job_id}/cancel", {}))

    def why(self, job_id: str) -> WhyOut:
        return WhyOut.model_validate(self._get(f"/jobs/{job_id}/why"))

    def logs(self, job_id: str, *, follow: bool = False, attempt: int | None = None) -> Iterator[bytes]:
        params: dict[str, Any] = {"follow": str(follow).lower()}
        if attempt is not None:
            params["attempt"] = attempt
        with self.http.stream("GET", f"/jobs/{job_id}/logs", params=params, timeout=None) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            yield from resp.iter_bytes()

    def results(self, limit: int = 50, before: int | None = None) -> ResultPage:
        return ResultPage.model_validate(self._get("/results", limit=limit, before=before))

    def import_result(self, fmt: str, text: str, *, host: str | None = None,
                      device_class: str | None = None, name: str | None = None,
                      source: str | None = None) -> ResultOut:
        body = {"format": fmt, "text": text, "host": host, "device_class": device_class,
                "name": name, "source": source}
        return ResultOut.model_validate(self._post("/results/import", body))

    def artifacts(self, *, job: str | None = None, kind: str | None = None, key: str | None = None,
                  limit: int = 50, before: str | None = None) -> ArtifactPage:
        return ArtifactPage.model_validate(self._get("/artifacts", job=job, kind=kind, key=key,
                                                     limit=limit, before=before))

    def artifact(self, artifact_id: str) -> ArtifactOut:
        return ArtifactOut.model_validate(self._get(f"/artifacts/{quote(artifact_id, safe='')}"))

    def download_artifact(self, artifact_id: str, dest: Any) -> int:
        """Stream an artifact's content into the open binary file ``dest``; returns bytes."""
        size = 0
        with self.http.stream("GET", f"/artifacts/{quote(artifact_id, safe='')}/content") as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            for chunk in resp.iter_bytes(1 << 20):
                dest.write(chunk)
                size += len(chunk)
        return size

    def delete_artifact(self, artifact_id: str) -> ArtifactOut:
        resp = self.http.delete(f"/artifacts/{quote(artifact_id, safe='')}")
        return ArtifactOut.model_validate(self._check(resp).json())

    # ------------------------------------------------------------------ hosts, users

    def hosts(self) -> list[HostOut]:
        return [HostOut.model_validate(h) for h in self._get("/hosts")]

    def ansible(self, what: str, pattern: str = "all", check: bool = False) -> list[Any]:
        """``probe`` or ``provision`` the hosts matching an Ansible pattern (admins)."""
        resp = self.http.post(f"/hosts/{what}", json={"pattern": pattern, "check": check},
                              timeout=httpx.Timeout(1900.0, connect=10.0))
        model = ProbeOut if what == "probe" else ProvisionOut
        return [model.model_validate(r) for r in self._check(resp).json()]

    def ssh_config(self) -> str:
        return self._check(self.http.get("/ssh-config")).text

    def host_action(self, name: str, action: str, **params: Any) -> HostOut:
        """drain, undrain or maintenance (``on=``) on one host (admins)."""
        resp = self.http.post(f"/hosts/{quote(name, safe='')}/{action}", params=params, json={})
        return HostOut.model_validate(self._check(resp).json())

    def check_host(self, name: str) -> HostCheckOut:
        return HostCheckOut.model_validate(self._post(f"/hosts/{quote(name, safe='')}/check", {}))

    def hooks(self) -> list[HookOut]:
        return [HookOut.model_validate(h) for h in self._get("/hooks")]

    def pools(self) -> list[PoolOut]:
        return [PoolOut.model_validate(p) for p in self._get("/pools")]

    def add_user(self, name: str, admin: bool = False) -> TokenOut:
        return TokenOut.model_validate(self._post("/users", {"name": name, "admin": admin}))

    def users(self) -> list[UserOut]:
        return [UserOut.model_validate(u) for u in self._get("/users")]

    def create_token(self, user: str | None = None, name: str = "default",
                     expires: str | None = None) -> TokenOut:
        return TokenOut.model_validate(self._post("/tokens", {"user": user, "name": name, "expires": expires}))

    def tokens(self, user: str | None = None, everyone: bool = False) -> list[TokenInfo]:
        return [TokenInfo.model_validate(t) for t in self._get("/tokens", user=user, all=everyone or None)]

    def revoke_token(self, token_id: int) -> TokenInfo:
        return TokenInfo.model_validate(self._check(self.http.delete(f"/tokens/{int(token_id)}")).json())


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events: each event's JSON ``data`` with its ``type`` and ``id``."""
    import json

    kind, ident, data = "message", None, []  # type: str, str | None, list[str]
    for line in lines:
        if not line:
            if data:
                event = json.loads("\n".join(data))
                event.setdefault("type", kind)
                if ident is not None:
                    event["id"] = int(ident)
                yield event
            kind, ident, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            ident = value
