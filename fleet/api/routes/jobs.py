"""``/jobs``: submit, list, show, wait for, cancel, explain and read the log of jobs."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fleet.api.auth import UserDep
from fleet.api.context import LEADER, ApiContext, CtxDep
from fleet.api.schemas import INT64_MAX, CancelOut, JobDetail, JobOut, JobPage, WhyOut
from fleet.api.submit import submit_many
from fleet.logstore import COLLECTED
from fleet.models.enums import JobKind, JobState
from fleet.models.tables import Job
from fleet.scheduler.hooks import hook_log_id
from fleet.store import JOB_SORTS

router = APIRouter(tags=["jobs"])

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", pattern=r"^[A-Za-z0-9._:-]{8,128}$",
    description="makes a retried submission return the first one's jobs (per user, kept a day)")]


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


_STATE = "(" + "|".join(_any_case(s) for s in JobState.__members__) + ")"
# One or more job states, any case, comma-separated (what GET /jobs?state= accepts).
STATES_RE = rf"^\s*{_STATE}(\s*,\s*{_STATE})*\s*$"


class BatchIn(BaseModel):
    jobs: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)


def _detail(ctx: ApiContext, job: Job) -> JobDetail:
    store = ctx.store
    prices = {h.name: h.cost for h in ctx.scheduler.book.hosts.values() if h.elastic and h.cost}
    return JobDetail.build(job, store.attempts(job.id), store.result_for(job.id),
                           store.chain_jobs(job.chain) if job.chain else None,
                           store.list_artifacts(None, job_id=job.id, limit=100), prices)


@router.post("/jobs", status_code=201, responses={422: {"description": "invalid spec"}})
async def submit(body: dict[str, Any], user: UserDep, ctx: CtxDep, key: IdempotencyKey = None) -> JobOut:
    """Submit a job spec (inputs already uploaded as blobs). Send an ``Idempotency-Key``
    and retry with it after a lost answer: the job is made once."""
    ctx.disk.check_writable()
    return (await submit_many(ctx, [body], user, key))[0]


@router.post("/jobs/batch", status_code=201, responses={422: {"description": "invalid spec"}})
async def submit_batch(body: BatchIn, user: UserDep, ctx: CtxDep, key: IdempotencyKey = None) -> list[JobOut]:
    """Submit several specs at once: all are accepted or none (errors name ``jobs[i]``).
    With an ``Idempotency-Key``, a retry returns the jobs the first request made."""
    ctx.disk.check_writable()
    return await submit_many(ctx, body.jobs, user, key)


JobSort = Literal["created", "-created", "name", "-name", "state", "-state", "user", "-user", "host", "-host",
                  "priority", "-priority", "pool", "-pool", "kind", "-kind"]
assert {s.lstrip("-") for s in JobSort.__args__} == set(JOB_SORTS)  # type: ignore[attr-defined]


@router.get("/jobs")
def list_jobs(
    user: UserDep,
    ctx: CtxDep,
    state: Annotated[list[Annotated[str, Query(pattern=STATES_RE)]] | None,
                     Query(description="job states, any case, e.g. RUNNING or running,pending: "
                                       + ", ".join(JobState))] = None,
    pool: str | None = None,
    owner: Annotated[str | None, Query(alias="user")] = None,
    kind: JobKind | None = None,
    matrix: Annotated[str | None, Query(max_length=64, description="only the jobs of this matrix run")] = None,
    q: Annotated[str | None, Query(max_length=200, description="a part of the name, user or host, "
                                                               "or the start of the id (any case)")] = None,
    sort: Annotated[JobSort, Query(description="order: created (default -created, newest first), "
                                               "name, state, user, host, priority, pool or kind; "
                                               "- for descending; ties by id, newest first when descending")] = "-created",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="skip this many (random access "
                                                                  "for views that scroll)")] = 0,
    before: Annotated[str | None, Query(description="ids below this one (the next page of the "
                                                    "default order; see next)")] = None,
    total: Annotated[bool, Query(description="also count every job that matches")] = False,
) -> JobPage:
    """Jobs, newest first. Non-admins see only their own."""
    states = []
    for value in state or []:
        for part in value.split(","):
            part = part.strip().upper()
            if part not in JobState.__members__:
                raise HTTPException(422, f"state: unknown state {part!r} (one of {', '.join(JobState)})")
            states.append(part)
    filters: dict[str, Any] = dict(owner=None if user.is_admin else user.name, states=states, pool=pool,
                                   user=owner, kind=kind.value if kind else None, matrix_run=matrix, search=q)
    rows = ctx.store.list_jobs(**filters, limit=limit + 1, before=before, sort=sort, offset=offset)
    more = len(rows) > limit
    rows = rows[:limit]
    return JobPage(items=[JobOut.of(j) for j in rows],
                   next=rows[-1].id if more and sort == "-created" else None,
                   total=ctx.store.count_jobs(**filters) if total else None)


@router.get("/jobs/{job_id}")
def get_job(job_id: str, user: UserDep, ctx: CtxDep) -> JobDetail:
    return _detail(ctx, ctx.visible_job(job_id, user))


@router.get("/jobs/{job_id}/wait")
async def wait_job(
    job_id: str, user: UserDep, ctx: CtxDep, timeout: Annotated[float, Query(gt=0, le=300)] = 30.0
) -> JobDetail:
    """Return the job once it is terminal, or after ``timeout`` seconds (check ``state``)."""
    job = await run_in_threadpool(ctx.visible_job, job_id, user)
    if ctx.scheduler.leading or ctx.events is None:
        await ctx.scheduler.wait_done(job.id, timeout)
    else:  # a follower learns of the end from the event table
        await ctx.events.wait_until(lambda: JobState(ctx.store.get_job(job.id).state).terminal, timeout)
    return await run_in_threadpool(lambda: _detail(ctx, ctx.store.get_job(job.id)))


@router.post("/jobs/{job_id}/cancel", dependencies=LEADER)
async def cancel_job(job_id: str, user: UserDep, ctx: CtxDep) -> CancelOut:
    job = await run_in_threadpool(ctx.visible_job, job_id, user)
    if JobState(job.state).terminal:
        return CancelOut(id=job.id, state=job.state)
    return CancelOut(id=job.id, state=await ctx.scheduler.cancel(job.id))


@router.get("/jobs/{job_id}/why", dependencies=LEADER)
async def why_job(job_id: str, user: UserDep, ctx: CtxDep) -> WhyOut:
    job = await run_in_threadpool(ctx.visible_job, job_id, user)
    return WhyOut.model_validate(dataclasses.asdict(ctx.scheduler.why(job.id)))


@router.get("/jobs/{job_id}/logs", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def logs(
    job_id: str,
    user: UserDep,
    ctx: CtxDep,
    attempt: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    follow: bool = False,
) -> StreamingResponse:
    """The job's log (the latest attempt, or ``attempt`` N). With ``follow``, streams until
    the job ends, moving on to the next attempt when it is retried."""
    job = ctx.visible_job(job_id, user)
    return StreamingResponse(_log_stream(ctx, job.id, attempt, offset, follow),
                             media_type="application/octet-stream")


async def _log_stream(
    ctx: ApiContext, job_id: str, number: int | None, offset: int, follow: bool
) -> AsyncIterator[bytes]:
    store, logs = ctx.store, ctx.scheduler.logs
    while True:
        attempts = store.attempts(job_id)
        if number is not None:
            attempts = [a for a in attempts if a.number == number]
        if not attempts:
            job = store.get_job(job_id)
            if not follow or JobState(job.state).terminal:
                return
            await ctx.scheduler.wait_done(job_id, 0.2)
            continue
        current = attempts[-1]
        if current.ended_at is not None and current.log_bytes and not logs.exists(job_id, current.id):
            yield COLLECTED
            if not follow or number is not None:
                return
        before, before_offset = hook_log_id(current.id, "before"), 0
        while True:
            if offset == 0:  # before the job prints: what its before hook did
                data, before_offset = logs.read(job_id, before, before_offset)
                if data:
                    yield data
                    continue
            data, offset = logs.read(job_id, current.id, offset)
            if data:
                yield data
                continue
            if not follow:
                break
            fresh = store.get_attempt(current.id)
            if fresh is None or fresh.ended_at is not None:
                while True:
                    data, offset = logs.read(job_id, current.id, offset)
                    if not data:
                        break
                    yield data
                break
            await logs.wait(current.id, 1.0 if ctx.scheduler.leading else 0.25)  # followers poll
        after_offset = 0
        while True:  # what its after hook did
            data, after_offset = logs.read(job_id, hook_log_id(current.id, "after"), after_offset)
            if not data:
                break
            yield data
        if not follow:
            return
        if number is not None:
            return
        # The attempt ended: stop if the job is done, else follow its next attempt.
        job = store.get_job(job_id)
        while not JobState(job.state).terminal and job.current_attempt == current.id:
            await ctx.scheduler.wait_done(job_id, 0.2)
            job = store.get_job(job_id)
        if JobState(job.state).terminal and job.current_attempt == current.id:
            return
        offset = 0
        await asyncio.sleep(0)
