"""``/health`` (no token) and ``/whoami``."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter

from fleet import __version__
from fleet.api.auth import UserDep
from fleet.api.context import CtxDep
from fleet.api.schemas import UserOut

router = APIRouter()


@router.get("/health", tags=["server"])
def health(ctx: CtxDep) -> dict[str, Any]:
    leading = ctx.scheduler.leading
    return {"ok": True, "version": __version__, "pid": os.getpid(),
            "role": "leader" if leading else "follower",
            "leader": None if leading else ctx.leader_url()}


@router.get("/whoami", tags=["users"])
def whoami(user: UserDep) -> UserOut:
    return UserOut(name=user.name, admin=user.is_admin)
