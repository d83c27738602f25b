"""An in-process harness for what needs no real host: the scheduler and the API in the test's
own event loop, on a real SQLite database, with a backend the test drives (``FakeBackend``).
The API is reached over an ASGI transport (no socket, no server process). Waits are on
events and conditions, never on wall-clock sleeps.

The lab tests (real SSH hosts, a real ``fleet serve``) stay for what only they can show.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fleet.api.server import ApiContext, create_app
from fleet.backends.base import (
    AttemptPlan,
    AttemptSink,
    Backend,
    BackendContext,
    BackendError,
    Capability,
    HostLost,
    Outcome,
)
from fleet.blobs import BlobStore
from fleet.config import Settings
from fleet.controller import bootstrap_admin
from fleet.db import Database
from fleet.events import EventHub
from fleet.inventory import Host
from fleet.logstore import LogStore
from fleet.scheduler.loop import Policy, Scheduler
from fleet.secrets import SecretBox
from fleet.store import Store


def host(name: str, *, pools: tuple[str, ...] = ("lab",), slots: int = 1, accel: str = "cpu",
         backend: str = "fake", elastic: bool = False) -> Host:
    return Host(name=name, pools=pools, arch="x86_64", accelerator=accel, slots=slots, backend=backend,
                elastic=elastic, connection="ssh", address="192.0.2.1")


@dataclass
class Launch:
    """One call of ``launch``: the test ends it with ``finish``/``lose``."""

    plan: AttemptPlan
    sink: AttemptSink
    done: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def finish(self, exit_code: int = 0, log: bytes = b"", **kw: Any) -> None:
        if log:
            self.sink.log(log)
        self.done.set_result(Outcome(exit_code=exit_code, **kw))

    def lose(self, why: str = "connection lost") -> None:
        self.done.set_exception(HostLost(f"host {self.plan.host.name}: {why}"))


class FakeBackend(Backend):
    """A backend whose attempts the test ends. ``auto``: attempts end at once with exit 0."""

    name = "fake"

    def __init__(self, hosts: list[Host], capabilities: frozenset[Capability] = frozenset({Capability.CHECK}),
                 auto: bool = False) -> None:
        self.hosts = hosts
        self.capabilities = capabilities  # type: ignore[misc]
        self.auto = auto
        self.launches: list[Launch] = []
        self.launched = Counter[str]()  # job id -> launches that started it (never twice!)
        self.cancelled: list[str] = []
        self.bad_hosts: set[str] = set()  # their health checks fail
        self.checks = Counter[str]()
        self.changed = asyncio.Condition()

    @classmethod
    def create(cls, settings: Any, ctx: BackendContext) -> FakeBackend:
        raise NotImplementedError("made by the harness")

    def offers(self) -> list[Host]:
        return self.hosts

    async def launch(self, plan: AttemptPlan, sink: AttemptSink, log_offset: int = 0) -> Outcome:
        if not plan.follow_only:
            self.launched[plan.job_id] += 1
        sink.started(4242, 0.0)
        launch = Launch(plan, sink)
        self.launches.append(launch)
        async with self.changed:
            self.changed.notify_all()
        if self.auto:
            launch.finish(0)
        return await launch.done

    async def cancel(self, plan: AttemptPlan, grace: float) -> None:
        self.cancelled.append(plan.attempt_id)
        for launch in self.launches:
            if launch.plan.attempt_id == plan.attempt_id and not launch.done.done():
                launch.done.set_result(Outcome(exit_code=None, cancelled=True, signal=15))

    async def check(self, host: Host, timeout: float) -> None:
        self.checks[host.name] += 1
        if host.name in self.bad_hosts:
            raise BackendError(f"host {host.name}: does not answer")

    async def close(self) -> None:
        return None

    async def wait_launches(self, n: int, timeout: float = 10.0) -> list[Launch]:
        """The first ``n`` launches, once they happened."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.launches) >= n)
        return self.launches[:n]


class ShiftedClock:
    """Real time plus an offset the test moves forward. The scheduler reads its wall time from
    here (fleet.clock) and, while the harness runs, the event loop's clock carries the same
    offset, so timers (``call_later``, ``asyncio.sleep``) and stored deadlines move together:
    ``await clock.advance(3600)`` and a one-hour queue timeout has passed."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    async def advance(self, seconds: float) -> None:
        self.offset += seconds
        for _ in range(3):  # timers now due run, and what they call soon
            await asyncio.sleep(0)


@dataclass
class Harness:
    store: Store
    scheduler: Scheduler
    backend: FakeBackend
    api: httpx.AsyncClient
    token: str
    hub: EventHub
    clock: ShiftedClock
    ctx: ApiContext

    async def submit(self, spec: dict[str, Any]) -> str:
        resp = await self.api.post("/jobs", json=spec)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        resp = await self.api.get(f"/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    async def until(self, check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``check()`` holds, looking again at every event written (no sleeps)."""

        async def holds() -> bool:
            got = check()
            return bool(await got) if asyncio.iscoroutine(got) else bool(got)

        deadline = time.monotonic() + timeout  # real time: the loop's may be moved by the test
        while not await holds():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("condition not met in time")
            await self.hub.moved_past(self.hub.head, min(left, 0.5))

    async def state(self, job_id: str) -> str:
        return str((await self.job(job_id))["state"])


@asynccontextmanager
async def harness(tmp_path: Path, hosts: list[Host] | None = None, *, auto: bool = False,
                  capabilities: frozenset[Capability] = frozenset({Capability.CHECK}),
                  policy: Policy | None = None) -> AsyncIterator[Harness]:
    clock = ShiftedClock()
    loop = asyncio.get_running_loop()
    loop_time = loop.time
    loop.time = lambda: loop_time() + clock.offset  # type: ignore[method-assign]
    settings = Settings(home=tmp_path / "home")
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    db.create_schema()
    store = Store(db)
    token = bootstrap_admin(store, settings)
    assert token is not None
    backend = FakeBackend(hosts if hosts is not None else [host("h1")], capabilities, auto)
    blobs = BlobStore(settings.blobs_dir)
    scheduler = Scheduler(store, backend.hosts, {"fake": backend}, LogStore(settings.logs_dir, settings.log_cap),
                          policy or Policy(kill_grace=0.1, check_timeout=2.0, recheck_interval=0.5),
                          SecretBox(settings.secret_key_file), blobs, clock=clock)
    hub = EventHub(store, settings.db_url)
    await hub.start()
    ctx = ApiContext(store, scheduler, blobs)
    ctx.events = hub
    app = create_app(ctx)
    await scheduler.start()
    transport = httpx.ASGITransport(app=app)
    api = httpx.AsyncClient(transport=transport, base_url="http://fleet.test",
                            headers={"Authorization": f"Bearer {token}"})
    try:
        yield Harness(store, scheduler, backend, api, token, hub, clock, ctx)
    finally:
        await api.aclose()
        for launch in backend.launches:  # let what is still running end (the test is over)
            if not launch.done.done():
                launch.done.cancel()
        await scheduler.stop()
        await hub.stop()
        db.dispose()
        loop.time = loop_time  # type: ignore[method-assign]
