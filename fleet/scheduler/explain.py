"""What the scheduler says about its jobs and queues (``fleet why``, ``GET /queues``): read
from its parts, changing nothing. Placement answers the same pure question it answers for
the placement pass, so ``why`` never disagrees with what the scheduler does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet.errors import NotFound
from fleet.models.enums import JobState
from fleet.scheduler.chains import Chains
from fleet.scheduler.placement import Demand, Placement, dynamic_reason, place
from fleet.scheduler.records import QueuedJob, QueueView, Why

if TYPE_CHECKING:
    from fleet.scheduler.loop import Scheduler


def why(s: Scheduler, job_id: str) -> Why:
    """Why a job is where it is: per-host reasons for a waiting job."""
    qj = s.pending.get(job_id)
    if qj is not None:
        queue = s.queues[qj.demand.key]
        ahead = queue.position(job_id, s.running_by_user)  # taken before it
        block = s.burst_block(queue, qj.demand)[0]
        summary, reasons = _report(s, qj, block)
        return Why(job=job_id, state="waiting", queue=qj.demand.key, queued=len(queue), ahead=ahead,
                   summary=summary, reasons=reasons,
                   hosts=host_reasons(s, qj.demand, block, frozenset(qj.no_capacity)))
    held = s.held.get(job_id)
    if held is not None:
        left = max(0.0, held.until - s.clock.time())
        return Why(job=job_id, state="waiting", queue=held.qj.demand.key,
                   summary=f"retrying in {left:.0f} s, when the attempt lost on its host has "
                           "surely stopped (attempt lease)")
    run = s.running.get(job_id)
    if run is not None:
        return Why(job=job_id, state="running", queue=run.qj.demand.key,
                   summary=f"running on {run.host.name} (attempt {run.attempt.number})")
    job = s.store.get_job(job_id)
    if not s.loaded.is_set() and not JobState(job.state).terminal:
        return Why(job=job_id, state="waiting" if job.state in ("PENDING", "RETRYING") else "running",
                   queue=job.queue, summary=f"{job.state}: this controller has just taken the lead "
                                            "and is still reading the queue and the running attempts")
    if job_id in s.chains.waiting and job.after:  # the job it waits for, as it is now
        try:
            before = s.store.get_job(job.after)
            summary = f"waiting for {Chains.what(before)}, now {before.state}"
        except NotFound:
            summary = f"waiting for job {job.after}, which does not exist"
        return Why(job=job_id, state="waiting", queue=job.queue, summary=summary)
    if job.state == JobState.PENDING.value:
        return Why(job=job_id, state="waiting", queue=job.queue,
                   summary="PENDING: submitted to another replica; the leader queues it at its next "
                           f"look for such jobs (every {s.policy.sync_interval:g} s)")
    return Why(job=job_id, state="done", queue=job.queue,
               summary=f"{job.state} ({job.reason}){': ' + job.message if job.message else ''}")


SUMMARY_FRESH = 1.0  # seconds a queue's one-line reason is reused (expiring many jobs at once)


def waiting_summary(s: Scheduler, qj: QueuedJob) -> str:
    """Why a waiting job cannot start, in one line (what its expiry says). The same for every
    job of a queue with the same history at one moment: computed once per second per queue,
    so expiring thousands of jobs together does not look at every host thousands of times."""
    key = (qj.demand.key, frozenset(qj.no_capacity), frozenset(qj.failed_on))
    now = s.clock.time()
    memo = s.summaries.get(key)
    if memo is not None and now - memo[0] < SUMMARY_FRESH:
        return memo[1]
    queue = s.queues.get(qj.demand.key)
    text = _report(s, qj, s.burst_block(queue, qj.demand)[0] if queue is not None else None)[0]
    if len(s.summaries) > 1000:  # old histories: let them go
        s.summaries.clear()
    s.summaries[key] = (now, text)
    return text


def _report(s: Scheduler, qj: QueuedJob, block: str | None) -> tuple[str, dict[str, int]]:
    """Placement's answer for a waiting job over every host, in words, with its per-reason
    host counts (none when it could be placed now)."""
    report = place(qj.demand, s.book.views(), s.book.static_for(qj.demand), failed_on=frozenset(qj.failed_on),
                   burst_block=block, no_capacity=frozenset(qj.no_capacity))
    if isinstance(report, Placement):
        return f"placeable now on {report.host}; waiting for the scheduler", {}
    return report.summary(), dict(report.reasons)


def queue_views(s: Scheduler, limit: int = 50) -> list[QueueView]:
    """Each device-class queue: its waiting jobs in the order they will be taken (the first
    ``limit``), its running jobs, and why its first waiting job waits."""
    running: dict[str, list[str]] = {}
    for job_id, run in s.running.items():
        running.setdefault(run.qj.demand.key, []).append(job_id)
    out = []
    for key in sorted(set(s.queues) | set(running)):
        queue = s.queues.get(key)
        waiting = queue.order(s.running_by_user, limit) if queue is not None else []
        out.append(QueueView(key=key, waiting=len(queue) if queue is not None else 0,
                             order=waiting, running=sorted(running.get(key, [])),
                             why=why(s, waiting[0]) if waiting else None))
    return out


def host_reasons(s: Scheduler, demand: Demand, burst_block: str | None = None,
                 no_capacity: frozenset[str] = frozenset()) -> dict[str, str]:
    """Each host in the job's scope: why it cannot take the job, or "free"."""
    static = s.book.static_for(demand)
    out: dict[str, str] = {}
    for view in s.book.views():
        if demand.pool is not None and demand.pool not in view.host.pools:
            continue
        reason = static.get(view.host.name) or dynamic_reason(demand, view, burst_block, no_capacity)
        out[view.host.name] = reason or "free"
    return out
