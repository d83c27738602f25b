"""Who is calling: the bearer token on every route but ``/health`` (DESIGN.md §5.9, §7)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fleet.models.tables import User

_bearer = HTTPBearer(auto_error=False)


async def current_user(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The caller, from the bearer token. 401 without a valid one. The lookup (one indexed
    read; a write at most once a minute per token) runs on the event loop: handed to the thread
    pool it cost 10-15% of bench/dispatch.py's throughput in thread handoffs."""
    if creds is None or not creds.credentials:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    user: User | None = request.app.state.ctx.user_for(creds.credentials)
    if user is None:
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    return user


UserDep = Annotated[User, Depends(current_user)]


async def admin_only(user: UserDep) -> User:
    if not user.is_admin:
        raise HTTPException(403, "admin only")
    return user


AdminDep = Annotated[User, Depends(admin_only)]
