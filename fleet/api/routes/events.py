"""``GET /events``: the event stream (fleet.events), one router of the API."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import StreamingResponse

from fleet.api.auth import UserDep
from fleet.api.context import CtxDep
from fleet.api.schemas import INT64_MAX
from fleet.events import EVENT_TYPES

router = APIRouter(tags=["events"])

_DESCRIPTION = (
    "Server-Sent Events: `job.state`, `attempt.started`, `attempt.running`, `attempt.ended`, "
    "`host.health`, `host.drain`, `queue.depth`; each numbered (`id:`), the first frame of a "
    "stream is `ready` (the id it starts after). A user sees events of their own jobs and of "
    "the lab (hosts, queues); an admin sees all. Resume with `Last-Event-ID` or `after`.")


EventType = Literal["job.state", "attempt.started", "attempt.running", "attempt.ended", "host.health",
                    "host.drain", "queue.depth"]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


@router.get("/events", response_class=StreamingResponse, description=_DESCRIPTION,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(
    user: UserDep,
    ctx: CtxDep,
    after: Annotated[int | None, Query(ge=0, le=INT64_MAX, description="start after this event id")] = None,
    job: Annotated[list[str], Query(max_length=1000, description="only these jobs' events")] = [],  # noqa: B006
    type: Annotated[list[EventType], Query(description="only these event types")] = [],  # noqa: B006
    timeout: Annotated[float | None, Query(gt=0, le=86400, description="end the stream after "
                                                                      "this many seconds")] = None,
    last_event_id: Annotated[str, Header(alias="Last-Event-ID", pattern=r"^[0-9]{1,18}$",
                                         description="resume after this event id")] = "",
) -> StreamingResponse:
    hub = ctx.events
    if hub is None:
        raise HTTPException(503, "this server has no event stream")
    if after is None and last_event_id:
        after = int(last_event_id)
    name = user.name

    def visible(owner: str | None) -> bool:
        return user.is_admin or owner is None or owner == name

    return StreamingResponse(hub.stream(after, visible, job, type, timeout), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
