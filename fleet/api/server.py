"""The HTTP API (FastAPI). Every route but ``/health`` needs a bearer token; a user sees and
cancels only their own jobs, an admin everything. Someone else's job answers 404, not 403,
so job ids do not leak."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError

from fleet import __version__, probe
from fleet.ansible import playbook_path, run_playbook
from fleet.api import routes_events
from fleet.api.auth import AdminDep, UserDep
from fleet.api.middleware import BodyLimit, Limits, ServerTiming
from fleet.api.openapi import document_errors
from fleet.api.schemas import (
    MAX_TOKEN_SECONDS,
    AnsibleIn,
    ArtifactOut,
    ArtifactPage,
    CancelOut,
    ErrorOut,
    HookOut,
    HostCheckOut,
    HostOut,
    JobDetail,
    JobOut,
    JobPage,
    PoolOut,
    ProbeOut,
    ProvisionOut,
    ResultImportIn,
    ResultOut,
    ResultPage,
    TokenIn,
    TokenInfo,
    TokenOut,
    UserIn,
    UserOut,
    WhyOut,
    iso,
)
from fleet.api.submit import submit_many
from fleet.blobs import BlobStore
from fleet.disk import DiskFull, DiskGuard, is_disk_full
from fleet.errors import FleetError, NotFound, SpecError
from fleet.events import EventHub
from fleet.ids import new_id
from fleet.inventory import unix_account
from fleet.leader import LeaderLease
from fleet.logstore import COLLECTED
from fleet.models.enums import Health, JobState
from fleet.models.spec import SHA256_RE, parse_duration
from fleet.models.tables import Job, User
from fleet.results import InvalidResult, imported_record
from fleet.scheduler.hooks import hook_log_id
from fleet.scheduler.loop import Scheduler
from fleet.sshconfig import render as render_ssh_config
from fleet.store import Store

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", pattern=r"^[A-Za-z0-9._:-]{8,128}$",
    description="makes a retried submission return the first one's jobs (per user, kept a day)")]
Sha256 = Annotated[str, Path(pattern=SHA256_RE.pattern, description="64 lowercase hex digits")]


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


_STATE = "(" + "|".join(_any_case(s) for s in JobState.__members__) + ")"
# One or more job states, any case, comma-separated (what GET /jobs?state= accepts).
STATES_RE = rf"^\s*{_STATE}(\s*,\s*{_STATE})*\s*$"


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
        self.events: EventHub | None = None  # GET /events (fleet.events); set by the controller

    def leader_url(self) -> str | None:
        """The API URL of the current leader (None if this replica leads or nobody does)."""
        info = self.lease.current() if self.lease is not None else None
        if info is None or info.holder == self.lease.holder or info.expires_at < time.time():  # type: ignore[union-attr]
            return None
        return info.url

    async def forward(self, request: Request) -> Response:
        """On a follower: hand a scheduler request (why, cancel, hosts...) to the leader."""
        url = self.leader_url()
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


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="fleet",
        version=__version__,
        description="Job runner for edge-device ML labs. Bearer token on every route but /health.",
    )
    app.state.ctx = ctx
    app.include_router(routes_events.router)
    app.add_middleware(BodyLimit, limit=lambda: ctx.limits.max_request_bytes)
    app.add_middleware(ServerTiming)

    def visible_job(job_id: str, user: User) -> Job:
        job = ctx.store.get_job(job_id, owner=None if user.is_admin else user.name)
        if not user.is_admin and job.user != user.name:
            raise NotFound(f"no job {job_id}")
        return job

    # Error bodies echo what the client sent (a field name, an id), which may hold characters
    # UTF-8 cannot encode (lone surrogates from a JSON "\ud800"): escape them, never fail.
    @app.exception_handler(SpecError)
    async def _spec_error(_req: Request, exc: SpecError) -> JSONResponse:
        return JSONResponse(
            {"detail": _safe(str(exc)),
             "errors": [{"field": _safe(f), "problem": _safe(p)} for f, p in exc.errors]},
            status_code=422,
        )

    @app.exception_handler(DiskFull)
    async def _disk_full(_req: Request, exc: DiskFull) -> JSONResponse:
        return JSONResponse({"detail": _safe(str(exc))}, status_code=507)

    @app.exception_handler(OSError)
    async def _os_error(req: Request, exc: OSError) -> JSONResponse:
        if is_disk_full(exc):
            ctx.disk.hit(exc)
            return await _disk_full(req, DiskFull(f"the controller's disk is full ({exc.strerror}); "
                                                  "try again once an admin has made room"))
        raise exc

    @app.exception_handler(OperationalError)
    async def _db_error(req: Request, exc: OperationalError) -> JSONResponse:
        if is_disk_full(exc):
            ctx.disk.hit(exc)
            return await _disk_full(req, DiskFull("the controller's disk is full (the database "
                                                  "cannot grow); try again once an admin has made room"))
        raise exc

    @app.exception_handler(NotFound)
    async def _not_found(_req: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": _safe(str(exc))}, status_code=404)

    @app.exception_handler(FleetError)
    async def _fleet_error(_req: Request, exc: FleetError) -> JSONResponse:
        return JSONResponse({"detail": _safe(str(exc))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _safe(".".join(str(p) for p in e["loc"] if p != "body") or "body"),
             "problem": _safe(_problem(e))}
            for e in exc.errors()
        ]
        text = "; ".join(f"{e['field']}: {e['problem']}" for e in errors)
        return JSONResponse({"detail": f"invalid request: {text}", "errors": errors}, status_code=422)

    # ------------------------------------------------------------------ health, identity

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        leading = ctx.scheduler.leading
        return {"ok": True, "version": __version__, "pid": os.getpid(),
                "role": "leader" if leading else "follower",
                "leader": None if leading else ctx.leader_url()}

    @app.get("/whoami", tags=["users"])
    async def whoami(user: UserDep) -> UserOut:
        return UserOut(name=user.name, admin=user.is_admin)

    # ------------------------------------------------------------------ blobs

    def blob_visible(user: User, sha256: str) -> bool:
        """A blob is someone's only if they sent it (or own an artifact of it): its hash alone
        is no key to it (DESIGN.md §7)."""
        if not ctx.blobs.has(sha256):
            return False
        return user.is_admin or ctx.store.blob_visible(user.name, sha256)

    @app.head("/blobs/{sha256}", tags=["blobs"])
    async def blob_exists(sha256: Sha256, user: UserDep) -> Response:
        """200 if you have this content on the server (then a job of yours may use it), 404
        otherwise, whoever else may have it."""
        if not SHA256_RE.match(sha256):
            raise HTTPException(422, "sha256 must be 64 lowercase hex digits")
        return Response(status_code=200 if blob_visible(user, sha256) else 404)

    @app.put("/blobs/{sha256}", tags=["blobs"], status_code=201, openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def blob_put(sha256: Sha256, request: Request, user: UserDep) -> dict[str, Any]:
        """Upload a file by content; the body must hash to ``sha256``. Content someone else
        sent is stored once, and is yours once you have sent it too. Counts against your
        upload quota (``upload_quota_bytes``); one file is at most ``max_upload_bytes``."""
        if not SHA256_RE.match(sha256):
            raise HTTPException(422, "sha256 must be 64 lowercase hex digits")
        path = ctx.blobs.path(sha256)
        if path.is_file() and blob_visible(user, sha256):
            return {"sha256": sha256, "size": path.stat().st_size, "existed": True}
        limits = ctx.limits
        room = limits.upload_quota_bytes - ctx.store.upload_usage(user.name)
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
        ctx.store.record_upload(user.name, sha256, size)
        return {"sha256": sha256, "size": size, "existed": existed}

    # ------------------------------------------------------------------ jobs

    @app.post("/jobs", tags=["jobs"], status_code=201, responses={422: {"description": "invalid spec"}})
    async def submit(body: dict[str, Any], user: UserDep, key: IdempotencyKey = None) -> JobOut:
        """Submit a job spec (inputs already uploaded as blobs). Send an ``Idempotency-Key``
        and retry with it after a lost answer: the job is made once."""
        ctx.disk.check_writable()
        return (await submit_many(ctx, [body], user, key))[0]

    @app.post("/jobs/batch", tags=["jobs"], status_code=201, responses={422: {"description": "invalid spec"}})
    async def submit_batch(body: BatchIn, user: UserDep, key: IdempotencyKey = None) -> list[JobOut]:
        """Submit several specs at once: all are accepted or none (errors name ``jobs[i]``).
        With an ``Idempotency-Key``, a retry returns the jobs the first request made."""
        ctx.disk.check_writable()
        return await submit_many(ctx, body.jobs, user, key)

    @app.get("/jobs", tags=["jobs"])
    async def list_jobs(
        user: UserDep,
        state: Annotated[list[Annotated[str, Query(pattern=STATES_RE)]] | None,
                         Query(description="job states, any case, e.g. RUNNING or running,pending: "
                                           + ", ".join(JobState))] = None,
        pool: str | None = None,
        owner: Annotated[str | None, Query(alias="user")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        before: str | None = None,
    ) -> JobPage:
        """Jobs, newest first. Non-admins see only their own."""
        states = []
        for value in state or []:
            for part in value.split(","):
                part = part.strip().upper()
                if part not in JobState.__members__:
                    raise HTTPException(422, f"state: unknown state {part!r} (one of {', '.join(JobState)})")
                states.append(part)
        rows = ctx.store.list_jobs(
            owner=None if user.is_admin else user.name, states=states, pool=pool,
            user=owner, limit=limit + 1, before=before,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return JobPage(items=[JobOut.of(j) for j in rows], next=rows[-1].id if more else None)

    def detail(job: Job) -> JobDetail:
        return JobDetail.build(job, ctx.store.attempts(job.id), ctx.store.result_for(job.id),
                               ctx.store.chain_jobs(job.chain) if job.chain else None,
                               ctx.store.list_artifacts(None, job_id=job.id, limit=100))

    @app.get("/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str, user: UserDep) -> JobDetail:
        return detail(visible_job(job_id, user))

    @app.get("/jobs/{job_id}/wait", tags=["jobs"])
    async def wait_job(
        job_id: str, user: UserDep, timeout: Annotated[float, Query(gt=0, le=300)] = 30.0
    ) -> JobDetail:
        """Return the job once it is terminal, or after ``timeout`` seconds (check ``state``)."""
        job = visible_job(job_id, user)
        if ctx.scheduler.leading or ctx.events is None:
            await ctx.scheduler.wait_done(job.id, timeout)
        else:  # a follower learns of the end from the event table
            await ctx.events.wait_until(
                lambda: JobState(ctx.store.get_job(job.id).state).terminal, timeout)
        return detail(ctx.store.get_job(job.id))

    @app.post("/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel_job(job_id: str, user: UserDep, request: Request) -> CancelOut:
        job = visible_job(job_id, user)
        if JobState(job.state).terminal:
            return CancelOut(id=job.id, state=job.state)
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        return CancelOut(id=job.id, state=await ctx.scheduler.cancel(job.id))

    @app.get("/jobs/{job_id}/why", tags=["jobs"])
    async def why_job(job_id: str, user: UserDep, request: Request) -> WhyOut:
        job = visible_job(job_id, user)
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        return WhyOut(**ctx.scheduler.why(job.id))

    @app.get("/jobs/{job_id}/logs", tags=["jobs"], response_class=StreamingResponse,
             responses={200: {"content": {"application/octet-stream": {}}}})
    async def logs(
        job_id: str,
        user: UserDep,
        attempt: Annotated[int | None, Query(ge=1)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        follow: bool = False,
    ) -> StreamingResponse:
        """The job's log (the latest attempt, or ``attempt`` N). With ``follow``, streams until
        the job ends, moving on to the next attempt when it is retried."""
        job = visible_job(job_id, user)
        return StreamingResponse(_log_stream(ctx, job.id, attempt, offset, follow),
                                 media_type="application/octet-stream")

    # ------------------------------------------------------------------ results

    @app.get("/results", tags=["results"])
    async def results(
        user: UserDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        before: int | None = None,
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

    @app.post("/results/import", tags=["results"], status_code=201,
              responses={422: {"model": ErrorOut, "description": "nothing of that format in the text"}})
    async def results_import(body: ResultImportIn, user: UserDep) -> ResultOut:
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

    # ------------------------------------------------------------------ artifacts

    def visible_artifact(artifact_id: str, user: User) -> Any:
        art = ctx.store.get_artifact(artifact_id, owner=None if user.is_admin else user.name)
        if not user.is_admin and art.user != user.name:
            raise NotFound(f"no artifact {artifact_id}")
        return art

    @app.get("/artifacts", tags=["artifacts"])
    async def artifacts(
        user: UserDep,
        job: Annotated[str | None, Query(max_length=64)] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        key: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        before: Annotated[str | None, Query(max_length=64)] = None,
    ) -> ArtifactPage:
        job_id = visible_job(job, user).id if job else None
        rows = ctx.store.list_artifacts(None if user.is_admin else user.name, job_id=job_id,
                                        kind=kind, key=key, limit=limit + 1, before=before)
        items = [ArtifactOut.of(a) for a in rows[:limit]]
        return ArtifactPage(items=items, next=items[-1].id if len(rows) > limit else None)

    @app.get("/artifacts/{artifact_id}", tags=["artifacts"])
    async def artifact(artifact_id: Annotated[str, Path(max_length=64)], user: UserDep) -> ArtifactOut:
        return ArtifactOut.of(visible_artifact(artifact_id, user))

    @app.get("/artifacts/{artifact_id}/content", tags=["artifacts"], response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorOut}})
    async def artifact_content(artifact_id: Annotated[str, Path(max_length=64)], user: UserDep) -> FileResponse:
        art = visible_artifact(artifact_id, user)
        path = ctx.blobs.path(art.sha256)
        if not path.is_file():
            raise NotFound(f"artifact {artifact_id}: its content ({art.sha256[:12]}) is gone from the store")
        return FileResponse(path, media_type="application/octet-stream", filename=art.name)

    @app.delete("/artifacts/{artifact_id}", tags=["artifacts"])
    async def artifact_delete(artifact_id: Annotated[str, Path(max_length=64)], user: UserDep) -> ArtifactOut:
        art = visible_artifact(artifact_id, user)
        for sha in ctx.store.delete_artifacts([art.id]):
            if not ctx.store.blob_in_use(sha):  # an unfinished job may still have it as input
                ctx.blobs.path(sha).unlink(missing_ok=True)
        return ArtifactOut.of(art)

    # ------------------------------------------------------------------ hosts and pools

    @app.get("/hosts", tags=["hosts"])
    async def hosts(_user: UserDep, request: Request) -> list[HostOut]:
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        notes = {name: row.health_message for name, row in ctx.store.host_statuses().items()}
        facts = ctx.scheduler.facts
        return [_host_out(v, notes.get(v.host.name), facts.get(v.host.name)) for v in ctx.scheduler.host_views()]

    def _one_host(name: str) -> HostOut:
        for view in ctx.scheduler.host_views():
            if view.host.name == name:
                row = ctx.store.host_statuses().get(name)
                return _host_out(view, row.health_message if row else None, ctx.scheduler.facts.get(name))
        raise NotFound(f"no host named {name!r} in the inventory")

    @app.post("/hosts/{name}/drain", tags=["hosts"])
    async def drain_host(name: str, _admin: AdminDep, request: Request) -> HostOut:
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        """Let the host finish its running attempts and give it no new ones."""
        ctx.scheduler.drain(name, True)
        return _one_host(name)

    @app.post("/hosts/{name}/undrain", tags=["hosts"])
    async def undrain_host(name: str, _admin: AdminDep, request: Request) -> HostOut:
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        ctx.scheduler.drain(name, False)
        return _one_host(name)

    @app.post("/hosts/{name}/maintenance", tags=["hosts"])
    async def maintenance_host(name: str, _admin: AdminDep, request: Request, on: bool = True) -> HostOut:
        """Maintenance on: no new jobs, no health checks. Off: a health check decides."""
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        ctx.scheduler.maintenance(name, on)
        return _one_host(name)

    @app.post("/hosts/{name}/check", tags=["hosts"])
    async def check_host(name: str, _admin: AdminDep, request: Request) -> HostCheckOut:
        """Run a health check now (ahead of the queue) and report it."""
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        return HostCheckOut(**await ctx.scheduler.check_host(name))

    def _ansible_target(pattern: str) -> str:
        if ctx.scheduler.inventory_source is None:
            raise HTTPException(503, "this server has no inventory file for Ansible")
        return ctx.scheduler.inventory_source

    @app.post("/hosts/probe", tags=["hosts"])
    async def probe_hosts(body: AnsibleIn, _admin: AdminDep, request: Request) -> list[ProbeOut]:
        """Run playbooks/facts.yml on the hosts matching ``pattern``; record what they are."""
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        inventory = _ansible_target(body.pattern)
        run = await asyncio.to_thread(run_playbook, playbook_path("facts.yml"), inventory,
                                      limit=body.pattern, timeout=600)
        if not run.hosts:
            raise HTTPException(422, f"pattern {body.pattern!r} matches no host of the inventory")
        out = []
        for name, stats in sorted(run.hosts.items()):
            reported = run.reported.get(name, {}).get("fleet_probe")
            facts = probe.parse(reported) if isinstance(reported, dict) else {}
            host = ctx.scheduler.hosts.get(name)
            if facts and host is not None:
                ctx.scheduler.set_facts(name, facts)
            out.append(ProbeOut(host=name, status="ok" if facts else ("unreachable" if stats.unreachable else "failed"),
                                message=None if facts else stats.message, facts=facts,
                                mismatches=probe.mismatches(host, facts) if facts and host else []))
        return out

    @app.post("/hosts/provision", tags=["hosts"])
    async def provision_hosts(body: AnsibleIn, _admin: AdminDep, request: Request) -> list[ProvisionOut]:
        """Run playbooks/provision.yml on the hosts matching ``pattern`` (``check``: dry run)."""
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        inventory = _ansible_target(body.pattern)
        accounts = sorted({unix_account(u.name) for u in ctx.store.list_users()})
        run = await asyncio.to_thread(run_playbook, playbook_path("provision.yml"), inventory,
                                      limit=body.pattern, check=body.check, timeout=1800,
                                      extravars={"fleet_accounts": accounts})
        if not run.hosts:
            raise HTTPException(422, f"pattern {body.pattern!r} matches no host of the inventory")
        return [ProvisionOut(host=name, status=s.status, ok=s.ok, changed=s.changed, failed=s.failed,
                             unreachable=s.unreachable, message=s.message, check=body.check)
                for name, s in sorted(run.hosts.items())]

    @app.get("/ssh-config", tags=["hosts"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}}})
    async def ssh_config(_user: UserDep) -> PlainTextResponse:
        """OpenSSH ``Host`` blocks for the inventory (paths are the server's)."""
        return PlainTextResponse(render_ssh_config(
            [h for h in ctx.scheduler.hosts.values() if h.backend == "ssh"], ctx.ssh_known_hosts, ctx.trust_on_first_use))

    @app.get("/pools", tags=["hosts"])
    async def pools(_user: UserDep, request: Request) -> list[PoolOut]:
        if not ctx.scheduler.leading:
            return await ctx.forward(request)  # type: ignore[return-value]
        by_pool: dict[str, list[HostOut]] = {}
        for h in (_host_out(v) for v in ctx.scheduler.host_views() if v.host.schedulable):
            for p in h.pools:
                by_pool.setdefault(p, []).append(h)
        return [
            PoolOut(name=name, hosts=len(hs), slots=sum(h.slots for h in hs),
                    used_slots=sum(h.used_slots for h in hs),
                    states=dict(Counter(h.state for h in hs)), health=dict(Counter(h.health for h in hs)))
            for name, hs in sorted(by_pool.items())
        ]

    # ------------------------------------------------------------------ hook catalog

    @app.get("/hooks", tags=["hooks"])
    async def hooks(_user: UserDep) -> list[HookOut]:
        """The hooks jobs may run before and after themselves (admins install them in
        ``hooks_dir``), with the variables each takes."""
        return [HookOut.model_validate(h.as_dict()) for h in ctx.scheduler.hook_catalog.hooks().values()]

    # ------------------------------------------------------------------ users and tokens

    @app.get("/users", tags=["users"])
    async def users(_admin: AdminDep) -> list[UserOut]:
        return [UserOut(name=u.name, admin=u.is_admin) for u in ctx.store.list_users()]

    def issue(target: User, name: str, expires: str | float | None) -> TokenOut:
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

    @app.post("/users", tags=["users"], status_code=201)
    async def add_user(body: UserIn, _admin: AdminDep) -> TokenOut:
        """Create a user and a first token for them (shown once)."""
        if ctx.store.get_user(body.name) is not None:
            raise HTTPException(409, f"user {body.name} already exists")
        user = ctx.store.create_user(body.name, body.admin)
        return issue(user, "default", None)

    @app.post("/tokens", tags=["users"], status_code=201)
    async def add_token(body: TokenIn, user: UserDep) -> TokenOut:
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
        return issue(target, body.name, body.expires)

    @app.get("/tokens", tags=["users"])
    async def tokens(user: UserDep, owner: Annotated[str | None, Query(alias="user", max_length=64)] = None,
                     everyone: Annotated[bool, Query(alias="all")] = False) -> list[TokenInfo]:
        """Your tokens (never their values), with when each was last used; admins may ask for
        one user's (``user``) or everyone's (``all``)."""
        if (owner and owner != user.name or everyone) and not user.is_admin:
            raise HTTPException(403, "only admins list other users' tokens")
        rows = ctx.store.list_tokens(None if everyone else (owner or user.name))
        now = time.time()
        return [TokenInfo.of(t, name, now) for t, name in rows]

    @app.delete("/tokens/{token_id}", tags=["users"])
    async def revoke_token(token_id: int, user: UserDep) -> TokenInfo:
        """Revoke a token: it stops working at once, on every replica. Yours, or (admins) any."""
        found = ctx.store.revoke_token(token_id, None if user.is_admin else user.name)
        if found is None:
            raise NotFound(f"no token {token_id}")
        return TokenInfo.of(found[0], found[1], time.time())

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            document_errors(schema, app.routes)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class BatchIn(BaseModel):
    jobs: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)


def _problem(error: dict[str, Any]) -> str:
    """A validation error in words: a pattern is described, not shown (the job-state pattern
    is a thousand characters of regex)."""
    if error.get("type") == "string_pattern_mismatch":
        if tuple(error.get("loc") or ())[:2] == ("query", "state"):
            return f"unknown state {str(error.get('input'))[:60]!r}; one of {', '.join(JobState)} (any case)"
        if len(str((error.get("ctx") or {}).get("pattern") or "")) > 80:
            return "not in the accepted form (see the API's description of this field)"
    return str(error["msg"])


def _quota_message(user: str, quota: int, room: int) -> str:
    return (f"upload quota of user {user} is full: {quota - max(room, 0)} of {quota} bytes used "
            "(upload_quota_bytes); uploads no job uses go after upload_retention_days")


def _safe(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as ``\\udXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _host_out(view: Any, health_message: str | None = None, facts: dict[str, Any] | None = None) -> HostOut:
    h = view.host
    if not h.schedulable:
        state = "gateway"  # fleet_jobs=false: forwards SSH, runs no jobs
    elif view.drained:
        state = "draining" if view.used_slots > 0 else "drained"
    elif view.health in (Health.UNKNOWN, Health.BAD):
        state = "offline"
    elif view.used_slots > 0:
        state = "busy"
    else:
        state = "idle"
    return HostOut(
        name=h.name, pools=list(h.pools), arch=h.arch, accelerator=h.accelerator,
        device_class=h.device_class, slots=h.slots, used_slots=view.used_slots,
        labels=h.labels, target=h.target, state=state,
        health=view.health.value if h.schedulable else "-",
        health_message=health_message, facts=facts or {},
        mismatches=probe.mismatches(h, facts) if facts else [],
        isolation=h.isolation, job_user=h.job_user, backend=h.backend, elastic=h.elastic,
    )


async def _log_stream(
    ctx: ApiContext, job_id: str, number: int | None, offset: int, follow: bool
) -> AsyncIterator[bytes]:
    store, logs = ctx.store, ctx.scheduler.logs
    while True:
        attempts = store.attempts(job_id)
        if number is not None:
            attempts = [a for a in attempts if a.number == number]
        if not attempts:
            job = store.get_job(job_id)
            if not follow or JobState(job.state).terminal:
                return
            await ctx.scheduler.wait_done(job_id, 0.2)
            continue
        current = attempts[-1]
        if current.ended_at is not None and current.log_bytes and not logs.exists(job_id, current.id):
            yield COLLECTED
            if not follow or number is not None:
                return
        before, before_offset = hook_log_id(current.id, "before"), 0
        while True:
            if offset == 0:  # before the job prints: what its before hook did
                data, before_offset = logs.read(job_id, before, before_offset)
                if data:
                    yield data
                    continue
            data, offset = logs.read(job_id, current.id, offset)
            if data:
                yield data
                continue
            if not follow:
                break
            fresh = store.get_attempt(current.id)
            if fresh is None or fresh.ended_at is not None:
                while True:
                    data, offset = logs.read(job_id, current.id, offset)
                    if not data:
                        break
                    yield data
                break
            await logs.wait(current.id, 1.0 if ctx.scheduler.leading else 0.25)  # followers poll
        after_offset = 0
        while True:  # what its after hook did
            data, after_offset = logs.read(job_id, hook_log_id(current.id, "after"), after_offset)
            if not data:
                break
            yield data
        if not follow:
            return
        if number is not None:
            return
        # The attempt ended: stop if the job is done, else follow its next attempt.
        job = store.get_job(job_id)
        while not JobState(job.state).terminal and job.current_attempt == current.id:
            await ctx.scheduler.wait_done(job_id, 0.2)
            job = store.get_job(job_id)
        if JobState(job.state).terminal and job.current_attempt == current.id:
            return
        offset = 0
        await asyncio.sleep(0)
