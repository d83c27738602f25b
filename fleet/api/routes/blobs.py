"""``/blobs/{sha256}``: uploads by content (inputs, hook playbooks)."""

from __future__ import annotations

import hashlib
import os
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from fleet.api.auth import UserDep
from fleet.api.context import CtxDep
from fleet.models.spec import SHA256_RE

router = APIRouter(tags=["blobs"])

Sha256 = Annotated[str, Path(pattern=SHA256_RE.pattern, description="64 lowercase hex digits")]


def _quota_message(user: str, quota: int, room: int) -> str:
    return (f"upload quota of user {user} is full: {quota - max(room, 0)} of {quota} bytes used "
            "(upload_quota_bytes); uploads no job uses go after upload_retention_days")


@router.head("/blobs/{sha256}")
def blob_exists(sha256: Sha256, user: UserDep, ctx: CtxDep) -> Response:
    """200 if you have this content on the server (then a job of yours may use it), 404
    otherwise, whoever else may have it."""
    if not SHA256_RE.match(sha256):
        raise HTTPException(422, "sha256 must be 64 lowercase hex digits")
    return Response(status_code=200 if ctx.blob_visible(user, sha256) else 404)


@router.put("/blobs/{sha256}", status_code=201, openapi_extra={"requestBody": {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def blob_put(sha256: Sha256, request: Request, user: UserDep, ctx: CtxDep) -> dict[str, Any]:
    """Upload a file by content; the body must hash to ``sha256``. Content someone else
    sent is stored once, and is yours once you have sent it too. Counts against your
    upload quota (``upload_quota_bytes``); one file is at most ``max_upload_bytes``."""
    if not SHA256_RE.match(sha256):
        raise HTTPException(422, "sha256 must be 64 lowercase hex digits")
    path = ctx.blobs.path(sha256)
    if path.is_file() and await run_in_threadpool(ctx.blob_visible, user, sha256):
        return {"sha256": sha256, "size": path.stat().st_size, "existed": True}
    limits = ctx.limits
    room = limits.upload_quota_bytes - await run_in_threadpool(ctx.store.upload_usage, user.name)
    declared = int(request.headers.get("content-length") or 0)
    if declared > limits.max_upload_bytes:
        raise HTTPException(413, f"a file of {declared} bytes is over the limit of "
                                 f"{limits.max_upload_bytes} bytes (max_upload_bytes)")
    if declared > room:
        raise HTTPException(413, _quota_message(user.name, limits.upload_quota_bytes, room))
    ctx.disk.check_writable()
    tmp = ctx.blobs.temp()
    digest, size = hashlib.sha256(), 0
    try:  # the partial file goes on every path out: a bad hash, a limit, a lost client
        with tmp.open("wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_upload_bytes:
                    raise HTTPException(413, f"a file of over {limits.max_upload_bytes} bytes is "
                                             "over the limit (max_upload_bytes)")
                if size > room:
                    raise HTTPException(413, _quota_message(user.name, limits.upload_quota_bytes, room))
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != sha256:
            raise HTTPException(422, f"content hashes to {digest.hexdigest()}, not {sha256}")
        existed = path.is_file()
        if not existed:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    await run_in_threadpool(ctx.store.record_upload, user.name, sha256, size)
    return {"sha256": sha256, "size": size, "existed": existed}
