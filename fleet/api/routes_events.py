"""``GET /events``: the event stream (fleet.events), one router of the API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from fleet.api.auth import UserDep
from fleet.events import EVENT_TYPES

router = APIRouter(tags=["events"])

_DESCRIPTION = (
    "Server-Sent Events: `job.state`, `attempt.started`, `attempt.running`, `attempt.ended`, "
    "`host.health`, `host.drain`, `queue.depth`; each numbered (`id:`), the first frame of a "
    "stream is `ready` (the id it starts after). A user sees events of their own jobs and of "
    "the lab (hosts, queues); an admin sees all. Resume with `Last-Event-ID` or `after`.")


@router.get("/events", response_class=StreamingResponse, description=_DESCRIPTION,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(
    user: UserDep,
    request: Request,
    after: Annotated[int | None, Query(ge=0, description="start after this event id")] = None,
    job: Annotated[list[str], Query(max_length=1000, description="only these jobs' events")] = [],  # noqa: B006
    type: Annotated[list[str], Query(description="only these event types")] = [],  # noqa: B006
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> StreamingResponse:
    hub = request.app.state.ctx.events
    if hub is None:
        raise HTTPException(503, "this server has no event stream")
    unknown = sorted(set(type) - set(EVENT_TYPES))
    if unknown:
        raise HTTPException(422, f"type: unknown event type {unknown[0]!r} "
                                 f"(known: {', '.join(EVENT_TYPES)})")
    if after is None and last_event_id:
        if not last_event_id.strip().isdigit():
            raise HTTPException(422, "Last-Event-ID: expected an event id (a number)")
        after = int(last_event_id)
    name = user.name

    def visible(owner: str | None) -> bool:
        return user.is_admin or owner is None or owner == name

    return StreamingResponse(hub.stream(after, visible, job, type), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
