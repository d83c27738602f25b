"""Leader election for several ``fleet serve`` replicas on one database (DESIGN.md §5.9).

One row of the ``leases`` table names the leader and when its lease expires. A replica takes
the lease when it is free, expired, or held by a dead process on this same machine (so a
controller restarted after ``kill -9`` does not wait out its own old lease). The leader renews
every third of the lease time; a leader that cannot renew before its lease runs out stops at
once (see ``fleet.controller``), so two schedulers never act at the same time as long as the
replicas' clocks agree to well under the lease time (NTP).

Every statement is a single conditional UPDATE (or an INSERT that loses cleanly to a concurrent
one), which is atomic on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from fleet.db import Database
from fleet.ids import new_id
from fleet.models.tables import Lease

log = logging.getLogger(__name__)

LEADER = "scheduler"
_LEASES = Lease.__table__  # type: ignore[attr-defined]


def make_holder() -> str:
    """``hostname:pid:random``: unique per process, and says where to check liveness."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id('c')}"


def _dead_here(holder: str) -> bool:
    """True if ``holder`` is a process of this machine that no longer runs."""
    try:
        host, pid_text, _ = holder.split(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass(frozen=True)
class LeaseInfo:
    holder: str
    url: str | None
    expires_at: float
    updated_at: float | None = None  # when its holder last renewed it


class LeaderLease:
    def __init__(self, db: Database, holder: str, url: str | None, ttl: float) -> None:
        self.db = db
        self.holder = holder
        self.url = url
        self.ttl = ttl
        self.valid_until = 0.0  # local monotonic time our lease is good until
        # When (monotonic) the lease row was last read, and what it was: a follower's keeper
        # reads it every second, so a request on the event loop need not (``seen``). One
        # tuple, swapped whole under ``_seen_lock`` (``_saw``): several threads read the row.
        self._seen: tuple[float, LeaseInfo | None] | None = None
        self._seen_lock = threading.Lock()  # the newest reading wins, whichever thread ends last

    @property
    def held(self) -> bool:
        return time.monotonic() < self.valid_until

    def current(self) -> LeaseInfo | None:
        at = time.monotonic()  # the row is at least as new as the moment it was asked for
        with self.db.write() as conn:
            row = conn.execute(select(_LEASES).where(_LEASES.c.name == LEADER)).first()
        info = None if row is None else LeaseInfo(row.holder, row.url, row.expires_at, row.updated_at)
        self._saw(at, info)
        return info

    def _saw(self, at: float, info: LeaseInfo | None) -> None:
        with self._seen_lock:
            if self._seen is None or at >= self._seen[0]:
                self._seen = (at, info)

    def seen(self, within: float | None) -> tuple[bool, LeaseInfo | None]:
        """The lease row as last read, if read at most ``within`` seconds ago (None: ever):
        (True, it), else (False, None)."""
        seen = self._seen
        if seen is not None and (within is None or time.monotonic() - seen[0] <= within):
            return True, seen[1]
        return False, None

    def try_acquire(self) -> bool:
        """Take or renew the lease if we may. Returns whether we hold it now."""
        started = time.monotonic()
        now = time.time()
        values = dict(holder=self.holder, url=self.url, expires_at=now + self.ttl, updated_at=now)
        with self.db.write() as conn:
            taken = conn.execute(
                update(_LEASES)
                .where(_LEASES.c.name == LEADER)
                .where((_LEASES.c.holder == self.holder) | (_LEASES.c.expires_at < now))
                .values(**values)
            ).rowcount
        if not taken:
            current = self.current()
            if current is None:
                taken = self._insert(values)
            elif _dead_here(current.holder):
                with self.db.write() as conn:
                    taken = conn.execute(
                        update(_LEASES)
                        .where(_LEASES.c.name == LEADER, _LEASES.c.holder == current.holder)
                        .values(**values)
                    ).rowcount
        if taken:
            if 0 < self.valid_until < started:
                log.warning("the leader lease had lapsed %.1f s ago; no other replica held it, "
                            "so it was taken back", started - self.valid_until)
            # Count from before the write: the DB may have applied it at any moment since.
            self.valid_until = started + self.ttl
            self._saw(started, LeaseInfo(self.holder, self.url, now + self.ttl, now))
        return bool(taken)

    def _insert(self, values: dict[str, Any]) -> bool:
        try:
            with self.db.write() as conn:
                conn.execute(insert(_LEASES).values(name=LEADER, **values))
            return True
        except IntegrityError:
            return False  # another replica inserted first

    def release(self) -> None:
        """Give the lease up now (graceful shutdown) so a follower need not wait it out."""
        with self.db.write() as conn:
            conn.execute(
                update(_LEASES).where(_LEASES.c.name == LEADER, _LEASES.c.holder == self.holder)
                .values(expires_at=0.0, updated_at=time.time())
            )
        self.valid_until = 0.0


class LeaseKeeper:
    """Takes and renews the lease from a thread of its own, every ``period`` seconds: a busy
    event loop (a large batch being validated, a slow disk) does not stop the renewals, so a
    leader under load keeps its lease. ``on_error`` hears of a failed attempt (a full disk).
    A process that is stopped (SIGSTOP) stops this thread too: its lease runs out, and a rival
    takes over as before."""

    def __init__(self, lease: LeaderLease, period: float,
                 on_error: Callable[[BaseException], None] = lambda exc: None) -> None:
        self.lease, self.period, self.on_error = lease, period, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (before the lease is released at shutdown). Blocks briefly."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.lease.try_acquire()
            except Exception as exc:  # noqa: BLE001 - the database may be away for a moment
                log.warning("leader lease: %s", exc)
                self.on_error(exc)
                if self._stop.wait(0.2):
                    return
                continue
            self._stop.wait(self.period if self.lease.held else min(1.0, self.period))
