"""Attempts' starts, written in groups.

An attempt's start (RUNNING, its job RUNNING) is not part of the crash contract: a start lost
in a crash is as if it was never heard of, and the next leader follows the attempt from its
directory on the host (DESIGN.md §5.6). So the scheduler writes starts a little later than it
hears of them: together with the others that start meanwhile (a pass starts hundreds), or in
the transaction of the attempts' ends if they end by then (a short job: one transaction, not
two)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fleet.store import Start


class PendingStarts:
    """Starts heard of and not yet written. ``write`` gets them ``delay`` seconds after the
    first of them, unless someone ``take``s them first (to write them in a transaction of
    their own)."""

    def __init__(self, write: Callable[[list[Start]], object], delay: float = 0.05) -> None:
        self._write, self.delay = write, delay
        self._items: list[Start] = []
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, job_id: str, attempt_id: str, at: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)
        self._items.append((job_id, attempt_id, at))

    def take(self) -> list[Start]:
        """The pending starts, now the caller's to write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        return items

    def flush(self) -> None:
        """Write the pending starts now (when the delay is up, and when the scheduler stops)."""
        items = self.take()
        if items:
            self._write(items)
