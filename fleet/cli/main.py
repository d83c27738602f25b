"""``fleet``: submit and inspect jobs, list hosts and pools, run and manage the server.

Start-up time matters here (every command is a new process): the API client and its pydantic
schemas, and the spec models, are imported when a command needs them, so ``fleet --help``
loads little more than click and httpx. Nothing server-side (SQLAlchemy, the scheduler) is
ever imported by the client's path (tests/test_cli_start.py)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import httpx

from fleet.cli import render
from fleet.client import discovery as local
from fleet.config import Settings, load_settings
from fleet.errors import ApiError, FleetError, SpecError
from fleet.models.enums import JobState

if TYPE_CHECKING:
    from fleet.client.sync import Client

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, inventory: str | None) -> None:
        self.inventory = inventory
        self._settings: Settings | None = None
        self._client: Client | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def client(self) -> Client:
        if self._client is None:
            from fleet.client import connect  # pydantic schemas: only for commands that call

            self._client = connect(self.settings, self.inventory)
        return self._client


def handle_errors(fn: F) -> F:
    """Print fleet's errors as one clear line (exit 2 for bad input, 1 otherwise)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            click.echo(f"fleet: {exc}", err=True)
            sys.exit(2)
        except ApiError as exc:
            click.echo(f"fleet: {exc} (HTTP {exc.status})", err=True)
            sys.exit(2 if 400 <= exc.status < 500 else 1)
        except httpx.TransportError as exc:  # no traceback for a server that is not there
            try:
                where = exc.request.url
                server = f"{where.scheme}://{where.netloc.decode()}"
            except RuntimeError:  # httpx: no request attached
                server = "the server"
            reason = str(exc) or type(exc).__name__
            click.echo(f"fleet: cannot reach the fleet server at {server}: {reason} (is it running? "
                       "FLEET_SERVER and `fleet server status` say which one is used)", err=True)
            sys.exit(1)
        except FleetError as exc:
            click.echo(f"fleet: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--inventory", "-i", envvar="FLEET_INVENTORY", default=None,
              help="Ansible inventory (file, directory or plugin config). Default: the config "
                   "file in FLEET_HOME, else this machine alone.")
@click.version_option(package_name="fleet")
@click.pass_context
def cli(ctx: click.Context, inventory: str | None) -> None:
    """fleet: run compile and benchmark jobs on an edge-device lab."""
    ctx.obj = Ctx(inventory)


# ---------------------------------------------------------------------- server


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", default=8470, show_default=True, type=int, help="port (0: any free one)")
@click.option("--local", "is_local", is_flag=True, hidden=True)
@pass_ctx
@handle_errors
def serve(obj: Ctx, host: str, port: int, is_local: bool) -> None:
    """Run the API server and the scheduler (foreground)."""
    from fleet.controller import ServeOptions, run_serve

    run_serve(obj.settings, ServeOptions(host=host, port=port, inventory=obj.inventory, local=is_local))


@cli.group()
def server() -> None:
    """Manage the local server (started on first use when no server is configured)."""


@server.command("start")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def server_start(obj: Ctx, as_json: bool) -> None:
    """Start the local server in the background (127.0.0.1, a free port), unless it runs."""
    info = local.local_server(obj.settings) or local.start_local(obj.settings, obj.inventory or obj.settings.inventory)
    _server_out(obj, info, as_json)


@server.command("stop")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def server_stop(obj: Ctx, as_json: bool) -> None:
    """Stop the local server (TERM, then KILL). Running jobs go on; a new server reattaches them."""
    pid = local.stop_local(obj.settings)
    if as_json:
        click.echo(json.dumps({"stopped": pid is not None, "pid": pid}))
    else:
        click.echo(f"stopped local server (pid {pid})" if pid else "no local server is running")


@server.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def server_status(obj: Ctx, as_json: bool) -> None:
    """Which server the CLI uses: its URL, pid, inventory and log."""
    settings = obj.settings
    info: local.ServerInfo | None
    if settings.server:
        info = local.ServerInfo(url=settings.server, token=local.read_token(settings), pid=None, local=False)
    else:
        info = local.local_server(settings)
    if info is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("no local server is running (it starts on the first command)")
        sys.exit(3)
    _server_out(obj, info, as_json)


def _server_out(obj: Ctx, info: local.ServerInfo, as_json: bool) -> None:
    healthy = local._healthy(info.url)
    data = {"running": healthy, "url": info.url, "pid": info.pid, "local": info.local,
            "inventory": info.inventory, "home": str(obj.settings.home),
            "log": str(obj.settings.server_log) if info.local else None}
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(f"{'running' if healthy else 'NOT RESPONDING'}: {info.url}"
                   + (f" (pid {info.pid})" if info.pid else ""))
        if info.inventory:
            click.echo(f"inventory: {info.inventory}")
        if info.local:
            click.echo(f"log: {obj.settings.server_log}")


# ---------------------------------------------------------------------- jobs


def _wait_terminal(client: Client, job_id: str) -> Any:
    """Wait for the job's end on the event stream (GET /events)."""
    return client.wait_all([job_id])[0]


def _short(text: str | None, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _stopped_waiting(job_ids: list[str]) -> None:
    """Ctrl-C while waiting: only the waiting stops. Say so, and how to go on."""
    sys.stdout.flush()
    which = job_ids[0] if len(job_ids) == 1 else " ".join(job_ids)
    click.echo(f"\nfleet: stopped waiting; the job{'s' if len(job_ids) > 1 else ''} go"
               f"{'' if len(job_ids) > 1 else 'es'} on (fleet logs -f {job_ids[0]} to follow, "
               f"fleet status {job_ids[0]} to see it, fleet cancel {which} to stop)", err=True)
    sys.exit(130)


def _finish(detail: Any, as_json: bool) -> None:
    click.echo(render.dump(detail) if as_json else render.job_detail(detail))
    sys.exit(0 if detail.state == JobState.SUCCEEDED.value else 1)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="wait until the jobs end; exit 0 only if all succeeded")
@click.option("--follow", "-f", is_flag=True, help="stream the log until the job ends (one file)")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def submit(obj: Ctx, files: tuple[Path, ...], wait: bool, follow: bool, as_json: bool) -> None:
    """Submit the job specs in FILES (YAML). Several files are queued together or not at all."""
    from fleet.client.specs import load_spec_file  # the spec models: only for submit

    if follow and len(files) != 1:
        raise FleetError("--follow takes exactly one spec file")
    for file in files:
        load_spec_file(None, file)  # every file is checked before anything is uploaded
    client = obj.client
    specs = [load_spec_file(client, file) for file in files]
    try:
        # A chain (steps:) becomes one job per step: the batch route returns them all.
        single = len(specs) == 1 and not specs[0].get("steps")
        jobs = [client.submit(specs[0])] if single else client.submit_many(specs)
    except ApiError as exc:
        where = str(files[0]) if len(files) == 1 else "batch"
        raise ApiError(exc.status, f"{where}: {exc}") from None
    if not (wait or follow):
        if as_json:
            click.echo(render.dump(jobs[0] if len(jobs) == 1 else jobs))
        else:
            for job in jobs:
                click.echo(f"{job.id}  {job.name}  {job.state}  queue {job.queue}")
        return
    if not as_json:
        for job in jobs:
            click.echo(f"{job.id}  {job.name}  submitted to queue {job.queue}", err=True)
    try:
        if follow:
            out = sys.stderr.buffer if as_json else sys.stdout.buffer
            safe = render.SafeText()
            for chunk in client.logs(jobs[0].id, follow=True):
                out.write(safe.feed(chunk))
                out.flush()
            out.write(safe.feed(b"", final=True))
        details = client.wait_all([job.id for job in jobs])
    except KeyboardInterrupt:
        _stopped_waiting([job.id for job in jobs])
    if len(details) == 1:
        _finish(details[0], as_json)
    if as_json:
        click.echo(render.dump(details))
    else:
        click.echo(render.jobs_table(details))
    sys.exit(0 if all(d.state == JobState.SUCCEEDED.value for d in details) else 1)


@cli.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="wait until the job ends")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def status(obj: Ctx, job_id: str, wait: bool, as_json: bool) -> None:
    """Show a job: state, reason, host, attempts and its result."""
    try:
        detail = _wait_terminal(obj.client, job_id) if wait else obj.client.job(job_id)
    except KeyboardInterrupt:
        _stopped_waiting([job_id])
    if wait:
        _finish(detail, as_json)
    click.echo(render.dump(detail) if as_json else render.job_detail(detail))


def _list_jobs(obj: Ctx, states: tuple[str, ...], pool: str | None, user: str | None, limit: int,
               before: str | None, as_json: bool) -> None:
    wanted = [s.strip().upper() for value in states for s in value.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in JobState.__members__]
    if unknown:
        raise click.BadParameter(f"unknown state {unknown[0]!r}; the states are "
                                 f"{', '.join(JobState)} (any case, comma-separated)", param_hint="--state")
    page = obj.client.jobs(states=wanted or None, pool=pool, user=user, limit=limit, before=before)
    if as_json:
        click.echo(render.dump(page))
        return
    if not page.items:
        click.echo("no jobs")
        return
    click.echo(render.jobs_table(page.items))
    if page.next:
        click.echo(f"(more: --before {page.next})")


_list_options = [
    click.option("--state", "states", multiple=True, help="filter by state (repeat or comma-separate)"),
    click.option("--pool", default=None, help="filter by pool"),
    click.option("--user", default=None, help="filter by user (admins)"),
    click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000)),
    click.option("--before", default=None, help="page: show jobs older than this id"),
    click.option("--json", "as_json", is_flag=True),
]


def _with_list_options(fn: F) -> F:
    for option in reversed(_list_options):
        fn = option(fn)
    return fn


@cli.command()
@_with_list_options
@pass_ctx
@handle_errors
@click.option("--watch", "-w", is_flag=True,
              help="then print every job state change as it happens (until Ctrl-C); "
                   "with --json, one event per line")
def jobs(obj: Ctx, states: tuple[str, ...], pool: str | None, user: str | None, limit: int,
         before: str | None, as_json: bool, watch: bool) -> None:
    """List jobs, newest first."""
    if not watch:
        _list_jobs(obj, states, pool, user, limit, before, as_json)
        return
    _watch_jobs(obj, states, pool, user, limit, before, as_json)


def _watch_jobs(obj: Ctx, states: tuple[str, ...], pool: str | None, user: str | None, limit: int,
                before: str | None, as_json: bool) -> None:
    """The list, then a line per job state change, from the event stream. Subscribed before
    the list is read, so no change falls between the two."""
    import datetime

    wanted = {s.strip().upper() for value in states for s in value.split(",") if s.strip()}
    stream = obj.client.events(types=["job.state"])
    try:
        ready = next(stream)  # subscribed
        if as_json:  # a script learns where the stream starts (resume: GET /events?after=)
            click.echo(json.dumps(ready))
            sys.stdout.flush()
        else:
            _list_jobs(obj, states, pool, user, limit, before, False)
            click.echo("-- watching job state changes (Ctrl-C stops watching; jobs go on)", err=True)
        for event in stream:
            if (wanted and event.get("state") not in wanted) or (user and event.get("user") != user):
                continue
            if as_json:
                click.echo(json.dumps(event), nl=True)
                sys.stdout.flush()
                continue
            at = datetime.datetime.fromtimestamp(event["at"]).strftime("%H:%M:%S")
            where = f" on {event['host']}" if event.get("host") else ""
            why = f" ({event['reason']})" if event.get("reason") else ""
            message = f": {_short(event.get('message'), 60)}" if event.get("message") else ""
            click.echo(f"{at}  {event['job']}  {event['state']}{why}{where}{message}")
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        stream.close()


@cli.command()
@_with_list_options
@pass_ctx
@handle_errors
def queue(obj: Ctx, states: tuple[str, ...], pool: str | None, user: str | None, limit: int,
          before: str | None, as_json: bool) -> None:
    """List jobs that are waiting or running (all states with --state)."""
    states = states or ("PENDING,RETRYING,STARTING,RUNNING,CANCELLING",)
    _list_jobs(obj, states, pool, user, limit, before, as_json)


def _print_log(chunks: Any, raw: bool) -> None:
    """A job's log to stdout; control sequences shown, not obeyed, unless ``raw``."""
    out = sys.stdout.buffer
    safe = None if raw else render.SafeText()
    for chunk in chunks:
        out.write(chunk if safe is None else safe.feed(chunk))
        out.flush()
    if safe is not None:
        out.write(safe.feed(b"", final=True))
        out.flush()


@cli.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="keep streaming until the job ends")
@click.option("--attempt", type=int, default=None, help="attempt number (default: the latest)")
@click.option("--raw", is_flag=True, help="the bytes as the job wrote them, terminal control "
                                          "sequences included (default: shown as ^[...)")
@pass_ctx
@handle_errors
def logs(obj: Ctx, job_id: str, follow: bool, attempt: int | None, raw: bool) -> None:
    """Print a job's log. What a job printed to control a terminal (escape sequences, a
    clipboard write, a screen clear) is shown as text unless --raw."""
    client = obj.client
    if not follow:
        job = client.job(job_id)
        if not job.attempt_list:
            click.echo(f"fleet: job {job.id} has not started yet ({job.state}); nothing is logged "
                       f"until it runs (fleet logs -f {job.id} waits for it, fleet why {job.id} "
                       "says why it waits)", err=True)
            return
    try:
        _print_log(client.logs(job_id, follow=follow, attempt=attempt), raw)
    except KeyboardInterrupt:
        sys.stdout.flush()
        click.echo(f"\nfleet: stopped following; job {job_id} goes on", err=True)
        sys.exit(130)


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def cancel(obj: Ctx, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel jobs (queued ones end now; running ones get TERM, then KILL)."""
    out = []
    failed = False
    for job_id in job_ids:
        try:
            res = obj.client.cancel(job_id)
            out.append({"id": res.id, "state": res.state})
        except FleetError as exc:
            failed = True
            out.append({"id": job_id, "error": str(exc)})
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        for row in out:
            click.echo(f"{row['id']}  {row.get('state') or 'error: ' + row['error']}")
    sys.exit(1 if failed else 0)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def why(obj: Ctx, job_id: str, as_json: bool) -> None:
    """Explain why a job waits: per-host reasons."""
    w = obj.client.why(job_id)
    if as_json:
        click.echo(render.dump(w))
        return
    click.echo(f"{w.job}: {w.summary}")
    if w.state == "waiting":
        click.echo(f"queue {w.queue}: {w.queued} waiting, {w.ahead} ahead of this job")
        for host, reason in sorted(w.hosts.items()):
            click.echo(f"  {host}: {reason}")


@cli.group(invoke_without_command=True)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def results(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List result records, newest first (`fleet results import` adds one by hand)."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Ctx = ctx.obj
    page = obj.client.results(limit=limit)
    if as_json:
        click.echo(render.dump(page))
        return
    if not page.items:
        click.echo("no results")
        return
    rows = []
    for r in page.items:
        m = r.record.get("metrics") or {}
        lat = m.get("latency_ms") or {}

        def fmt(v: Any) -> str:
            return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

        rows.append([r.job_id, r.host, r.device_class, r.runner, fmt(lat.get("mean")), fmt(lat.get("p99")),
                     fmt(m.get("throughput_per_s")), r.created_at or ""])
    click.echo(render.table(rows, ["JOB", "HOST", "DEVICE", "RUNNER", "MEAN_MS", "P99_MS", "PER_S", "WHEN"]))


@results.command("import")
@click.option("--format", "fmt", required=True, type=click.Choice(["trtexec", "hailortcli", "tegrastats", "ort-perf"]),
              help="what tool printed the file")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@click.option("--host", default=None, help="the host it ran on (default: manual)")
@click.option("--device-class", default=None, help="e.g. aarch64/jetson-orin-nano")
@click.option("--name", default=None, help="model or run name to record")
@click.option("--json", "as_json", is_flag=True, help="print the stored record")
@pass_ctx
@handle_errors
def results_import(obj: Ctx, fmt: str, file: Path, host: str | None, device_class: str | None,
                   name: str | None, as_json: bool) -> None:
    """Parse a log captured by hand (trtexec, hailortcli, tegrastats, onnxruntime_perf_test)
    into the result schema and store it."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(errors="replace")
    except OSError as exc:
        raise FleetError(f"{file}: {exc.strerror or exc}") from None
    out = obj.client.import_result(fmt, text, host=host, device_class=device_class, name=name,
                                   source=str(file))
    if as_json:
        click.echo(render.dump(out.record))
        return
    m = out.record.get("metrics") or {}
    lat = m.get("latency_ms") or {}
    parts = [f"result {out.id} imported from {file} ({fmt})"]
    if "throughput_per_s" in m:
        parts.append(f"throughput {m['throughput_per_s']:.2f}/s")
    if "mean" in lat:
        parts.append(f"latency mean {lat['mean']:.3f} ms")
    if (m.get("power_w") or {}).get("avg") is not None:
        parts.append(f"power avg {m['power_w']['avg']:.2f} W")
    click.echo(", ".join(parts))


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
         _short(h.health_message) if h.state != "gateway" else "runs no jobs (fleet_jobs=false)"]
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


# ---------------------------------------------------------------------- users


@cli.group()
def users() -> None:
    """Manage users (admins)."""


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="make the user an admin")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def users_add(obj: Ctx, name: str, admin: bool, as_json: bool) -> None:
    """Create a user; prints their first token (shown once)."""
    res = obj.client.add_user(name, admin)
    click.echo(render.dump(res) if as_json else f"user {res.user} created; token (shown once):\n{res.token}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def users_list(obj: Ctx, as_json: bool) -> None:
    """The users and whether they are admins."""
    items = obj.client.users()
    if as_json:
        click.echo(render.dump(items))
    else:
        click.echo(render.table([[u.name, "admin" if u.admin else "user"] for u in items], ["USER", "ROLE"]))


@cli.group()
def token() -> None:
    """API tokens: create (--expires), list with their last use, revoke."""


@token.command("create")
@click.option("--user", default=None, help="for another user (admins)")
@click.option("--name", default="default", show_default=True)
@click.option("--expires", default=None, metavar="DURATION", help="how long it lasts: 30d, 12h, 3600")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def token_create(obj: Ctx, user: str | None, name: str, expires: str | None, as_json: bool) -> None:
    """Create a token (printed once; only its hash is stored)."""
    res = obj.client.create_token(user, name, expires)
    click.echo(render.dump(res) if as_json else res.token)


@token.command("list")
@click.option("--user", default=None, help="another user's tokens (admins)")
@click.option("--all", "everyone", is_flag=True, help="everyone's tokens (admins)")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def token_list(obj: Ctx, user: str | None, everyone: bool, as_json: bool) -> None:
    """Tokens with their state and last use (never their values)."""
    rows = obj.client.tokens(user, everyone)
    if as_json:
        click.echo(render.dump(rows))
        return
    click.echo(f"{'ID':>5}  {'USER':<12} {'NAME':<16} {'STATE':<8} {'EXPIRES':<20} LAST USED")
    for t in rows:
        click.echo(f"{t.id:>5}  {t.user:<12} {t.name:<16} {t.state:<8} {(t.expires_at or 'never')[:19]:<20} "
                   f"{(t.last_used_at or 'never')[:19]}")


@token.command("revoke")
@click.argument("token_ids", nargs=-1, required=True, type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def token_revoke(obj: Ctx, token_ids: tuple[int, ...], as_json: bool) -> None:
    """Revoke tokens by id (fleet token list): they stop working at once."""
    done = [obj.client.revoke_token(t) for t in token_ids]
    if as_json:
        click.echo(render.dump(done))
        return
    for t in done:
        click.echo(f"revoked token {t.id} ({t.name}) of {t.user}")


def main() -> None:
    cli(prog_name="fleet")
