"""``GET /events``: typed, numbered events as Server-Sent Events (DESIGN.md §5.9).

Every state change writes its event row in the same transaction as the change (fleet.store),
so the event table is the one ordered record of what happened, on every replica alike. Each
API process runs one ``EventHub``: a single reader that follows the table and hands new events
to all of its subscribers, each event encoded once. The reader is woken at once by writes in
its own process (``Store.on_event``) and, on PostgreSQL, by ``NOTIFY`` from any replica; a slow
timer (``FALLBACK``) is only a safety net, never the way events normally arrive.

Event types: ``job.state`` (a job's state, reason, message, host and attempt), ``attempt.started``
/ ``attempt.running`` / ``attempt.ended``, ``host.health``, ``host.drain`` and ``queue.depth``
(waiting jobs per device-class queue). A client resumes with ``Last-Event-ID`` (or ``?after=``);
the first frame of every stream is ``ready``, carrying the id the stream starts after.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from typing import Any

from fleet.models.tables import Event
from fleet.store import NOTIFY_CHANNEL, Store

log = logging.getLogger(__name__)

EVENT_TYPES = ("job.state", "attempt.started", "attempt.running", "attempt.ended", "host.health",
               "host.drain", "queue.depth")
FALLBACK = 2.0  # seconds: the reader looks anyway this often (a missed NOTIFY, SQLite replicas)
KEEPALIVE = 5.0  # seconds: a comment line keeps idle streams (and proxies) open, and lets
# clients with a deadline (wait_timeout) look at the clock
BUFFER = 20_000  # events kept in memory for subscribers that are behind
BATCH = 1000


@dataclass(frozen=True)
class Frame:
    """One event, encoded once for every subscriber."""

    id: int
    type: str
    user: str | None
    job_id: str | None
    text: str  # the SSE frame


def as_dict(ev: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"id": ev.id, "type": ev.type, "at": ev.at}
    for key, value in (("user", ev.user), ("job", ev.job_id), ("attempt", ev.attempt_id),
                       ("host", ev.host), ("state", ev.state), ("reason", ev.reason),
                       ("message", ev.message)):
        if value is not None:
            out[key] = value
    if ev.data_json:
        out.update(json.loads(ev.data_json))
    return out


def frame(ev: Event) -> Frame:
    assert ev.id is not None
    data = json.dumps(as_dict(ev), separators=(",", ":"))
    return Frame(ev.id, ev.type, ev.user, ev.job_id, f"id: {ev.id}\nevent: {ev.type}\ndata: {data}\n\n")


class _Subscriber:
    """One stream's filter and the frames the reader handed it (woken only for those)."""

    __slots__ = ("visible", "jobs", "types", "pending", "woken", "overflow")

    def __init__(self, visible: Callable[[str | None], bool], jobs: set[str], types: set[str]) -> None:
        self.visible, self.jobs, self.types = visible, jobs, types
        self.pending: list[Frame] = []
        self.woken = asyncio.Event()
        self.overflow = False

    def wants(self, f: Frame) -> bool:
        return ((not self.jobs or f.job_id in self.jobs) and (not self.types or f.type in self.types)
                and self.visible(f.user))


class EventHub:
    """Follows the event table for this process's subscribers. The reader filters each new
    event for every subscriber and wakes only those that want it: an idle subscriber (a
    ``fleet status --wait`` on another job, a user whose jobs did not change) costs a filter
    check per event, not a task switch and a write."""

    def __init__(self, store: Store, db_url: str | None = None) -> None:
        self.store = store
        self.db_url = db_url
        self.head = 0  # the newest event id read
        self._ids: list[int] = []
        self._frames: list[Frame] = []
        self._wake = asyncio.Event()
        self._moved = asyncio.Condition()  # head moved (wait_until)
        self._subs: set[_Subscriber] = set()
        self._stale = False  # events were written while nobody listened (not read yet)
        self._waiters = 0  # wait_until calls waiting for the head to move
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.head = await asyncio.to_thread(self.store.last_event_id)
        self.store.on_event = self.poke
        self._tasks.append(asyncio.create_task(self._read_loop(), name="fleet-events"))
        if self.db_url and self.db_url.startswith("postgresql"):
            self._tasks.append(asyncio.create_task(self._listen(), name="fleet-events-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def poke(self) -> None:
        """New events were committed (any thread): read them now, if anyone listens. If not,
        they are only marked unread (no wake-up of the loop per write: a job makes five of them)
        and whoever comes to listen reads from the newest id (``_catch_up``)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if not self._listened():
            self._stale = True
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._wake.set()
                return
        except RuntimeError:
            pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    async def _read_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancel that
            # comes as the wait ends, and this loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FALLBACK):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._read_new()
            except Exception:
                log.exception("reading events failed")
                await asyncio.sleep(1.0)

    def _listened(self) -> bool:
        return bool(self._subs) or self._waiters > 0

    async def _catch_up(self) -> None:
        """Nobody listened while events came (they were not read, to spare the writers a
        reader): start again from the newest id; earlier ones come from the table. Waiters
        (``moved_past``) hear of a head that moved."""
        if self._stale:
            self._stale = False
            self._ids.clear()
            self._frames.clear()
            head = max(self.head, await asyncio.to_thread(self.store.last_event_id))
            if head != self.head:
                self.head = head
                async with self._moved:
                    self._moved.notify_all()

    async def _read_new(self) -> None:
        if not self._listened():
            self._stale = True  # read when someone listens (_catch_up)
            return
        await self._catch_up()
        new: list[Frame] = []
        while True:
            rows = await asyncio.to_thread(self.store.events_after, self.head, BATCH)
            if not rows:
                break
            batch = [frame(ev) for ev in rows]
            self._ids.extend(f.id for f in batch)
            self._frames.extend(batch)
            self.head = batch[-1].id
            new.extend(batch)
            if len(rows) < BATCH:
                break
        if len(self._ids) > 2 * BUFFER:
            del self._ids[:-BUFFER], self._frames[:-BUFFER]
        if not new:
            return
        for sub in self._subs:
            got = [f for f in new if sub.wants(f)]
            if got:
                if len(sub.pending) + len(got) > BUFFER:
                    sub.overflow = True  # too slow: its stream ends; it resumes from the table
                else:
                    sub.pending.extend(got)
                sub.woken.set()
        async with self._moved:
            self._moved.notify_all()

    async def _listen(self) -> None:
        """PostgreSQL: wake on NOTIFY from any replica's writes."""
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.db_url or "").set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._wake.set()  # what was written while we were not listening
                    async for _note in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; the timer covers the gap
                log.warning("event listener: %s; reconnecting", exc)
                await asyncio.sleep(1.0)

    async def moved_past(self, cursor: int, timeout: float) -> None:
        """Return once events after ``cursor`` were read (or ``timeout`` passed); meanwhile the
        reader reads even if no stream listens."""
        self._waiters += 1  # first: from now on writes wake the reader (poke)
        try:
            await self._catch_up()  # what was written before, unread
            async with self._moved:
                if self.head <= cursor:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self._moved.wait()
        finally:
            self._waiters -= 1

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Return True once ``done()`` (a database read, run in a thread) holds, checking it
        after each batch of new events; False after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._catch_up()
        while True:
            cursor = self.head
            if await asyncio.to_thread(done):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await self.moved_past(cursor, left)

    async def _backlog(self, cursor: int, upto: int) -> AsyncIterator[list[Frame]]:
        """Frames in (cursor, upto]: from memory when it reaches back that far, else the table."""
        while cursor < upto:
            if self._ids and cursor >= self._ids[0] - 1:
                lo = bisect.bisect_right(self._ids, cursor)
                hi = bisect.bisect_right(self._ids, upto)
                frames = self._frames[lo:hi]
                if frames:
                    yield frames
                return
            rows = await asyncio.to_thread(self.store.events_after, cursor, BATCH)
            frames = [frame(ev) for ev in rows if ev.id is not None and ev.id <= upto]
            if not frames:
                return
            yield frames
            cursor = frames[-1].id

    async def stream(self, after: int | None, visible: Callable[[str | None], bool],
                     jobs: Collection[str] = (), types: Collection[str] = (),
                     timeout: float | None = None) -> AsyncIterator[str]:
        """SSE text for one subscriber: a ``ready`` frame, then every event after ``after``
        (default: from now on) that ``visible`` lets it see and the filters select; for
        ``timeout`` seconds, or until the client goes."""
        loop = asyncio.get_running_loop()
        until = None if timeout is None else loop.time() + timeout
        sub = _Subscriber(visible, set(jobs), set(types))
        self._subs.add(sub)  # first: from now on the reader reads (and hands it) new events
        try:
            await self._catch_up()
            joined = self.head
            # A client resuming from another replica may be ahead of this one: never send it
            # an id it has seen (``cursor`` only grows).
            cursor = joined if after is None else max(0, after)
            ready = json.dumps({"after": cursor, "head": joined})
            yield f"id: {cursor}\nevent: ready\ndata: {ready}\n\n"
            async for frames in self._backlog(cursor, joined):
                out = [f.text for f in frames if sub.wants(f)]
                cursor = frames[-1].id
                if out:
                    yield "".join(out)
            while not sub.overflow:
                if until is not None and loop.time() >= until:
                    return
                if not sub.pending:
                    wait = KEEPALIVE if until is None else min(KEEPALIVE, max(0.0, until - loop.time()))
                    try:
                        async with asyncio.timeout(wait):
                            await sub.woken.wait()
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                sub.woken.clear()
                frames, sub.pending = sub.pending, []
                out = [f.text for f in frames if f.id > cursor]
                if out:
                    cursor = frames[-1].id
                    yield "".join(out)
        finally:
            self._subs.discard(sub)
