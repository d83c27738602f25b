"""``/artifacts``: files jobs made, kept by content."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse

from fleet.api.auth import UserDep
from fleet.api.context import CtxDep
from fleet.api.schemas import ArtifactOut, ArtifactPage, ErrorOut
from fleet.errors import NotFound

router = APIRouter(tags=["artifacts"])

ArtifactId = Annotated[str, Path(max_length=64)]


@router.get("/artifacts")
def artifacts(
    user: UserDep,
    ctx: CtxDep,
    job: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    key: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[str | None, Query(max_length=64)] = None,
) -> ArtifactPage:
    job_id = ctx.visible_job(job, user).id if job else None
    rows = ctx.store.list_artifacts(None if user.is_admin else user.name, job_id=job_id,
                                    kind=kind, key=key, limit=limit + 1, before=before)
    items = [ArtifactOut.of(a) for a in rows[:limit]]
    return ArtifactPage(items=items, next=items[-1].id if len(rows) > limit else None)


@router.get("/artifacts/{artifact_id}")
def artifact(artifact_id: ArtifactId, user: UserDep, ctx: CtxDep) -> ArtifactOut:
    return ArtifactOut.of(ctx.visible_artifact(artifact_id, user))


@router.get("/artifacts/{artifact_id}/content", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorOut}})
def artifact_content(artifact_id: ArtifactId, user: UserDep, ctx: CtxDep) -> FileResponse:
    art = ctx.visible_artifact(artifact_id, user)
    path = ctx.blobs.path(art.sha256)
    if not path.is_file():
        raise NotFound(f"artifact {artifact_id}: its content ({art.sha256[:12]}) is gone from the store")
    return FileResponse(path, media_type="application/octet-stream", filename=art.name)


@router.delete("/artifacts/{artifact_id}")
def artifact_delete(artifact_id: ArtifactId, user: UserDep, ctx: CtxDep) -> ArtifactOut:
    art = ctx.visible_artifact(artifact_id, user)
    for sha in ctx.store.delete_artifacts([art.id]):
        if not ctx.store.blob_in_use(sha):  # an unfinished job may still have it as input
            ctx.blobs.path(sha).unlink(missing_ok=True)
    return ArtifactOut.of(art)
