"""``/users`` and ``/tokens``: who may call the API (DESIGN.md §5.9, §7)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from fleet.api.auth import AdminDep, UserDep
from fleet.api.context import ApiContext, CtxDep
from fleet.api.schemas import INT64_MAX, MAX_TOKEN_SECONDS, TokenIn, TokenInfo, TokenOut, UserIn, UserOut, iso
from fleet.errors import NotFound
from fleet.models.spec import parse_duration
from fleet.models.tables import User

router = APIRouter(tags=["users"])


def _issue(ctx: ApiContext, target: User, name: str, expires: str | float | None) -> TokenOut:
    expires_at = None
    if expires is not None:
        try:
            seconds = parse_duration(expires)
        except ValueError as exc:
            raise HTTPException(422, f"expires: {exc}") from None
        if seconds > MAX_TOKEN_SECONDS:
            raise HTTPException(422, "expires: at most a hundred years")
        expires_at = time.time() + seconds
    token, row = ctx.store.issue_token(target, name, expires_at)
    return TokenOut(user=target.name, token=token, id=row.id, name=row.name, expires_at=iso(expires_at))


@router.get("/users")
def users(_admin: AdminDep, ctx: CtxDep) -> list[UserOut]:
    return [UserOut(name=u.name, admin=u.is_admin) for u in ctx.store.list_users()]


@router.post("/users", status_code=201)
def add_user(body: UserIn, _admin: AdminDep, ctx: CtxDep) -> TokenOut:
    """Create a user and a first token for them (shown once)."""
    if ctx.store.get_user(body.name) is not None:
        raise HTTPException(409, f"user {body.name} already exists")
    user = ctx.store.create_user(body.name, body.admin)
    return _issue(ctx, user, "default", None)


@router.post("/tokens", status_code=201)
def add_token(body: TokenIn, user: UserDep, ctx: CtxDep) -> TokenOut:
    """A new token for yourself, or (admins) for another user; ``expires``: how long it
    lasts (``30d``, ``12h``, seconds)."""
    target = user
    if body.user and body.user != user.name:
        if not user.is_admin:
            raise HTTPException(403, "only admins create tokens for other users")
        found = ctx.store.get_user(body.user)
        if found is None:
            raise NotFound(f"no user {body.user}")
        target = found
    return _issue(ctx, target, body.name, body.expires)


@router.get("/tokens")
def tokens(user: UserDep, ctx: CtxDep, owner: Annotated[str | None, Query(alias="user", max_length=64)] = None,
           everyone: Annotated[bool, Query(alias="all")] = False) -> list[TokenInfo]:
    """Your tokens (never their values), with when each was last used; admins may ask for
    one user's (``user``) or everyone's (``all``)."""
    if (owner and owner != user.name or everyone) and not user.is_admin:
        raise HTTPException(403, "only admins list other users' tokens")
    rows = ctx.store.list_tokens(None if everyone else (owner or user.name))
    now = time.time()
    return [TokenInfo.of(t, name, now) for t, name in rows]


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: Annotated[int, Path(ge=0, le=INT64_MAX)], user: UserDep, ctx: CtxDep) -> TokenInfo:
    """Revoke a token: it stops working at once, on every replica. Yours, or (admins) any."""
    found = ctx.store.revoke_token(token_id, None if user.is_admin else user.name)
    if found is None:
        raise NotFound(f"no token {token_id}")
    return TokenInfo.of(found[0], found[1], time.time())
