"""What the API's routes share: the controller's parts (``ApiContext``), the dependencies that
hand them out, and forwarding to the leader on a follower (a dependency of the routes only the
scheduler can answer)."""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Annotated, Any

import httpx
from fastapi import Depends, HTTPException, Request, Response
from prometheus_client import CollectorRegistry

from fleet.api.middleware import Limits
from fleet.blobs import BlobStore
from fleet.disk import DiskGuard
from fleet.errors import NotFound
from fleet.events import EventHub
from fleet.leader import LeaderLease, LeaseInfo
from fleet.metrics import StateCollector
from fleet.models.tables import Artifact, Job, User
from fleet.scheduler.loop import Scheduler
from fleet.store import Store

LEASE_SEEN_FRESH = 3.0  # seconds: a lease row read this recently is the leader's (leader_url)


class ApiContext:
    """What the routes need: the store, the scheduler, the log store and the blob dir."""

    def __init__(
        self, store: Store, scheduler: Scheduler, blobs: BlobStore, lease: LeaderLease | None = None,
        limits: Limits | None = None, disk: DiskGuard | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.blobs = blobs
        self.lease = lease
        self.limits = limits or Limits()
        self.disk = disk or DiskGuard(blobs.root.parent, 0)
        # For `fleet ssh-config`: the known_hosts files and TOFU setting fleet itself uses.
        self.ssh_known_hosts: list[pathlib.Path] = [pathlib.Path("~/.ssh/known_hosts").expanduser()]
        self.trust_on_first_use = False
        self._leader_http: httpx.AsyncClient | None = None
        self._lease_read: asyncio.Future[LeaseInfo | None] | None = None  # leader_url's read
        self.events: EventHub | None = None  # GET /events (fleet.events); set by the controller
        # Matrix webhooks to loopback/private/link-local addresses (config webhook_allow_private):
        # off, so a user's webhook cannot make the controller call inside its own network.
        self.webhook_allow_private = False
        # GET /metrics: what is, read at scrape time (the scheduler counts what happened).
        self.state_metrics = CollectorRegistry(auto_describe=False)
        self.state_metrics.register(StateCollector(self))

    async def leader_url(self, within: float | None = LEASE_SEEN_FRESH) -> str | None:
        """The API URL of the current leader (None if this replica leads or nobody does), from
        the lease row as this replica's keeper last read it (each second on a follower) if that
        was at most ``within`` seconds ago (None: however long ago, and no one if it was never
        read). Else it is read again, in a thread, once for all who ask meanwhile: never a
        database call on the event loop."""
        if self.lease is None or self.lease.held:
            return None
        fresh, info = self.lease.seen(within)
        if not fresh and within is None:
            return None  # never read yet (the database was away since this replica started)
        if not fresh:
            if self._lease_read is None or self._lease_read.done():
                self._lease_read = asyncio.ensure_future(asyncio.to_thread(self.lease.current))
            info = await asyncio.shield(self._lease_read)
        if info is None or info.holder == self.lease.holder or info.expires_at < time.time():
            return None
        return info.url

    async def forward(self, request: Request) -> Response:
        """On a follower: hand a scheduler request (why, cancel, hosts...) to the leader."""
        url = await self.leader_url()
        if url is None:
            raise HTTPException(503, "no scheduler leader right now (a replica is taking over); "
                                     "retry in a few seconds")
        if self._leader_http is None:
            self._leader_http = httpx.AsyncClient(timeout=httpx.Timeout(330.0, connect=5.0))
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "accept")}
        try:
            resp = await self._leader_http.request(
                request.method, url + request.url.path, params=request.query_params,
                content=await request.body(), headers=headers)
        except httpx.HTTPError as exc:
            raise HTTPException(503, f"the scheduler leader at {url} does not answer ({exc}); "
                                     "retry in a few seconds") from None
        return Response(resp.content, resp.status_code, media_type=resp.headers.get("content-type"))

    def user_for(self, token: str) -> User | None:
        """The caller of a token, read from the database on each request (no cache): a revoked
        or expired token stops working at once, on every replica."""
        return self.store.user_for_token(token)

    # ------------------------------------------------------------------ what a user may see

    def visible_job(self, job_id: str, user: User) -> Job:
        """A job (by id or prefix) if ``user`` may see it; else NotFound, as if there were none."""
        job = self.store.get_job(job_id, owner=None if user.is_admin else user.name)
        if not user.is_admin and job.user != user.name:
            raise NotFound(f"no job {job_id}")
        return job

    def visible_artifact(self, artifact_id: str, user: User) -> Artifact:
        art = self.store.get_artifact(artifact_id, owner=None if user.is_admin else user.name)
        if not user.is_admin and art.user != user.name:
            raise NotFound(f"no artifact {artifact_id}")
        return art

    def blob_visible(self, user: User, sha256: str) -> bool:
        """A blob is someone's only if they sent it (or own an artifact of it): its hash alone
        is no key to it (DESIGN.md §7)."""
        if not self.blobs.has(sha256):
            return False
        return user.is_admin or self.store.blob_visible(user.name, sha256)


async def get_ctx(request: Request) -> ApiContext:
    """Async although it awaits nothing: FastAPI runs a plain ``def`` dependency in its thread
    pool, a thread hand-off on every request (6% of the server's CPU per submitted job)."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[ApiContext, Depends(get_ctx)]


class Forwarded(Exception):
    """The leader's answer to a request this follower handed on (see ``on_the_leader``)."""

    def __init__(self, response: Response) -> None:
        super().__init__("forwarded to the leader")
        self.response = response


async def on_the_leader(request: Request, ctx: CtxDep) -> None:
    """A dependency of routes only the scheduler can answer (why, cancel, hosts, ...): on a
    follower the request goes to the leader, whose answer is this route's answer."""
    if not ctx.scheduler.leading:
        raise Forwarded(await ctx.forward(request))


LEADER: list[Any] = [Depends(on_the_leader)]
