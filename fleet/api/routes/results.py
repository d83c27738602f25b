"""``/results``: result records of jobs, and results imported from a tool's output."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from fleet.api.auth import UserDep
from fleet.api.context import CtxDep
from fleet.api.schemas import INT64_MAX, ErrorOut, ResultImportIn, ResultOut, ResultPage, iso
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
