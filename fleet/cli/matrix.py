"""``fleet matrix``: run a benchmark matrix, follow it, read its report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from fleet.cli.base import Ctx, cli, handle_errors, pass_ctx
from fleet.cli.render import safe
from fleet.errors import FleetError


@cli.group()
def matrix() -> None:
    """Benchmark matrices: models x device classes x precisions, judged against their history."""


def _label(values: dict[str, Any]) -> str:
    from fleet.models.matrix import point_label  # the models: only when a point is printed

    return point_label(values)


def _progress_line(run: dict[str, Any]) -> str:
    p = run.get("progress") or {}
    return (f"{run['id']}  {run['name']}  {run['state']}  points {p.get('done', 0)} done, "
            f"{p.get('failed', 0)} failed, {p.get('running', 0)} running, {p.get('waiting', 0)} waiting "
            f"of {p.get('total', 0)} ({run.get('jobs', 0)} jobs)")


def _summary(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    lines = [f"{report['id']}  {report['name']}  {report['state']}: {s['regression']} regressions, "
             f"{s['improvement']} improvements, {s['invalid']} invalid, {s['missing']} missing, "
             f"{s['not_enough_samples']} not enough samples, {s['unchanged']} unchanged"]
    for p in report["points"]:
        label = _label(p["values"])
        lines.append(f"  [{p['verdict']}] {label}")
        for name, m in p["metrics"].items():
            if m.get("status") in ("regression", "improvement", "invalid"):
                lines.append(f"      {name}: {m['status']}: {m['reason']}"
                             + (f" (from run {m['first_run']})" if m.get("first_run") else ""))
        for note in p["notes"]:
            lines.append(f"      note: {note}")
    return lines


@matrix.command("run")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="wait until every job of the run ended, then print "
              "its verdicts; exit 1 on a regression or a point that failed")
@click.option("--json", "as_json", is_flag=True, help="print the run (its id first) as JSON")
@pass_ctx
@handle_errors
def matrix_run(obj: Ctx, file: Path, wait: bool, as_json: bool) -> None:
    """Run the matrix in FILE now: its points become jobs, queued at the matrix's priority."""
    from fleet.client import calls
    from fleet.client.specs import matrix_uploads, read_matrix

    data, spec = read_matrix(file)  # checked before anything is uploaded
    client = obj.client
    uploads = matrix_uploads(client.upload, spec, file.parent)
    run = client.call(calls.matrix_run(data, uploads, str(file)))
    if not wait:
        click.echo(json.dumps(run, indent=2) if as_json else run["id"])
        return
    if not as_json:
        click.echo(safe(_progress_line(run)), err=True)
    status = client.call(calls.matrix_status(run["id"]))
    job_ids = [j for p in status["points"] for j in p["jobs"]]
    try:
        client.wait_all(job_ids)
    except KeyboardInterrupt:
        click.echo(f"\nfleet: stopped waiting; the run goes on (fleet matrix status {run['id']})", err=True)
        sys.exit(130)
    report = json.loads(client.call(calls.matrix_report(run["id"], "json")))
    click.echo(json.dumps(report, indent=2) if as_json else safe("\n".join(_summary(report))))
    bad = report["summary"]["regression"] or report["summary"]["missing"] or report["progress"].get("failed")
    sys.exit(1 if bad else 0)


@matrix.command("list")
@click.option("--name", help="only the runs of this matrix")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def matrix_list(obj: Ctx, name: str | None, limit: int, as_json: bool) -> None:
    """Matrix runs, newest first."""
    from fleet.client import calls

    runs = obj.client.call(calls.matrix_runs(name, limit))
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    if not runs:
        click.echo("no matrix runs")
    for run in runs:
        click.echo(safe(_progress_line(run)))


@matrix.command("status")
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def matrix_status(obj: Ctx, run_id: str, as_json: bool) -> None:
    """A run's progress: points done, failed, running and waiting, each point's jobs."""
    from fleet.client import calls

    run = obj.client.call(calls.matrix_status(run_id))
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    click.echo(safe(_progress_line(run)))
    for p in run["points"]:
        label = _label(p["values"])
        states = ", ".join(f"{n} {s}" for s, n in p["job_states"].items())
        click.echo(safe(f"  {p['state']:<8} {label}  ({states})"))


@matrix.command("cancel")
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def matrix_cancel(obj: Ctx, run_id: str, as_json: bool) -> None:
    """Cancel a run: every job of it that has not ended (the run is not judged)."""
    from fleet.client import calls

    run = obj.client.call(calls.matrix_cancel(run_id))
    click.echo(json.dumps(run, indent=2) if as_json else safe(_progress_line(run)))


@matrix.command("report")
@click.argument("run_id", metavar="RUN")
@click.option("--format", "fmt", type=click.Choice(["html", "junit", "json"]), default="json",
              show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write to FILE instead of stdout")
@pass_ctx
@handle_errors
def matrix_report(obj: Ctx, run_id: str, fmt: str, output: Path | None) -> None:
    """A run's verdicts: per point and metric, against the series' history."""
    from fleet.client import calls

    text = obj.client.call(calls.matrix_report(run_id, "junit" if fmt == "junit" else "json"))
    if fmt == "json":
        text = json.dumps(json.loads(text), indent=2)
    elif fmt == "html":
        from fleet import report_html  # matplotlib: only for this

        text = report_html.render(json.loads(text))
    if output is not None:
        output.write_text(text + "\n")
        click.echo(f"wrote {output} ({len(text) + 1} bytes)", err=True)
    else:
        click.echo(text)


@matrix.command("schedule")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def matrix_schedule(obj: Ctx, file: Path, as_json: bool) -> None:
    """Run the matrix in FILE on its schedule: (cron, UTC), on the server's leader. A night
    missed while the server was down runs once when it is back."""
    from fleet.client import calls
    from fleet.client.specs import matrix_uploads, read_matrix

    data, spec = read_matrix(file)
    if not spec.schedule:
        raise FleetError(f"{file}: schedule: is required to schedule a matrix (cron, e.g. '0 2 * * *')")
    client = obj.client
    uploads = matrix_uploads(client.upload, spec, file.parent)
    out = client.call(calls.matrix_schedule(data, uploads, str(file)))
    click.echo(json.dumps(out, indent=2) if as_json else
               f"{out['name']}: scheduled '{out['cron']}' (UTC); next run {out['next']}")


@matrix.command("unschedule")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def matrix_unschedule(obj: Ctx, name: str, as_json: bool) -> None:
    """Stop running the matrix NAME on its schedule (its runs and verdicts stay)."""
    from fleet.client import calls

    out = obj.client.call(calls.matrix_unschedule(name))
    click.echo(json.dumps(out, indent=2) if as_json else f"{name}: unscheduled")


@matrix.command("schedules")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def matrix_schedules(obj: Ctx, as_json: bool) -> None:
    """Scheduled matrices: cron, next run, last run and its error if it could not start."""
    from fleet.client import calls

    rows = obj.client.call(calls.matrix_schedules())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no scheduled matrices")
    for r in rows:
        err = f"  last error: {r['last_error']}" if r.get("last_error") else ""
        click.echo(safe(f"{r['name']}  '{r['cron']}'  next {r['next']}  last run {r.get('last_run') or '-'}"
                        f"  ({r['user']}){err}"))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@handle_errors
def regressions(obj: Ctx, as_json: bool) -> None:
    """Open regressions of benchmark matrices, newest first."""
    from fleet.client import calls

    rows = obj.client.call(calls.regressions())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no open regressions")
    for r in rows:
        label = _label(r["point"])
        ci = r.get("ci_pct")
        conf = (f" (95% CI {ci[0]:+.1f}..{ci[1]:+.1f}%, p={r['p_value']:.2g})"
                if ci and None not in ci and r.get("p_value") is not None else "")
        change = f"{r['change_pct']:+.1f}%" if r.get("change_pct") is not None else "(from 0)"
        before = f"{r['before']:.4g}" if r.get("before") is not None else "?"
        after = f"{r['after']:.4g}" if r.get("after") is not None else "?"
        click.echo(safe(f"{r['matrix']} [{label}] {r['metric']}: {before} -> {after} "
                        f"{change}{conf}, {r.get('kind') or 'step'} from run {r['first_run']} "
                        f"(found by {r['detected_run']})"))
        for c in r.get("changes") or []:
            click.echo(safe(f"    changed: {c}"))
