"""A user's cancel: a job waiting on its chain or queued ends at once; a running one is
signalled on its host (TERM, then KILL after the grace) and its attempt's end finishes it; a
job written to the database and not yet taken by this leader (another replica's submission,
or a batch here still being handed over) is ended where it lies."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from fleet.backends.base import BackendError
from fleet.models.enums import JobState, Reason

if TYPE_CHECKING:
    from fleet.scheduler.loop import Scheduler
    from fleet.scheduler.records import Running

log = logging.getLogger(__name__)


async def cancel(s: Scheduler, job_id: str) -> str:
    """Cancel a job; returns its state after the request. Idempotent."""
    if s.leading:
        if not s.loaded.is_set():
            await s.loaded.wait()  # the job may be among the rows start has yet to take
        s.fence()  # each branch below writes
    s._write_ended()  # a job that ended in this turn: its end is what the caller sees
    if s.chains.waiting.pop(job_id, None) is not None:
        s.store.finish_job(job_id, JobState.CANCELLED, Reason.CANCELLED_BY_USER,
                           "cancelled while waiting for the job before it")
        return _ended(s, job_id, s.store.get_job(job_id).queue)
    qj = s._dequeue(job_id)
    held = s.held.pop(job_id, None)
    if held is not None:
        held.handle.cancel()
    if qj is not None or held is not None:
        s.store.finish_job(job_id, JobState.CANCELLED, Reason.CANCELLED_BY_USER, "cancelled while queued")
        job = qj.job if qj is not None else held.qj.job  # type: ignore[union-attr]
        return _ended(s, job_id, job.queue)
    run = s.running.get(job_id)
    if run is None:
        row = s.store.get_job(job_id)
        if row.state != JobState.PENDING.value or not s.leading:
            return row.state
        # Not taken here yet. Ended now: the look for other replicas' jobs and a batch's
        # hand-over (replicas.admit, fleet.api.submit; on this loop too) read it ended.
        s.store.finish_job(job_id, JobState.CANCELLED, Reason.CANCELLED_BY_USER, "cancelled while queued")
        return _ended(s, job_id, row.queue)
    if not run.cancel_requested:
        run.cancel_requested = True
        s.store.set_job(job_id, state=JobState.CANCELLING.value)
        asyncio.create_task(_signal(s, run))
    return JobState.CANCELLING.value


def _ended(s: Scheduler, job_id: str, queue: str) -> str:
    s.metrics.job_ended(queue, JobState.CANCELLED)
    s._job_done(job_id)
    return JobState.CANCELLED.value


async def _signal(s: Scheduler, run: Running) -> None:
    """Signal the attempt once its process exists (or it ended: nothing to do)."""
    waiter = asyncio.ensure_future(run.started.wait())
    assert run.task is not None
    await asyncio.wait({waiter, run.task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if run.task.done():
        return
    try:
        await s.backend_of(run.host).cancel(run.plan, s.kill_grace)
    except BackendError as exc:
        log.warning("cancel of %s on %s failed: %s", run.attempt.id, run.host.name, exc)
