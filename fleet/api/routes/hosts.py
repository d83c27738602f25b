"""``/hosts``, ``/pools``, ``/hooks`` and ``/ssh-config``: the lab as the scheduler sees it, the
operators' controls, and Ansible on it (probe, provision)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import PlainTextResponse

from fleet import probe
from fleet.ansible import playbook_path, run_playbook
from fleet.api.auth import AdminDep, UserDep
from fleet.api.context import LEADER, ApiContext, CtxDep
from fleet.api.schemas import AnsibleIn, HookOut, HostCheckOut, HostOut, PoolOut, ProbeOut, ProvisionOut
from fleet.errors import NotFound
from fleet.inventory import unix_account
from fleet.models.enums import Health
from fleet.models.tables import User
from fleet.scheduler.placement import HostView
from fleet.sshconfig import render as render_ssh_config

router = APIRouter(tags=["hosts"])


def host_out(view: HostView, health_message: str | None = None,
             facts: dict[str, Any] | None = None, running: list[str] | None = None) -> HostOut:
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
        container_engine=h.container_engine, container_image=h.container_image,
        running=running or [],
    )


def _running(ctx: ApiContext, user: User) -> dict[str, list[str]]:
    """Host name -> the ids of the jobs running there that ``user`` may see."""
    running: dict[str, list[str]] = {}
    for job_id, run in ctx.scheduler.running.items():
        if user.is_admin or run.qj.job.user == user.name:
            running.setdefault(run.host.name, []).append(job_id)
    return running


def _one_host(ctx: ApiContext, name: str) -> HostOut:
    for view in ctx.scheduler.host_views():
        if view.host.name == name:
            row = ctx.store.hosts.statuses().get(name)
            return host_out(view, row.health_message if row else None, ctx.scheduler.facts.get(name))
    raise NotFound(f"no host named {name!r} in the inventory")


@router.get("/hosts", dependencies=LEADER)
async def hosts(user: UserDep, ctx: CtxDep) -> list[HostOut]:
    notes = {name: row.health_message for name, row in (await asyncio.to_thread(ctx.store.hosts.statuses)).items()}
    facts = ctx.scheduler.facts
    running = _running(ctx, user)
    return [host_out(v, notes.get(v.host.name), facts.get(v.host.name), sorted(running.get(v.host.name, [])))
            for v in ctx.scheduler.host_views()]


@router.get("/hosts/{name}", dependencies=LEADER)
async def one_host(name: str, user: UserDep, ctx: CtxDep) -> HostOut:
    """One host as ``GET /hosts`` shows it (a view that follows events reads only the host
    an event names, not all of them)."""
    for view in ctx.scheduler.host_views():
        if view.host.name == name:
            running = sorted(_running(ctx, user).get(name, []))  # on the loop: the scheduler's dict
            row = (await asyncio.to_thread(ctx.store.hosts.statuses)).get(name)
            return host_out(view, row.health_message if row else None, ctx.scheduler.facts.get(name), running)
    raise NotFound(f"no host named {name!r} in the inventory")


@router.post("/hosts/{name}/drain", dependencies=LEADER)
async def drain_host(name: str, _admin: AdminDep, ctx: CtxDep) -> HostOut:
    """Let the host finish its running attempts and give it no new ones."""
    ctx.scheduler.drain(name, True)
    return _one_host(ctx, name)


@router.post("/hosts/{name}/undrain", dependencies=LEADER)
async def undrain_host(name: str, _admin: AdminDep, ctx: CtxDep) -> HostOut:
    ctx.scheduler.drain(name, False)
    return _one_host(ctx, name)


@router.post("/hosts/{name}/maintenance", dependencies=LEADER)
async def maintenance_host(name: str, _admin: AdminDep, ctx: CtxDep, on: bool = True) -> HostOut:
    """Maintenance on: no new jobs, no health checks. Off: a health check decides."""
    ctx.scheduler.maintenance(name, on)
    return _one_host(ctx, name)


@router.post("/hosts/{name}/check", dependencies=LEADER)
async def check_host(name: str, _admin: AdminDep, ctx: CtxDep) -> HostCheckOut:
    """Run a health check now (ahead of the queue) and report it."""
    return HostCheckOut.model_validate(dataclasses.asdict(await ctx.scheduler.check_host(name)))


def _ansible_target(ctx: ApiContext) -> str:
    if ctx.scheduler.inventory_source is None:
        raise HTTPException(503, "this server has no inventory file for Ansible")
    return ctx.scheduler.inventory_source


@router.post("/hosts/probe", dependencies=LEADER)
async def probe_hosts(body: AnsibleIn, _admin: AdminDep, ctx: CtxDep) -> list[ProbeOut]:
    """Run playbooks/facts.yml on the hosts matching ``pattern``; record what they are."""
    inventory = _ansible_target(ctx)
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


@router.post("/hosts/provision", dependencies=LEADER)
async def provision_hosts(body: AnsibleIn, _admin: AdminDep, ctx: CtxDep) -> list[ProvisionOut]:
    """Run playbooks/provision.yml on the hosts matching ``pattern`` (``check``: dry run)."""
    inventory = _ansible_target(ctx)
    accounts = sorted({unix_account(u.name) for u in await asyncio.to_thread(ctx.store.list_users)})
    run = await asyncio.to_thread(run_playbook, playbook_path("provision.yml"), inventory,
                                  limit=body.pattern, check=body.check, timeout=1800,
                                  extravars={"fleet_accounts": accounts})
    if not run.hosts:
        raise HTTPException(422, f"pattern {body.pattern!r} matches no host of the inventory")
    return [ProvisionOut(host=name, status=s.status, ok=s.ok, changed=s.changed, failed=s.failed,
                         unreachable=s.unreachable, message=s.message, check=body.check)
            for name, s in sorted(run.hosts.items())]


@router.get("/ssh-config", response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}}})
def ssh_config(_user: UserDep, ctx: CtxDep) -> PlainTextResponse:
    """OpenSSH ``Host`` blocks for the inventory (paths are the server's)."""
    return PlainTextResponse(render_ssh_config(
        [h for h in ctx.scheduler.hosts.values() if h.backend == "ssh"], ctx.ssh_known_hosts,
        ctx.trust_on_first_use))


@router.get("/pools", dependencies=LEADER)
async def pools(_user: UserDep, ctx: CtxDep) -> list[PoolOut]:
    by_pool: dict[str, list[HostOut]] = {}
    for h in (host_out(v) for v in ctx.scheduler.host_views() if v.host.schedulable):
        for p in h.pools:
            by_pool.setdefault(p, []).append(h)
    return [
        PoolOut(name=name, hosts=len(hs), slots=sum(h.slots for h in hs),
                used_slots=sum(h.used_slots for h in hs),
                states=dict(Counter(h.state for h in hs)), health=dict(Counter(h.health for h in hs)))
        for name, hs in sorted(by_pool.items())
    ]


@router.get("/hooks", tags=["hooks"])
def hooks(_user: UserDep, ctx: CtxDep) -> list[HookOut]:
    """The hooks jobs may run before and after themselves (admins install them in
    ``hooks_dir``), with the variables each takes."""
    return [HookOut.model_validate(h.as_dict()) for h in ctx.scheduler.hook_catalog.hooks().values()]
