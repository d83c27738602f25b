"""Host health and the operator's controls, as part of the scheduler (DESIGN.md §5.3–5.4).

An infrastructure failure makes a good host ``unknown``: it takes no jobs until a health check
(fleet's agent answering a ping over a fresh connection, run ahead of the queue) says ``good``;
after ``Policy.bad_after`` failed checks it is ``bad`` (quarantined) and checked again with a
growing pause. A host that comes back gets its lost attempts followed again, and stale ones
fenced. Operators drain hosts or put them in maintenance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from fleet.backends.base import Backend, BackendError, Capability
from fleet.errors import NotFound
from fleet.inventory import Host
from fleet.models.enums import REASON_CLASS, FailureClass, Health
from fleet.scheduler.verdict import Verdict
from fleet.store import Store

if TYPE_CHECKING:
    from fleet.models.tables import Attempt
    from fleet.scheduler.loop import Policy, QueuedJob, Running

log = logging.getLogger(__name__)


class HealthMixin:
    """Health checks, drain and maintenance; mixed into ``fleet.scheduler.loop.Scheduler``,
    whose state (below) it shares."""

    store: Store
    backends: dict[str, Backend]
    policy: Policy
    hosts: dict[str, Host]
    health: dict[str, Health]
    unchecked: set[str]
    drained: set[str]
    check_failures: Counter[str]
    running: dict[str, Running]
    held: dict[str, tuple[QueuedJob, asyncio.TimerHandle, float, Attempt | None, Host | None]]
    kill_grace: float
    _checks: dict[str, asyncio.Task[None]]
    _stopping: bool
    _wake: asyncio.Event

    def _resolve(self, qj: QueuedJob, attempt: Attempt, host: Host) -> None:
        raise NotImplementedError

    def backend_of(self, host: Host) -> Backend:
        raise NotImplementedError

    def _update_health(self, host: Host, verdict: Verdict) -> None:
        """An infrastructure failure makes a good host ``unknown`` until a health check says."""
        if REASON_CLASS.get(verdict.reason) is not FailureClass.INFRA:
            return
        if self.health.get(host.name, Health.GOOD) is Health.GOOD:
            self._set_health(host.name, Health.UNKNOWN, verdict.message)
        self._schedule_check(host.name)

    def _set_health(self, name: str, health: Health, message: str | None) -> None:
        if self.health.get(name, Health.GOOD) is not health:
            log.info("host %s: health %s%s", name, health.value, f" ({message})" if message else "")
        self.health[name] = health
        self.store.set_health(name, health, message)

    # ------------------------------------------------------------------ health checks

    def _schedule_check(self, name: str, delay: float = 0.0) -> None:
        task = self._checks.get(name)
        if task is None or task.done():
            self._checks[name] = asyncio.create_task(self._check_until_settled(name, delay),
                                                     name=f"check-{name}")

    async def _check_until_settled(self, name: str, delay: float) -> None:
        """Check a host until it is good again; after ``bad_after`` failures it is quarantined
        and checked with a growing pause (up to ``recheck_interval``)."""
        await asyncio.sleep(delay)
        pause = 1.0
        while not self._stopping and self.health.get(name) in (Health.UNKNOWN, Health.BAD):
            if await self._check_once(name) is None:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.policy.recheck_interval)

    async def _check_once(self, name: str) -> str | None:
        """One health check ahead of the queue; returns None if the host is good, else why not."""
        host = self.hosts[name]
        backend = self.backend_of(host)
        try:
            if backend.can(Capability.CHECK):
                await backend.check(host, self.policy.check_timeout)
            # A backend without health checks: its hosts are taken as good once the pause
            # after a failure has passed (the next launch tells).
        except BackendError as exc:
            self.unchecked.discard(name)
            self.check_failures[name] += 1
            count = self.check_failures[name]
            message = f"unreachable: {exc} (check {count} failed)"
            if self.health.get(name) is not Health.MAINTENANCE:
                bad = count >= self.policy.bad_after
                self._set_health(name, Health.BAD if bad else Health.UNKNOWN, message)
            return message
        except Exception as exc:
            log.exception("health check of %s failed in the controller", name)
            return f"health check error: {exc}"
        self.check_failures[name] = 0
        self.unchecked.discard(name)
        if self.health.get(name) is not Health.MAINTENANCE:
            self._set_health(name, Health.GOOD, None)
        self._follow_up_on(host)
        await self._kill_stale(host)
        self._wake.set()
        return None

    def _follow_up_on(self, host: Host) -> None:
        """The host is back: follow the attempts lost on it whose jobs wait to be retried. Their
        lease is renewed as soon as they are followed again, so they run on to their real end."""
        for job_id, (_qj, _handle, _until, attempt, lost_on) in list(self.held.items()):
            if attempt is not None and lost_on is not None and lost_on.name == host.name:
                qj, handle = self.held.pop(job_id)[:2]
                handle.cancel()
                self._resolve(qj, attempt, host)

    async def _kill_stale(self, host: Host) -> None:
        """A host that comes back may still run attempts we declared lost and retried elsewhere:
        stop them so a job never finishes twice."""
        stale = [a for a in self.store.lost_attempts(host.name, time.time() - 86400)
                 if not any(r.attempt.id == a for r in self.running.values())]
        if not stale:
            return
        backend = self.backend_of(host)
        if not backend.can(Capability.KILL_STALE):
            log.warning("backend %s cannot stop stale attempts; %d given up on may still run on %s",
                        backend.name, len(stale), host.name)
            return
        try:
            await backend.kill_stale(host, stale, self.kill_grace)
        except BackendError as exc:
            log.warning("could not stop stale attempts on %s: %s", host.name, exc)

    async def gc_hosts(self, max_age: float, max_bytes: int) -> dict[str, tuple[int, int, int]]:
        """Retention of attempt directories on every good host (those in the middle of a check
        or unreachable are left for the next pass). Returns (removed, freed, left) per host."""

        async def one(host: Host) -> tuple[str, tuple[int, int, int] | None]:
            keep = self.store.unfinished_attempts(host.name)
            try:
                return host.name, await self.backend_of(host).gc_attempts(
                    host, max_age, max_bytes, keep, self.policy.check_timeout * 4)
            except BackendError as exc:
                log.warning("attempt gc on %s failed: %s", host.name, exc)
                return host.name, None

        hosts = [h for h in self.hosts.values() if self.health.get(h.name) is Health.GOOD
                 and self.backend_of(h).can(Capability.GC)]
        done = await asyncio.gather(*(one(h) for h in hosts))
        return {name: figures for name, figures in done if figures is not None}

    async def check_host(self, name: str) -> dict[str, Any]:
        """Operator: run a health check now. Returns the host's health afterwards."""
        self._host(name)
        failure = await self._check_once(name)
        if failure is not None and self.health.get(name) is Health.GOOD:
            self._set_health(name, Health.UNKNOWN, failure)
        if failure is not None:
            self._schedule_check(name, delay=1.0)
        return {"host": name, "ok": failure is None, "message": failure,
                "health": self.health.get(name, Health.UNKNOWN).value}

    # ------------------------------------------------------------------ operators

    def _host(self, name: str) -> Host:
        host = self.hosts.get(name)
        if host is None:
            raise NotFound(f"no host named {name!r} in the inventory")
        return host

    def drain(self, name: str, drained: bool = True) -> None:
        """A drained host finishes its running attempts and takes no new ones."""
        self._host(name)
        if drained:
            self.drained.add(name)
        else:
            self.drained.discard(name)
        self.store.set_drained(name, drained)
        self._wake.set()

    def maintenance(self, name: str, on: bool = True) -> None:
        """Maintenance: like drain, and health checks leave it alone until it is turned off;
        turning it off asks a health check before the host takes jobs again."""
        self._host(name)
        if on:
            self._set_health(name, Health.MAINTENANCE, "set by an operator")
            return
        self._set_health(name, Health.UNKNOWN, "out of maintenance; checking")
        self._schedule_check(name)
