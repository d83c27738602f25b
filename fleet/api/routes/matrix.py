"""``/matrix``: run a benchmark matrix (its points become ordinary jobs), follow its progress,
and read its report (JSON or JUnit XML)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from fleet.api.auth import UserDep
from fleet.api.context import LEADER, ApiContext, CtxDep
from fleet.api.schemas import iso
from fleet.errors import NotFound, SpecError
from fleet.matrix import TERMINAL, evaluate, judge_run, junit, prepare_run, progress, start_run
from fleet.models.tables import MatrixRun, MatrixSchedule, MatrixVerdict, User

router = APIRouter(tags=["matrix"])


class MatrixRunIn(BaseModel):
    matrix: dict[str, Any] = Field(description="the matrix file's content")
    uploads: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=10_000, description=(
        "input paths of the template, as written after ${{ matrix.* }} was replaced, and the blob "
        "refs the client uploaded them as"))
    source: str | None = Field(None, max_length=4096, description="the file's name, for messages")


class MatrixRunOut(BaseModel):
    id: str
    name: str
    user: str
    state: str
    trigger: str
    created_at: str | None
    ended_at: str | None
    progress: dict[str, int] = Field(description="points done, failed, running, waiting, total")
    jobs: int


class MatrixRunDetail(MatrixRunOut):
    points: list[dict[str, Any]]


def _out(run: MatrixRun, prog: dict[str, Any]) -> MatrixRunOut:
    return MatrixRunOut(id=run.id, name=run.name, user=run.user, state=run.state, trigger=run.trigger,
                        created_at=iso(run.created_at), ended_at=iso(run.ended_at),
                        progress=prog["counts"], jobs=prog["jobs"])


async def _refresh(ctx: ApiContext, run: MatrixRun) -> tuple[MatrixRun, dict[str, Any]]:
    """The run with its progress; a run all of whose jobs ended is judged now (once)."""
    prog = progress(run, await asyncio.to_thread(ctx.store.matrix.jobs, run.id))
    if run.state == "RUNNING" and prog["finished"]:
        await judge_run(ctx, run)
        run = await asyncio.to_thread(ctx.store.matrix.get_run, run.id)
    return run, prog


@router.post("/matrix/runs", status_code=201, dependencies=LEADER,
             responses={422: {"description": "invalid matrix (the field is named)"}})
async def run_matrix(body: MatrixRunIn, user: UserDep, ctx: CtxDep) -> MatrixRunOut:
    run, jobs = await start_run(ctx, body.matrix, body.uploads, body.source, user)
    return _out(run, progress(run, jobs))


def _visible(ctx: ApiContext, run_id: str, user: User) -> MatrixRun:
    return ctx.store.matrix.get_run(run_id, None if user.is_admin else user.name)


@router.get("/matrix/runs")
async def list_runs(user: UserDep, ctx: CtxDep, name: Annotated[str | None, Query(max_length=128)] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[MatrixRunOut]:
    runs = await asyncio.to_thread(ctx.store.matrix.list_runs, None if user.is_admin else user.name,
                                   name, limit)
    return [_out(*(await _refresh(ctx, r))) for r in runs]


@router.get("/matrix/runs/{run_id}")
async def get_run(run_id: str, user: UserDep, ctx: CtxDep) -> MatrixRunDetail:
    run, prog = await _refresh(ctx, await asyncio.to_thread(_visible, ctx, run_id, user))
    return MatrixRunDetail(**_out(run, prog).model_dump(), points=prog["points"])


@router.post("/matrix/runs/{run_id}/cancel", dependencies=LEADER)
async def cancel_run(run_id: str, user: UserDep, ctx: CtxDep) -> MatrixRunOut:
    """Cancel every job of the run that has not ended; the run ends CANCELLED and is not
    judged (its report says what its results were). Idempotent."""
    run = await asyncio.to_thread(_visible, ctx, run_id, user)
    jobs = await asyncio.to_thread(ctx.store.matrix.jobs, run.id)
    if run.state == "RUNNING":
        await asyncio.to_thread(ctx.store.matrix.end_run, run.id, "CANCELLED")
        for job in jobs:
            if job.state not in TERMINAL:
                await ctx.scheduler.cancel(job.id)
        run = await asyncio.to_thread(ctx.store.matrix.get_run, run.id)
    return _out(run, progress(run, await asyncio.to_thread(ctx.store.matrix.jobs, run.id)))


@router.get("/matrix/runs/{run_id}/report", responses={200: {"content": {
    "application/json": {}, "application/xml": {}}}})
async def report(run_id: str, user: UserDep, ctx: CtxDep,
                 format: Literal["json", "junit"] = "json") -> Response:
    run, _prog = await _refresh(ctx, await asyncio.to_thread(_visible, ctx, run_id, user))
    if run.report_json:  # judged when its last job ended: that verdict, not a new one
        data = json.loads(run.report_json)
        if data.get("error"):
            raise HTTPException(409, f"matrix run {run.id}: {data['error']}")
    else:  # still running: what its results say so far
        data = await asyncio.to_thread(evaluate, ctx.store, run)
    if format == "junit":
        return Response(junit(data), media_type="application/xml")
    return Response(json.dumps(data), media_type="application/json")


class ScheduleOut(BaseModel):
    name: str
    user: str
    cron: str
    next: str | None = Field(description="when it runs next (UTC)")
    last_fired: str | None
    last_run: str | None
    last_error: str | None


def _schedule_out(row: MatrixSchedule) -> ScheduleOut:
    from croniter import croniter

    try:
        upcoming: float | None = float(croniter(row.cron, time.time()).get_next(float))
    except Exception:  # noqa: BLE001 - never comes: said as no next time
        upcoming = None
    return ScheduleOut(name=row.name, user=row.user, cron=row.cron, next=iso(upcoming),
                       last_fired=iso(row.last_fired), last_run=row.last_run, last_error=row.last_error)


@router.post("/matrix/schedules", status_code=201,
             responses={422: {"description": "invalid matrix, or one without schedule:"}})
async def schedule_matrix(body: MatrixRunIn, user: UserDep, ctx: CtxDep) -> ScheduleOut:
    """Run this matrix on its ``schedule`` (cron, UTC), on the leader. Every job it makes is
    checked now; the inputs it names stay kept while it is scheduled."""
    from croniter import croniter

    run, _checked, _samples = await asyncio.to_thread(prepare_run, ctx, body.matrix, body.uploads,
                                                      body.source, user, "schedule")
    spec = json.loads(run.spec_json)
    if not spec.get("schedule"):
        raise SpecError([("schedule", "required to schedule a matrix (cron, e.g. '0 2 * * *'); "
                                      "fleet matrix run runs it once now")], body.source)
    now = time.time()
    row = MatrixSchedule(name=run.name, user=user.name, cron=spec["schedule"], spec_json=json.dumps(body.matrix),
                         uploads_json=json.dumps(body.uploads), created_at=now,
                         # from now on: a schedule made today does not run for last night
                         last_fired=float(croniter(spec["schedule"], now).get_prev(float)))
    await asyncio.to_thread(ctx.store.matrix.put_schedule, row)
    return _schedule_out(row)


@router.get("/matrix/schedules")
def list_schedules(user: UserDep, ctx: CtxDep) -> list[ScheduleOut]:
    return [_schedule_out(r) for r in ctx.store.matrix.schedules(None if user.is_admin else user.name)]


@router.delete("/matrix/schedules/{name}")
def unschedule(name: Annotated[str, Path(max_length=128)], user: UserDep, ctx: CtxDep) -> dict[str, str]:
    if not ctx.store.matrix.delete_schedule(name, None if user.is_admin else user.name):
        raise NotFound(f"no matrix schedule named {name!r}")  # (another user's is not seen)
    return {"name": name, "state": "unscheduled"}


class RegressionOut(BaseModel):
    matrix: str
    user: str
    point: dict[str, Any]
    metric: str
    kind: str | None
    before: float | None
    after: float | None
    change_pct: float | None
    ci_pct: list[float] | None
    p_value: float | None
    first_run: str | None = Field(description="the run where it started")
    detected_run: str = Field(description="the run whose verdict found it")
    detected_at: str | None
    changes: list[str] = Field(description="what differs between the last good run and that one")
    reason: str


@router.get("/regressions")
def regressions(user: UserDep, ctx: CtxDep) -> list[RegressionOut]:
    """Open regressions, newest first: the latest reported change of a series' metric is a
    regression (an improvement since closes it)."""
    latest: dict[tuple[str, str, str, str], MatrixVerdict] = {}
    for v in ctx.store.matrix.verdicts(None if user.is_admin else user.name, ["regression", "improvement"]):
        latest.setdefault((v.user, v.name, v.series, v.metric), v)  # newest first
    out = []
    for v in sorted(latest.values(), key=lambda v: v.id or 0, reverse=True):
        if v.status != "regression":
            continue
        d = json.loads(v.data_json)
        out.append(RegressionOut(matrix=v.name, user=v.user, point=d.get("values") or {}, metric=v.metric,
                                 kind=v.kind, before=d.get("before"), after=d.get("after"),
                                 change_pct=v.change_pct, ci_pct=d.get("ci_pct"), p_value=d.get("p_value"),
                                 first_run=v.first_run, detected_run=v.run, detected_at=iso(v.created_at),
                                 changes=d.get("changes") or [], reason=d.get("reason") or ""))
    return out
