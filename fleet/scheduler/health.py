"""Host health checks and the operators' controls (DESIGN.md §5.3–5.4).

An infrastructure failure makes a good host ``unknown``: it takes no jobs until a health check
(fleet's agent answering a ping over a fresh connection, run ahead of the queue) says ``good``;
after ``Policy.bad_after`` failed checks it is ``bad`` (quarantined) and checked again with a
growing pause. A host that comes back gets its lost attempts followed again (``on_back``), and
stale ones fenced. Operators put hosts in maintenance. A backend without health checks (no
``check`` capability) has its hosts taken as good once the pause after a failure has passed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping

from fleet.backends.base import Backend, BackendError, Capability
from fleet.clock import SYSTEM, Clock
from fleet.inventory import Host
from fleet.models.enums import REASON_CLASS, FailureClass, Health
from fleet.scheduler.hostbook import HostBook
from fleet.scheduler.records import HostCheck, Policy
from fleet.scheduler.verdict import Verdict
from fleet.store import Store

log = logging.getLogger(__name__)


class HealthChecks:
    def __init__(self, book: HostBook, store: Store, backends: Mapping[str, Backend], policy: Policy, *,
                 on_back: Callable[[Host], None], wake: Callable[[], None],
                 followed: Callable[[], set[str]], loaded: asyncio.Event | None = None,
                 clock: Clock = SYSTEM) -> None:
        self.book, self.store, self.backends, self.policy = book, store, backends, policy
        self.clock = clock
        self.on_back = on_back  # a host is good again: follow what was lost on it
        self.wake = wake  # place jobs: a host is back
        self.followed = followed  # ids of the attempts the scheduler follows now
        # Set once the scheduler has loaded what the last leader left: a check waits for it
        # (a host back follows its lost attempts again, and stops the stale ones: both must
        # know every attempt the scheduler will follow).
        self.loaded = loaded
        self.failures: Counter[str] = Counter()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        # At most this many checks at once: a thousand hosts checked together at start spent
        # their timeouts waiting for each other's handshakes (995 of 1,000 good hosts were
        # marked bad) and held the loop for seconds.
        self.turns = asyncio.Semaphore(max(1, policy.check_concurrency))
        self.running_checks = 0

    def backend_of(self, host: Host) -> Backend:
        return self.backends[host.backend]

    def after_attempt(self, host: Host, verdict: Verdict) -> None:
        """An infrastructure failure makes a good host ``unknown`` until a health check says."""
        if REASON_CLASS.get(verdict.reason) is not FailureClass.INFRA:
            return
        if self.book.health.get(host.name, Health.GOOD) is Health.GOOD:
            self.book.set_health(host.name, Health.UNKNOWN, verdict.message)
        self.schedule(host.name)

    def schedule(self, name: str, delay: float = 0.0) -> None:
        task = self.tasks.get(name)
        if task is None or task.done():
            self.tasks[name] = asyncio.create_task(self._until_settled(name, delay), name=f"check-{name}")

    async def _until_settled(self, name: str, delay: float) -> None:
        """Check a host until it is good again; after ``bad_after`` failures it is quarantined
        and checked with a growing pause (up to ``recheck_interval``)."""
        await asyncio.sleep(delay)
        pause = 1.0
        while not self.stopping and self.book.health.get(name) in (Health.UNKNOWN, Health.BAD):
            if await self.check_once(name) is None:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.policy.recheck_interval)

    async def check_once(self, name: str) -> str | None:
        """One health check ahead of the queue; returns None if the host is good, else why not."""
        if self.loaded is not None:
            await self.loaded.wait()
        host = self.book.hosts[name]
        backend = self.backend_of(host)
        try:
            if backend.can(Capability.CHECK):
                async with self.turns:
                    self.running_checks += 1
                    try:
                        found = await backend.check(host, self.policy.check_timeout)
                        if found:
                            self.book.set_facts(name, found)
                    finally:
                        self.running_checks -= 1
        except BackendError as exc:
            self.book.unchecked.discard(name)
            self.failures[name] += 1
            count = self.failures[name]
            message = f"unreachable: {exc} (check {count} failed)"
            if self.book.health.get(name) is not Health.MAINTENANCE:
                bad = count >= self.policy.bad_after
                self.book.set_health(name, Health.BAD if bad else Health.UNKNOWN, message)
            return message
        except Exception as exc:
            log.exception("health check of %s failed in the controller", name)
            return f"health check error: {exc}"
        self.failures[name] = 0
        self.book.unchecked.discard(name)
        if self.book.health.get(name) is not Health.MAINTENANCE:
            self.book.set_health(name, Health.GOOD, None)
        self.on_back(host)
        await self._kill_stale(host)
        self.wake()
        return None

    async def _kill_stale(self, host: Host) -> None:
        """A host that comes back may still run attempts we declared lost and retried elsewhere:
        stop them so a job never finishes twice."""
        followed = self.followed()
        stale = [a for a in self.store.lost_attempts(host.name, self.clock.time() - 86400) if a not in followed]
        if not stale:
            return
        backend = self.backend_of(host)
        if not backend.can(Capability.KILL_STALE):
            log.warning("backend %s cannot stop stale attempts; %d given up on may still run on %s",
                        backend.name, len(stale), host.name)
            return
        try:
            await backend.kill_stale(host, stale, self.policy.kill_grace)
        except BackendError as exc:
            log.warning("could not stop stale attempts on %s: %s", host.name, exc)

    async def gc_hosts(self, max_age: float, max_bytes: int) -> dict[str, tuple[int, int, int]]:
        """Retention of attempt directories on every good host whose backend keeps them (those
        in the middle of a check or unreachable are left for the next pass). Returns (removed,
        freed, left) per host."""

        unfinished = await asyncio.to_thread(self.store.unfinished_attempts)

        async def one(host: Host) -> tuple[str, tuple[int, int, int] | None]:
            keep = unfinished.get(host.name, [])
            try:
                return host.name, await self.backend_of(host).gc_attempts(
                    host, max_age, max_bytes, keep, self.policy.check_timeout * 4)
            except BackendError as exc:
                log.warning("attempt gc on %s failed: %s", host.name, exc)
                return host.name, None

        hosts = [h for h in self.book.hosts.values() if self.book.health.get(h.name) is Health.GOOD
                 and self.backend_of(h).can(Capability.GC)]
        done = await asyncio.gather(*(one(h) for h in hosts))
        return {name: figures for name, figures in done if figures is not None}

    async def check_host(self, name: str) -> HostCheck:
        """Operator: run a health check now. Returns the host's health afterwards."""
        self.book.host(name)
        failure = await self.check_once(name)
        if failure is not None and self.book.health.get(name) is Health.GOOD:
            self.book.set_health(name, Health.UNKNOWN, failure)
        if failure is not None:
            self.schedule(name, delay=1.0)
        return HostCheck(host=name, ok=failure is None, message=failure,
                         health=self.book.health.get(name, Health.UNKNOWN).value)

    def maintenance(self, name: str, on: bool = True) -> None:
        """Maintenance: like drain, and health checks leave it alone until it is turned off;
        turning it off asks a health check before the host takes jobs again."""
        self.book.host(name)
        if on:
            self.book.set_health(name, Health.MAINTENANCE, "set by an operator")
            return
        self.book.set_health(name, Health.UNKNOWN, "out of maintenance; checking")
        self.schedule(name)
