"""The async face of fleet's client (the TUI, async scripts): the routes of
``fleet.client.calls`` over ``httpx.AsyncClient``. Every route is also reachable as
``await client.call(calls.ROUTE(...))``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from fleet.api.schemas import (
    CancelOut,
    HostOut,
    JobDetail,
    JobOut,
    JobPage,
    PoolOut,
    ResultPage,
    UserOut,
    WhyOut,
)
from fleet.client import calls
from fleet.client.calls import RETRY_SAFE, SUBMIT_TRIES, Call, check

T = TypeVar("T")


class AsyncClient:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.AsyncHTTPTransport(verify=False) if calls.is_local(self.url) else None
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout,
                                      transport=transport)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(self, c: Call[T], **extra: Any) -> T:
        """Send one route of ``fleet.client.calls`` and read its answer; a safe one again when
        the connection broke (``Call.safe``)."""
        for attempt in range(RETRY_SAFE if c.safe else 1):
            try:
                return c.read(await self.http.request(c.method, c.path, **c.request(), **extra))
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                if attempt == RETRY_SAFE - 1 or not c.safe:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def whoami(self) -> UserOut:
        return await self.call(calls.whoami())

    async def upload(self, path: Path) -> tuple[str, int]:
        """Upload a file by content unless the server has it; returns (sha256, size)."""
        sha, size = await asyncio.to_thread(calls.digest, path)
        if await self.call(calls.blob_known(sha)):
            return sha, size

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as fh:
                while chunk := await asyncio.to_thread(fh.read, 1 << 20):
                    yield chunk

        check(await self.http.put(f"/blobs/{sha}", content=body()))
        return sha, size

    async def _submit(self, c: Call[T]) -> T:
        """As ``Client._submit``: one idempotency key, sent again when the answer is lost."""
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        delay = 0.5
        for attempt in range(SUBMIT_TRIES):
            try:
                return await self.call(c, headers=headers)
            except httpx.TransportError:
                if attempt == SUBMIT_TRIES - 1:
                    raise
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def submit(self, spec: dict[str, Any]) -> JobOut:
        return await self._submit(calls.submit(spec))

    async def submit_many(self, specs: list[dict[str, Any]]) -> list[JobOut]:
        return await self._submit(calls.submit_many(specs))

    async def job(self, job_id: str) -> JobDetail:
        return await self.call(calls.job(job_id))

    async def jobs(self, *, states: list[str] | None = None, pool: str | None = None,
                   user: str | None = None, limit: int = 50, before: str | None = None,
                   **more: Any) -> JobPage:
        """A page of jobs; ``more``: kind, matrix, search, sort, offset, total (``calls.jobs``)."""
        return await self.call(calls.jobs(states=states, pool=pool, user=user, limit=limit, before=before, **more))

    async def cancel(self, job_id: str) -> CancelOut:
        return await self.call(calls.cancel(job_id))

    async def why(self, job_id: str) -> WhyOut:
        return await self.call(calls.why(job_id))

    async def hosts(self) -> list[HostOut]:
        return await self.call(calls.hosts())

    async def pools(self) -> list[PoolOut]:
        return await self.call(calls.pools())

    async def results(self, limit: int = 50, before: int | None = None) -> ResultPage:
        return await self.call(calls.results(limit, before))

    async def logs(self, job_id: str, *, follow: bool = False,
                   attempt: int | None = None) -> AsyncGenerator[bytes]:
        params: dict[str, Any] = {"follow": str(follow).lower()}
        if attempt is not None:
            params["attempt"] = attempt
        async with self.http.stream("GET", f"/jobs/{calls.q(job_id)}/logs", params=params,
                                    timeout=calls.stream_timeout(self.http.timeout)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                check(resp)
            async for chunk in resp.aiter_bytes():
                yield chunk

    async def events(self, *, after: int | None = None, jobs: list[str] | tuple[str, ...] = (),
                     types: list[str] | tuple[str, ...] = (),
                     reconnect: int = 5,
                     dropped: Callable[[Exception | None], None] | None = None) -> AsyncGenerator[dict[str, Any]]:
        """As ``Client.events``: the first event is ``ready``; a dropped stream is resumed
        from the last event seen, nothing lost or repeated. ``dropped`` is told of each drop
        (the error, or None when the server ended the stream) before the wait to resume."""
        params = calls.events_params(jobs, types)
        resume = calls.Resume(after, reconnect)
        while True:
            try:
                async with self.http.stream("GET", "/events", params=params, headers=resume.headers(),
                                            timeout=calls.stream_timeout(self.http.timeout)) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        check(resp)
                    sse = calls.SSE()
                    async for line in resp.aiter_lines():
                        event = sse.feed(line)
                        if event is None or event["type"] == "keepalive":
                            continue
                        resume.seen(event)
                        yield event
                if dropped is not None:
                    dropped(None)
                delay = resume.dropped(None)  # the server ended the stream (it stopped)
            except httpx.TransportError as exc:
                if dropped is not None:
                    dropped(exc)
                delay = resume.dropped(exc)
            await asyncio.sleep(delay)
