"""``/matrix``: run a benchmark matrix (its points become ordinary jobs), follow its progress,
and read its report (JSON or JUnit XML)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from fleet.api.auth import UserDep
from fleet.api.context import LEADER, ApiContext, CtxDep
from fleet.api.schemas import iso
from fleet.api.submit import validate_jobs
from fleet.errors import SpecError
from fleet.ids import new_id
from fleet.matrix import evaluate, junit, progress
from fleet.models.matrix import expand, point_label, point_specs, validate_matrix
from fleet.models.tables import MatrixRun, User

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


def _refresh(ctx: ApiContext, run: MatrixRun) -> tuple[MatrixRun, dict[str, Any]]:
    """The run with its progress; a run all of whose jobs ended becomes DONE."""
    prog = progress(run, ctx.store.matrix_jobs(run.id))
    if run.state == "RUNNING" and prog["finished"]:
        ctx.store.end_matrix_run(run.id, "DONE")
        run = ctx.store.get_matrix_run(run.id)
    return run, prog


def _prepare(ctx: ApiContext, body: MatrixRunIn, user: User) -> tuple[MatrixRun, Any]:
    """Check the matrix and every job it becomes (blocking; a worker thread)."""
    spec = validate_matrix(body.matrix, body.source)
    points = expand(spec)
    bodies: list[dict[str, Any]] = []
    samples: list[tuple[int, int | None]] = []
    where: list[str] = []
    for i, point in enumerate(points):
        try:
            made = point_specs(spec, point, i, body.uploads)
        except SpecError as exc:
            raise SpecError([(f"points[{i}] ({point_label(point)}).{f}", m) for f, m in exc.errors],
                            body.source) from None
        for job_body, repeats in made:
            bodies.append(job_body)
            where.append(f"points[{i}] ({point_label(point)})")
            samples.extend((i, r) for r in repeats)
    try:
        checked = validate_jobs(ctx, bodies, user, None)
    except SpecError as exc:
        errors = []
        for field, problem in exc.errors:
            head, _, rest = field.partition(".")
            if head.startswith("jobs[") and head.endswith("]"):
                field = where[int(head[5:-1])] + (f".{rest}" if rest else "")
            elif len(bodies) == 1:
                field = where[0] + (f".{field}" if field else "")
            if (field, problem) not in errors:  # N repeats of a point say it once
                errors.append((field, problem))
        raise SpecError(errors, body.source) from None
    assert not isinstance(checked, list)
    now = time.time()
    run = MatrixRun(id=new_id("m"), name=spec.name, user=user.name,
                    spec_json=json.dumps(spec.model_dump(mode="json")), points_json=json.dumps(points),
                    trigger="manual", state="RUNNING", created_at=now,
                    deadline=now + spec.budget if spec.budget else None)
    return run, (checked, samples)


@router.post("/matrix/runs", status_code=201, dependencies=LEADER,
             responses={422: {"description": "invalid matrix (the field is named)"}})
async def run_matrix(body: MatrixRunIn, user: UserDep, ctx: CtxDep) -> MatrixRunOut:
    run, ((accepted, links), samples) = await asyncio.to_thread(_prepare, ctx, body, user)
    jobs = ctx.store.create_jobs(accepted, user.name, links, run=run, samples=samples)
    for job, (spec, _key) in zip(jobs, accepted, strict=True):
        ctx.scheduler.submit(job, spec)
    return _out(run, progress(run, jobs))


def _visible(ctx: ApiContext, run_id: str, user: User) -> MatrixRun:
    return ctx.store.get_matrix_run(run_id, None if user.is_admin else user.name)


@router.get("/matrix/runs")
def list_runs(user: UserDep, ctx: CtxDep, name: Annotated[str | None, Query(max_length=128)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[MatrixRunOut]:
    runs = ctx.store.list_matrix_runs(None if user.is_admin else user.name, name, limit)
    return [_out(*_refresh(ctx, r)) for r in runs]


@router.get("/matrix/runs/{run_id}")
def get_run(run_id: str, user: UserDep, ctx: CtxDep) -> MatrixRunDetail:
    run, prog = _refresh(ctx, _visible(ctx, run_id, user))
    return MatrixRunDetail(**_out(run, prog).model_dump(), points=prog["points"])


@router.get("/matrix/runs/{run_id}/report", responses={200: {"content": {
    "application/json": {}, "application/xml": {}}}})
def report(run_id: str, user: UserDep, ctx: CtxDep,
           format: Literal["json", "junit"] = "json") -> Response:
    run, _prog = _refresh(ctx, _visible(ctx, run_id, user))
    data = evaluate(ctx.store, run)
    if format == "junit":
        return Response(junit(data), media_type="application/xml")
    return Response(json.dumps(data), media_type="application/json")
