"""``/queues``: each device-class queue as the scheduler holds it (the TUI's queue view)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated

from fastapi import APIRouter, Query

from fleet.api.auth import UserDep
from fleet.api.context import LEADER, CtxDep
from fleet.api.schemas import QueueJobOut, QueueOut, WhyOut
from fleet.models.enums import JobState

router = APIRouter(tags=["jobs"])


@router.get("/queues", dependencies=LEADER)
async def queues(
    user: UserDep, ctx: CtxDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[QueueOut]:
    """Every device-class queue: how many wait and run, the running jobs and the waiting ones in
    the order the scheduler will take them (the first ``limit``), and why the first waits.
    A user sees the lab's counts and reasons, and only their own jobs."""
    views = ctx.scheduler.queue_views(limit)
    ids = [i for v in views for i in v.running[:limit] + v.order]
    jobs = {j.id: j for j in await asyncio.to_thread(ctx.store.jobs_by_id, ids)} if ids else {}

    def mine(job_id: str) -> bool:
        job = jobs.get(job_id)
        return job is not None and (user.is_admin or job.user == user.name)

    out = []
    for v in views:
        rows = []
        for job_id in v.running[:limit]:
            if mine(job_id):
                j = jobs[job_id]
                rows.append(QueueJobOut(id=j.id, name=j.name, user=j.user, priority=j.priority,
                                        state=JobState(j.state), host=j.host, created_ts=j.created_at,
                                        position=None))
        for position, job_id in enumerate(v.order, 1):
            if mine(job_id):
                j = jobs[job_id]
                rows.append(QueueJobOut(id=j.id, name=j.name, user=j.user, priority=j.priority,
                                        state=JobState(j.state), created_ts=j.created_at, position=position))
        why = None
        if v.why is not None:
            data = dataclasses.asdict(v.why)
            if not mine(v.why.job):
                data["job"] = ""  # another user's job: its reasons are the lab's, its id is not ours
            why = WhyOut.model_validate(data)
        out.append(QueueOut(key=v.key, waiting=v.waiting, running=len(v.running), jobs=rows, why=why))
    return out
