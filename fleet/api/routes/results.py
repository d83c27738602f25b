"""``/results``: result records of jobs, and results imported from a tool's output."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from fleet.api.auth import UserDep
from fleet.api.context import CtxDep
from fleet.api.schemas import (
    INT64_MAX,
    ErrorOut,
    ResultImportIn,
    ResultOut,
    ResultPage,
    SeriesOut,
    SeriesPoint,
    iso,
)
from fleet.ids import new_id
from fleet.results import InvalidResult, imported_record

router = APIRouter(tags=["results"])


@router.get("/results")
def results(
    user: UserDep,
    ctx: CtxDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
) -> ResultPage:
    rows = ctx.store.list_results(None if user.is_admin else user.name, limit + 1, before)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        ResultOut(id=r.id or 0, job_id=r.job_id, attempt_id=r.attempt_id, user=r.user,
                  runner=r.runner, host=r.host, device_class=r.device_class,
                  created_at=iso(r.created_at), record=json.loads(r.record_json))
        for r in rows
    ]
    return ResultPage(items=items, next=items[-1].id if more else None)


# Metrics a series is drawn by, best first (the first one a record has).
_MAIN_METRICS = ("latency_ms", "latency_mean_ms", "latency", "throughput_fps", "throughput", "fps")


@router.get("/series")
def series(
    user: UserDep,
    ctx: CtxDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    points: Annotated[int, Query(ge=2, le=200)] = 30,
) -> list[SeriesOut]:
    """The most recently extended series (results of one comparison key), each with its main
    metric's latest values, from the latest 500 keyed results the caller may see."""
    from fleet.matrix import metric_values

    owner = None if user.is_admin else user.name
    rows = ctx.store.matrix.recent_results(owner)
    regressed = ctx.store.matrix.regressed_points(owner, sorted({run for _, run, _ in rows if run}))
    by_key: dict[str, list[tuple[Any, dict[str, Any], bool]]] = {}
    for r, run, point in rows:
        group = by_key.setdefault(r.comparison_key or "", [])
        if len(group) < points:
            group.append((r, json.loads(r.record_json), (run, point) in regressed))
    out = []
    for key, group in list(by_key.items())[:limit]:
        first, record, _ = group[0]
        values = metric_values(record)
        metric = next((m for m in _MAIN_METRICS if m in values), next(iter(sorted(values)), None))
        if metric is None:
            continue
        stats = (record.get("metrics") or {}).get(metric)
        unit = stats.get("unit") if isinstance(stats, dict) else None
        model = (record.get("model") or {}).get("name") if isinstance(record.get("model"), dict) else None
        label = " ".join(str(x) for x in (model or first.model_sha256 and first.model_sha256[:12] or "?",
                                          first.device_class, first.runner, first.precision or "",
                                          f"b{first.batch}" if first.batch else "") if x)
        pts = []
        for r, rec, _ in reversed(group):
            v = metric_values(rec).get(metric)
            if v is not None:
                pts.append(SeriesPoint(result=r.id or 0, job_id=r.job_id, created_ts=r.created_at, value=v[0],
                                       valid=r.status == "ok" and not rec.get("invalid_reasons")))
        out.append(SeriesOut(key=key, label=label, device_class=first.device_class, metric=metric,
                             unit=unit if isinstance(unit, str) else None, points=pts,
                             regression=group[0][2]))
    return out


@router.post("/results/import", status_code=201,
             responses={422: {"model": ErrorOut, "description": "nothing of that format in the text"}})
def results_import(body: ResultImportIn, user: UserDep, ctx: CtxDep) -> ResultOut:
    from fleet_runners.devtools import importers  # parsers shared with the runners

    try:
        partial = importers.parse_file(body.format, body.text)
    except ValueError as exc:
        raise HTTPException(422, f"cannot import {body.source or 'the text'}: {exc}") from None
    result_id = new_id("imp")
    host, device_class = body.host or "manual", body.device_class or "unknown"
    try:
        record = imported_record(partial, fmt=body.format, result_id=result_id, host=host,
                                 device_class=device_class, name=body.name, source=body.source)
    except InvalidResult as exc:
        raise HTTPException(422, f"cannot import {body.source or 'the text'}: {exc}") from None
    row = ctx.store.import_result(result_id, user.name, f"import:{body.format}", host, device_class, record)
    return ResultOut(id=row.id or 0, job_id=row.job_id, attempt_id=row.attempt_id, user=row.user,
                     runner=row.runner, host=row.host, device_class=row.device_class,
                     created_at=iso(row.created_at), record=record)
