"""``queue.depth`` events (GET /events): how many jobs wait in each device-class queue, told
when it changed, at most every ``DepthTeller.EVERY`` seconds (a burst is one event)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sized
from typing import Any

from fleet.store import Store

log = logging.getLogger(__name__)


class DepthTeller:
    EVERY = 0.25  # seconds: queue.depth events at most this often

    def __init__(self, store: Store, queues: Callable[[], Mapping[str, Sized]]) -> None:
        self.store = store
        self.queues = queues  # the scheduler's queues, by key
        self.stopped = False
        self._told: dict[str, int] = {}  # what the last event said
        self._handle: asyncio.TimerHandle | None = None  # the telling to come (coalesced)
        self._write: asyncio.Future[None] | None = None  # the event being written

    def changed(self) -> None:
        """Some queue's depth changed: tell it after a short window, never at once (a job
        queued and placed within it changes nothing to tell, and the write stays off the
        submit->start path)."""
        if self._handle is not None or self.stopped:
            return
        self._handle = asyncio.get_running_loop().call_later(self.EVERY, self._tell)

    async def stop(self) -> None:
        self.stopped = True
        if self._handle is not None:
            self._handle.cancel()
        if self._write is not None:
            await asyncio.gather(self._write, return_exceptions=True)

    def _tell(self) -> None:
        """A ``queue.depth`` event: the queues whose number of waiting jobs changed."""
        self._handle = None
        if self._write is not None and not self._write.done():
            self.changed()  # the last one is still being written: told after it, in order
            return
        depth = {key: len(q) for key, q in self.queues().items()}
        changed = {key: depth.get(key, 0) for key in depth.keys() | self._told.keys()
                   if depth.get(key, 0) != self._told.get(key, 0)}
        if not changed:
            return
        self._told = depth
        # Written by a worker thread: the event loop never waits for the database's write lock
        # (held meanwhile by an API thread writing a batch of a thousand jobs: 50-90 ms).
        self._write = asyncio.get_running_loop().run_in_executor(
            None, self._store, {"queues": changed, "waiting": sum(depth.values())})

    def _store(self, data: dict[str, Any]) -> None:
        try:
            self.store.add_event("queue.depth", data=data)
        except Exception:
            log.exception("writing a queue.depth event failed")
            self._told = {}  # told in full next time
