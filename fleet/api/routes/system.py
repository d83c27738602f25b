"""``/health`` (no token), ``/whoami`` and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fleet import __version__
from fleet.api.auth import UserDep
from fleet.api.context import CtxDep
from fleet.api.schemas import UserOut

router = APIRouter()


@router.get("/health", tags=["server"])
async def health(ctx: CtxDep) -> dict[str, Any]:
    """Answered on the event loop: a liveness check does not wait for a thread of the pool
    (busy with database calls when the controller is), nor, on a follower, for the database:
    the leader is the one in the lease row its keeper read last, however long ago (the keeper
    reads it each second; a database that keeps it waiting must not stop liveness answers)."""
    leading = ctx.scheduler.leading
    return {"ok": True, "version": __version__, "pid": os.getpid(),
            "role": "leader" if leading else "follower",
            "leader": None if leading else await ctx.leader_url(within=None)}


@router.get("/whoami", tags=["users"])
def whoami(user: UserDep) -> UserOut:
    return UserOut(name=user.name, admin=user.is_admin)


@router.get("/metrics", tags=["server"], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(ctx: CtxDep, _user: UserDep) -> Response:
    """What this controller counted and what it sees now (fleet.metrics), for any user's token:
    totals per queue and device class only, nobody's jobs by name. Runs in the thread pool
    (it reads the database)."""
    body = ctx.scheduler.metrics.scrape() + generate_latest(ctx.state_metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
