"""``fleet``: submit and inspect jobs, list hosts and pools, run and manage the server.

Start-up time matters here (every command is a new process): the API client and its pydantic
schemas, and the spec models, are imported when a command needs them, so ``fleet --help``
loads little more than click and httpx. Nothing server-side (SQLAlchemy, the scheduler) is
ever imported by the client's path (tests/test_cli_start.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fleet.cli import render
from fleet.cli.base import Ctx, F, cli, handle_errors, pass_ctx, short
from fleet.client import discovery as local
from fleet.errors import ApiError, FleetError
from fleet.models.enums import JobState

if TYPE_CHECKING:
    from fleet.client.sync import Client

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
            message = f": {short(event.get('message'), 60)}" if event.get("message") else ""
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


from fleet.cli import images, lab, matrix, tui  # noqa: E402,F401 - register their commands on cli


def main() -> None:
    cli(prog_name="fleet")
