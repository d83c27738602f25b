"""Prometheus metrics (``GET /metrics``): what a controller did, and the state it sees.

Two kinds. What happened in this process is counted as it happens (attempts ended, jobs ended,
durations of jobs, queue waits, scheduler passes and database writes): a follower, which runs
no attempts, shows zeros there, as any restarted process does. What *is* (jobs by state and
device class, queue depth and oldest wait, hosts by health and drain, the leader lease) is read
at scrape time from the database every replica shares, so every replica answers the same.

A job's label is its ``queue``: the device-class queue it waits in (``fleet why`` names it,
e.g. ``*/x86_64/rtx``); a host's is its ``device_class``. Names follow Prometheus' conventions
(STYLE.md): one ``fleet_`` prefix, base units, counters end in ``_total``, and no label takes
unbounded values (no job ids, no user names).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from fleet import loopwatch
from fleet.models.enums import TERMINAL_STATES, Health, JobState, Reason
from fleet.models.tables import Job

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from fleet.api.context import ApiContext

# Job and queue-wait durations: from a second to a day (benchmarks are minutes; compiles an hour).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
# A scheduling pass or a database write: milliseconds matter (the 50 ms bar).
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# A callback that held the event loop (fleet.loopwatch counts those of 5 ms or more).
HOLD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15)
_JOBS = Job.__table__  # type: ignore[attr-defined]
ACTIVE_STATES = tuple(s.value for s in JobState if s not in TERMINAL_STATES)


class Metrics:
    """The counters and histograms of one controller process (one registry each, so tests
    may run several controllers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.attempts_ended = Counter(
            "fleet_attempts_ended", "Attempts that ended, by reason and device class.",
            ["reason", "device_class"], registry=r)
        self.jobs_ended = Counter(
            "fleet_jobs_ended", "Jobs that reached a terminal state, by state and queue.",
            ["state", "queue"], registry=r)
        self.job_duration = Histogram(
            "fleet_job_duration_seconds", "Run time of a job's last attempt (start to end).",
            ["queue"], buckets=DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "fleet_queue_wait_seconds", "Time from a job's submission to its first attempt's placement.",
            ["queue"], buckets=DURATION_BUCKETS, registry=r)
        self.pass_duration = Histogram(
            "fleet_scheduler_pass_duration_seconds", "Duration of one scheduling pass.",
            buckets=FAST_BUCKETS, registry=r)
        self.db_write = Histogram(
            "fleet_db_write_duration_seconds", "Duration of one database write transaction.",
            buckets=FAST_BUCKETS, registry=r)
        self.loop_hold = Histogram(
            "fleet_event_loop_hold_seconds",
            "Callbacks that held the event loop 5 ms or more (a request, a pass, a packet), by "
            "how long: nothing else is served meanwhile.", buckets=HOLD_BUCKETS, registry=r)
        self.gc_pause = Histogram(
            "fleet_gc_pause_seconds", "Garbage collections of 5 ms or more, by generation (a "
            "collection holds the event loop too: it is counted in the hold of the callback it "
            "came in).", ["generation"], buckets=HOLD_BUCKETS, registry=r)

    def watch_loop(self) -> Callable[[], None]:
        """Count the callbacks that hold this process's event loop (fleet.loopwatch), and log
        the longest ones; returns the function that stops it."""
        reporter = loopwatch.Reporter()

        def held(took: float, handle: object) -> None:
            self.loop_hold.observe(took)
            reporter(took, handle)

        unwatch = loopwatch.watch(held)
        unwatch_gc = loopwatch.watch_gc(lambda generation, took: self.gc_pause.labels(str(generation)).observe(took))

        def stop() -> None:
            unwatch()
            unwatch_gc()

        return stop

    def job_ended(self, queue: str, state: JobState) -> None:
        self.jobs_ended.labels(state.value, queue).inc()

    def attempt_ended(self, reason: Reason, device_class: str, queue: str, job_state: JobState | None,
                      started_at: float | None, ended_at: float) -> None:
        """An attempt ended; ``job_state``: how its job ended with it (None: it is retried)."""
        self.attempts_ended.labels(reason.value, device_class).inc()
        if job_state is not None:
            self.job_ended(queue, job_state)
            if started_at is not None:
                self.job_duration.labels(queue).observe(max(0.0, ended_at - started_at))

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)

    def scrape(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    """What the controller sees at scrape time, from the shared database and this process."""

    def __init__(self, ctx: ApiContext, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        ctx, now = self.ctx, self.clock()
        jobs = GaugeMetricFamily("fleet_jobs", "Jobs not yet ended, by state and queue.",
                                 labels=["state", "queue"])
        depth = GaugeMetricFamily("fleet_queue_depth", "Jobs waiting for a host, per queue.",
                                  labels=["queue"])
        oldest = GaugeMetricFamily("fleet_queue_oldest_wait_seconds",
                                   "How long the oldest waiting job of a queue has waited.",
                                   labels=["queue"])
        # One grouped read over the state index; ended jobs are counted as they end instead
        # (fleet_jobs_ended_total): a scrape never walks the whole history.
        with ctx.store.db.write() as conn:
            rows = conn.execute(
                select(_JOBS.c.state, _JOBS.c.queue, func.count(), func.min(_JOBS.c.created_at))
                .where(_JOBS.c.state.in_(ACTIVE_STATES))
                .group_by(_JOBS.c.state, _JOBS.c.queue)).all()
        for state, queue, count, first in rows:
            jobs.add_metric([state, queue], count)
            if state == JobState.PENDING.value:
                depth.add_metric([queue], count)
                oldest.add_metric([queue], max(0.0, now - float(first)))
        yield jobs
        yield depth
        yield oldest
        yield from self._hosts()
        yield from self._leader(now)
        subs = GaugeMetricFamily("fleet_event_subscribers", "Clients following GET /events here.")
        subs.add_metric([], ctx.events.subscribers if ctx.events is not None else 0)
        yield subs

    def _hosts(self) -> Iterable[Metric]:
        hosts = GaugeMetricFamily("fleet_hosts", "Hosts (and elastic pools) by health and drain.",
                                  labels=["device_class", "health", "drained"])
        statuses = self.ctx.store.hosts.statuses()
        counts: dict[tuple[str, str, str], int] = {}
        for host in list(self.ctx.scheduler.book.hosts.values()):
            row = statuses.get(host.name)
            health = row.health if row is not None else Health.GOOD.value
            drained = "true" if row is not None and row.drained else "false"
            key = (host.device_class, health, drained)
            counts[key] = counts.get(key, 0) + 1
        for labels, n in sorted(counts.items()):
            hosts.add_metric(list(labels), n)
        yield hosts

    def _leader(self, now: float) -> Iterable[Metric]:
        leader = GaugeMetricFamily("fleet_leader", "1 if this replica schedules (holds the leader lease).")
        leader.add_metric([], 1 if self.ctx.scheduler.leading else 0)
        yield leader
        lease = self.ctx.lease
        if lease is None:
            return
        age = GaugeMetricFamily(
            "fleet_leader_lease_age_seconds",
            "Seconds since the leader (whichever replica) last renewed its lease.")
        info = lease.current()
        if info is not None and info.updated_at is not None:
            age.add_metric([], max(0.0, now - info.updated_at))
        yield age

