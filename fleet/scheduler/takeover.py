"""Taking the lead: what the last leader left (its running attempts, its queue) read and
taken in slices of ``Scheduler.LOAD_SLICE`` seconds, the event loop free in between (see
``Scheduler.start``, which wires these; 50,000 queued jobs and 2,000 running attempts were
3 s in one callback: bench/scale.py "takeover")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fleet.models.enums import AttemptState, JobState, Reason
from fleet.models.spec import JobSpec
from fleet.models.tables import Attempt, Job, NewJob
from fleet.scheduler.records import Running
from fleet.store import AttemptRef

if TYPE_CHECKING:
    from fleet.scheduler.loop import Scheduler


async def _turn(s: Scheduler, slice_end: float) -> float:
    """Between two rows of start's load: past ``slice_end``, let the loop turn (and check
    that this replica still leads). Returns the end of the slice now running."""
    if time.perf_counter() <= slice_end:
        return slice_end
    await asyncio.sleep(0)
    s.fence()
    return time.perf_counter() + s.LOAD_SLICE


async def load_attempts(s: Scheduler) -> None:
    """The attempts the last leader left running: followed again (in slices)."""
    attempts = [AttemptRef.of(a) for a in await asyncio.to_thread(s.store.active_attempts)]
    jobs = {j.id: j for j in await asyncio.to_thread(s.store.jobs_by_id, [a.job_id for a in attempts])}
    # What the jobs tried before (their retry budget): only a job past its first attempt has any.
    earlier = await asyncio.to_thread(
        s.store.attempts_of, [i for i, j in jobs.items() if j.attempt_count > 1])
    s.fence()
    slice_end = time.perf_counter() + s.LOAD_SLICE
    for attempt in attempts:
        slice_end = await _turn(s, slice_end)
        row = jobs.get(attempt.job_id)
        if row is not None and row.id not in s.running:
            reattach(s, attempt, row, earlier.get(row.id, []))


async def load_queue(s: Scheduler, rows: list[NewJob]) -> None:
    """The queue's rows (read before the attempts were followed): queued again (in slices)."""
    s.fence()
    slice_end = time.perf_counter() + s.LOAD_SLICE
    for job in rows:
        slice_end = await _turn(s, slice_end)
        if s.holds(job.id) or job.id in s.held or (s._loading is not None and job.id in s._loading):
            continue  # submitted, retried or ended while this replica was loading
        try:
            spec = JobSpec.model_validate_json(job.spec_json)
        except Exception as exc:  # noqa: BLE001 - a stored spec this release cannot read
            s.store.finish_job(job.id, JobState.FAILED, Reason.INVALID_SPEC, str(exc))
            s.metrics.job_ended(job.queue, JobState.FAILED)
            s._job_done(job.id)
            continue
        if job.state == JobState.RETRYING.value:
            requeue_retry(s, job, spec)
        else:
            s.chains.admit(job, spec)


def requeue_retry(s: Scheduler, job: Job | NewJob, spec: JobSpec) -> None:
    """After a restart: a job between attempts gets its retry history back, and waits out
    the lease of an attempt lost on a host that may still run it."""
    qj = s.pending[job.id] = s._restored(job, spec)
    s._enqueue(job, spec)
    last = s.store.get_attempt(job.current_attempt) if job.current_attempt else None
    if last is not None and last.reason == Reason.HOST_LOST.value and last.ended_at:
        # Wait out its lease if need be, then ask its host how it ended (see _unhold).
        wait = max(0.0, last.ended_at + s.policy.lost_hold - s.clock.time())
        s._dequeue(job.id)
        s._hold(qj, wait, AttemptRef.of(last), s.book.hosts.get(last.host))


def reattach(s: Scheduler, attempt: AttemptRef, job: Job, earlier: Sequence[Attempt]) -> None:
    """Follow an attempt a previous controller started (it kept running on its host);
    ``earlier``: the job's attempts (the retry history)."""
    host = s.book.hosts.get(attempt.host)
    gone, reason = None, Reason.HOST_LOST
    try:
        qj = s._restored(job, JobSpec.model_validate_json(job.spec_json), earlier)
    except Exception as exc:  # noqa: BLE001 - a stored spec this release cannot read
        gone, reason = f"its spec cannot be read by this release: {exc}", Reason.INVALID_SPEC
    if gone is None and attempt.backend not in s.backends:
        gone = f"backend {attempt.backend} that ran it on {attempt.host} is not loaded"
    elif gone is None and (host is None or host.backend != attempt.backend):
        gone = f"host {attempt.host} is no longer offered by backend {attempt.backend}"
    if gone is not None or host is None:
        s.store.finish_attempt(attempt.id, AttemptState.FAILED, reason, gone, None, 0)
        s.store.finish_job(job.id, JobState.FAILED, reason, gone)
        s.metrics.attempts_ended.labels(reason.value, host.device_class if host else "unknown").inc()
        s.metrics.job_ended(job.queue, JobState.FAILED)
        s._job_done(job.id)
        return
    s.book.take(host, attempt.slots, placed=False)
    s.running_by_user[job.user] += 1
    run = Running(qj=qj, attempt=attempt, host=host, plan=s._plan(qj, attempt, host))
    run.plan.reattach = True
    if attempt.state == AttemptState.RUNNING.value:
        run.plan.follow_only = True  # it was launched: never launch it anew
        run.started.set()
    s.running[job.id] = run
    offset = s.logs.size(job.id, attempt.id)
    if not run.plan.follow_only and 0 < offset <= s.PREAMBLE_MAX:  # it may not have been launched yet
        run.plan.preamble = s.logs.read(job.id, attempt.id, 0, offset)[0]
    run.task = asyncio.create_task(s._run_attempt(run, offset), name=f"reattach-{attempt.id}")
