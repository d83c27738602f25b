"""Jobs other replicas wrote: an HA follower takes submissions and writes them to the
database; the leader picks them up here. Each look reads only the ids of jobs made since
shortly before the last look (ids are time-ordered; SYNC_LAG covers a follower's slow commit
and clock skew), in a thread; a full look every SYNC_FULL catches anything older. Nothing
here grows with the queue."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from fleet.ids import floor_at
from fleet.models.enums import JobState
from fleet.models.spec import JobSpec

if TYPE_CHECKING:
    from fleet.scheduler.loop import Scheduler

log = logging.getLogger(__name__)

SYNC_LAG = 10.0  # seconds: how far back each look for other replicas' jobs starts
SYNC_FULL = 60.0  # seconds between full looks (every PENDING id)


async def follow(s: Scheduler) -> None:
    """Look every ``sync_interval`` seconds until the scheduler stops."""
    last_full = last = 0.0
    while not s.stopping:
        await asyncio.sleep(s.policy.sync_interval)
        now = s.clock.time()
        full = now - last_full >= SYNC_FULL
        since = None if full else floor_at("j", last - SYNC_LAG)
        try:
            admit(s, await asyncio.to_thread(s.store.pending_job_ids, since))
        except Exception:
            log.exception("looking for new jobs failed")
            continue
        last = now
        if full:
            last_full = now


def admit(s: Scheduler, ids: list[str]) -> None:
    """Queue the PENDING jobs among ``ids`` the scheduler does not have and no request here
    is handing over (``Scheduler.incoming``). Their rows are read on the loop, not in a
    thread: the ids may be stale (a job placed and ended since), the state read here is not,
    so an ended job is never queued again."""
    fresh = [i for i in ids if not s.holds(i) and i not in s.incoming]
    for job in s.store.jobs_by_id(fresh) if fresh else []:
        if job.state == JobState.PENDING.value:
            s.submit(job, JobSpec.model_validate_json(job.spec_json))
