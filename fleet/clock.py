"""The scheduler's clock: wall time for the deadlines it compares with what the database holds
(queue timeouts, lost attempts' leases, ended-at stamps). Timers (``call_later``,
``asyncio.sleep``) run on the event loop's own clock.

Production uses the system clock. A test moves time forward by giving the scheduler a clock
and an event loop that share one offset (tests/harness.py: ``ShiftedClock``), so a one-hour
queue timeout expires when the test says so, not after an hour.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch, as ``time.time()``."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()


SYSTEM = SystemClock()
