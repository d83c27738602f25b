"""``fleet`` commands about the lab: hosts (probe, provision, drain, maintenance, check), pools,
hooks, artifacts, and SSH to hosts by their inventory names."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from fleet.cli import render
from fleet.cli.base import Ctx, cli, handle_errors, pass_ctx, short
from fleet.errors import FleetError

# ---------------------------------------------------------------------- ssh


@cli.command("ssh-config")
@pass_ctx
@handle_errors
def ssh_config(obj: Ctx) -> None:
    """Print OpenSSH Host blocks for the inventory (address, port, user, key, ProxyJump,
    fleet's known_hosts). Include the output from ~/.ssh/config and plain `ssh HOST` works."""
    click.echo(obj.client.ssh_config(), nl=False)


@cli.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
@handle_errors
def ssh(obj: Ctx, host: str, command: tuple[str, ...]) -> None:
    """Open a shell on HOST, or run `-- COMMAND` there, with the inventory's connection
    settings (jump hosts and keys included). Like ssh, COMMAND's words are joined with spaces
    and run by the host's shell. Exits with the command's status."""
    import subprocess
    import tempfile

    hosts = {h.name: h for h in obj.client.hosts()}
    if host not in hosts:
        raise FleetError(f"no host {host} in the inventory (hosts: {', '.join(sorted(hosts)) or 'none'})")
    argv = list(command)
    if hosts[host].target == "local":  # ansible_connection=local: this machine
        shell = os.environ.get("SHELL", "/bin/sh")
        code = subprocess.call([shell, "-c", " ".join(argv)] if argv else [shell])
        raise SystemExit(code)
    with tempfile.NamedTemporaryFile("w", prefix="fleet-ssh-", suffix=".conf") as conf:
        conf.write(obj.client.ssh_config())
        conf.flush()
        code = subprocess.call(["ssh", "-F", conf.name, *(["-t"] if not argv and sys.stdin.isatty() else []),
                                host, *([" ".join(argv)] if argv else [])])
    raise SystemExit(code)


# ---------------------------------------------------------------------- artifacts


@cli.group(invoke_without_command=True)
@click.option("--job", default=None, help="only this job's artifacts")
@click.option("--kind", default=None, help="e.g. tensorrt-engine, hef, file")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def artifacts(ctx: click.Context, job: str | None, kind: str | None, limit: int, as_json: bool) -> None:
    """Artifacts jobs made (engines, HEFs, outputs): list, get, rm."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(artifacts_list, job=job, kind=kind, limit=limit, as_json=as_json)


@artifacts.command("list")
@click.option("--job", default=None, help="only this job's artifacts")
@click.option("--kind", default=None, help="e.g. tensorrt-engine, hef, file")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def artifacts_list(obj: Ctx, job: str | None, kind: str | None, limit: int, as_json: bool) -> None:
    """List artifacts, newest first."""
    page = obj.client.artifacts(job=job, kind=kind, limit=limit)
    if as_json:
        click.echo(render.dump(page))
        return
    if not page.items:
        click.echo("no artifacts")
        return
    rows = [[a.id, a.name, a.kind, render.size(a.size), a.job_id, a.device_class,
             f"{a.tool or '-'} {a.tool_version or ''}".strip(), a.created_at or ""] for a in page.items]
    click.echo(render.table(rows, ["ID", "NAME", "KIND", "SIZE", "JOB", "DEVICE", "TOOL", "MADE"]))


@artifacts.command("get")
@click.argument("artifact_id")
@click.option("-o", "--output", type=click.Path(dir_okay=True, path_type=Path), default=None,
              help="file or directory to write (default: the artifact's name here)")
@click.option("--json", "as_json", is_flag=True, help="print its metadata instead")
@pass_ctx
@handle_errors
def artifacts_get(obj: Ctx, artifact_id: str, output: Path | None, as_json: bool) -> None:
    """Download an artifact (or show its metadata with --json)."""
    art = obj.client.artifact(artifact_id)
    if as_json:
        click.echo(render.dump(art))
        return
    dest = output or Path(art.name.replace("/", "_"))
    if dest.is_dir():
        dest = dest / art.name.replace("/", "_")
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with tmp.open("wb") as fh:
            size = obj.client.download_artifact(art.id, fh)
        tmp.replace(dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FleetError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"{dest} ({render.size(size)}, sha256 {art.sha256[:12]})")


@artifacts.command("rm")
@click.argument("artifact_ids", nargs=-1, required=True)
@pass_ctx
@handle_errors
def artifacts_rm(obj: Ctx, artifact_ids: tuple[str, ...]) -> None:
    """Remove artifacts (their content goes when nothing else uses it)."""
    for artifact_id in artifact_ids:
        art = obj.client.delete_artifact(artifact_id)
        click.echo(f"removed {art.id} ({art.name})")


# ---------------------------------------------------------------------- hosts


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def hosts(ctx: click.Context, as_json: bool) -> None:
    """List hosts: pools, arch, accelerator, slots, labels, target, state, health."""
    if ctx.invoked_subcommand is not None:
        return
    items = ctx.obj.client.hosts()
    if as_json:
        click.echo(render.dump(items))
        return
    rows = [
        [h.name, ",".join(h.pools), h.arch, h.accelerator,
         f"{h.used_slots}/{h.slots}" if h.state != "gateway" else "-",
         ",".join(f"{k}={v}" for k, v in sorted(h.labels.items())) or "-", h.target, h.state, h.health,
         short(h.health_message) if h.state != "gateway" else "runs no jobs (fleet_jobs=false)"]
        for h in items
    ]
    click.echo(render.table(rows, ["NAME", "POOLS", "ARCH", "ACCEL", "SLOTS", "LABELS", "TARGET", "STATE",
                                   "HEALTH", "NOTE"]))
    for h in items:
        for m in h.mismatches:
            click.echo(f"MISMATCH {h.name}: {m}", err=True)


@hosts.command("probe")
@click.argument("pattern", default="all")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def hosts_probe(obj: Ctx, pattern: str, as_json: bool) -> None:
    """Read what the hosts matching PATTERN really are (Ansible facts and accelerator tools);
    report where the inventory disagrees (admins). Exit 1 if a host was unreachable or
    disagrees."""
    click.echo(f"probing {pattern} (playbooks/facts.yml)...", err=True)
    results = obj.client.ansible("probe", pattern)
    if as_json:
        click.echo(render.dump(results))
    else:
        keys = ("arch", "os", "cpu", "memory_mb", "gpu", "driver", "tensorrt", "l4t", "jetpack",
                "power_mode", "hailort", "hailo_arch", "hailo_firmware")
        for r in results:
            if r.status != "ok":
                click.echo(f"{r.host}: {r.status.upper()}: {r.message}")
                continue
            shown = ", ".join(f"{k}={r.facts[k]}" for k in keys if k in r.facts)
            click.echo(f"{r.host}: {shown} (from {r.facts.get('facts_source')})")
            for m in r.mismatches:
                click.echo(f"  MISMATCH {m}")
    if any(r.status != "ok" or r.mismatches for r in results):
        raise SystemExit(1)


@hosts.command("provision")
@click.argument("pattern", default="all")
@click.option("--check", is_flag=True, help="report what would change; change nothing")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def hosts_provision(obj: Ctx, pattern: str, check: bool, as_json: bool) -> None:
    """Run playbooks/provision.yml on the hosts matching PATTERN (admins). Exit 1 if a host
    failed or was unreachable."""
    click.echo(f"provisioning {pattern}{' (check mode)' if check else ''}...", err=True)
    results = obj.client.ansible("provision", pattern, check=check)
    if as_json:
        click.echo(render.dump(results))
    else:
        rows = [[r.host, r.status + (" (check)" if r.check else ""), str(r.ok), str(r.changed),
                 str(r.failed), str(r.unreachable), (r.message or "")[:80]] for r in results]
        click.echo(render.table(rows, ["HOST", "STATUS", "OK", "CHANGED", "FAILED", "UNREACHABLE", "MESSAGE"]))
    if any(r.status in ("failed", "unreachable") for r in results):
        raise SystemExit(1)


def _host_action(obj: Ctx, names: tuple[str, ...], action: str, as_json: bool, **params: object) -> None:
    items = [obj.client.host_action(name, action, **params) for name in names]
    if as_json:
        click.echo(render.dump(items))
        return
    for h in items:
        click.echo(f"{h.name}: state {h.state}, health {h.health}, {h.used_slots}/{h.slots} slots used")


@hosts.command("drain")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def hosts_drain(obj: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    """Finish the running jobs of HOST, start no new ones (admins)."""
    _host_action(obj, names, "drain", as_json)


@hosts.command("undrain")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def hosts_undrain(obj: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    """Let a drained HOST take jobs again (admins)."""
    _host_action(obj, names, "undrain", as_json)


@hosts.command("maintenance")
@click.argument("names", nargs=-1, required=True)
@click.option("--off", is_flag=True, help="end maintenance: a health check decides the health")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def hosts_maintenance(obj: Ctx, names: tuple[str, ...], off: bool, as_json: bool) -> None:
    """Put HOST in maintenance: no new jobs and no health checks until --off (admins)."""
    _host_action(obj, names, "maintenance", as_json, on=str(not off).lower())


@hosts.command("check")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def hosts_check(obj: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    """Run a health check on HOST now and show the result (admins). Exit 1 if one fails."""
    results = [obj.client.check_host(name) for name in names]
    if as_json:
        click.echo(render.dump(results))
    else:
        for r in results:
            verdict = "ok" if r.ok else f"FAILED: {r.message}"
            click.echo(f"{r.host}: {verdict} (health {r.health})")
    if not all(r.ok for r in results):
        raise SystemExit(1)


@cli.command("hooks")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def hooks_list(obj: Ctx, as_json: bool) -> None:
    """The hooks a job may run before and after itself (hooks: {before: NAME}), with their
    variables. Admins install them as playbooks in the server's hooks_dir."""
    found = obj.client.hooks()
    if as_json:
        click.echo(render.dump(found))
        return
    if not found:
        click.echo("no hooks in the catalog (an admin installs playbooks in the server's hooks_dir)")
    for hook in found:
        click.echo(f"{hook.name}" + (f"  {hook.description}" if hook.description else "")
                   + (f"  [unusable: {hook.error}]" if hook.error else ""))
        for name, var in hook.vars.items():
            extra = " required" if var.required else (f" default {var.default!r}" if var.default is not None else "")
            click.echo(f"    {name} ({var.type}{extra})" + (f": {var.description}" if var.description else ""))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def pools(obj: Ctx, as_json: bool) -> None:
    """List pools (SSH contexts) with host counts by state and health."""
    items = obj.client.pools()
    if as_json:
        click.echo(render.dump(items))
        return
    rows = [
        [p.name, str(p.hosts), f"{p.used_slots}/{p.slots}",
         " ".join(f"{k}={v}" for k, v in sorted(p.states.items())),
         " ".join(f"{k}={v}" for k, v in sorted(p.health.items()))]
        for p in items
    ]
    click.echo(render.table(rows, ["POOL", "HOSTS", "SLOTS", "STATES", "HEALTH"]))


