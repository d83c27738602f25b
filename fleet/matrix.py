"""Matrix runs on the server: progress, and the verdict of every point (DESIGN.md §5.11).

A point's samples are the results of its measuring jobs (one per repeat); its series is the
results with the same comparison key at the same point of the same user's earlier runs of the
matrix, one run point per run. Each metric with a known direction is judged by fleet.regress;
reports (JSON, JUnit XML here, HTML in fleet.report_html) are built from that one structure.
The leader's keeper (``keep``) judges runs as they end, fires schedules and spends budgets.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

from fleet.api.submit import validate_jobs
from fleet.errors import SpecError
from fleet.ids import new_id
from fleet.matrixstore import MatrixJob
from fleet.models.enums import JobState
from fleet.models.matrix import expand, point_label, point_specs, validate_matrix
from fleet.models.tables import Job, MatrixRun, NewJob, Result, User
from fleet.store import Store

if TYPE_CHECKING:
    from fleet.api.context import ApiContext

log = logging.getLogger("fleet.matrix")

TERMINAL = {JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value,
            JobState.TIMED_OUT.value}
MAX_RUN_BYTES = 64 << 20  # the specs of one run's jobs, together
HISTORY_RUNS = 60  # earlier runs a report reads (the baseline takes 10, the drift window 30)
# Counters and noise figures in a metrics section: not something to compare as a performance.
_NOT_COMPARED = {"samples", "iterations", "cv", "cv_pct", "gpu_compute_cv_pct"}


def prepare_run(ctx: ApiContext, data: dict[str, Any], uploads: dict[str, Any], source: str | None,
                user: User, trigger: str = "manual") -> tuple[MatrixRun, Any, list[tuple[int, int | None]]]:
    """Check a matrix and every job it becomes (blocking: a worker thread): the run row, the
    accepted jobs with their chain links, and each job's (point, sample). Raises SpecError
    naming the point and the field."""
    spec = validate_matrix(data, source)
    points = expand(spec)
    used: set[str] = set()
    bodies: list[dict[str, Any]] = []
    samples: list[tuple[int, int | None]] = []
    where: list[str] = []
    for i, point in enumerate(points):
        try:
            made = point_specs(spec, point, i, uploads, used)
        except SpecError as exc:
            raise SpecError([(f"points[{i}] ({point_label(point)}).{f}", m) for f, m in exc.errors],
                            source) from None
        for job_body, repeats in made:
            bodies.append(job_body)
            where.append(f"points[{i}] ({point_label(point)})")
            samples.extend((i, r) for r in repeats)
    # before the jobs are checked one by one (the costly part)
    total = sum(len(json.dumps(b)) for b in bodies)
    if total > MAX_RUN_BYTES:  # each spec is bounded; a run of 20,000 of them must be too
        raise SpecError([("", f"the run's jobs are {total} bytes of spec, at most {MAX_RUN_BYTES}")], source)
    try:
        checked = validate_jobs(ctx, bodies, user)
    except SpecError as exc:
        errors: list[tuple[str, str]] = []
        for field, problem in exc.errors:
            head, _, rest = field.partition(".")
            if head.startswith("jobs[") and head.endswith("]"):
                field = where[int(head[5:-1])] + (f".{rest}" if rest else "")
            elif len(bodies) == 1:
                field = where[0] + (f".{field}" if field else "")
            if (field, problem) not in errors:  # N repeats of a point say it once
                errors.append((field, problem))
        raise SpecError(errors, source) from None
    for key in [k for k in uploads if k not in used]:  # kept (a schedule pins them) only if used
        del uploads[key]
    now = time.time()
    run = MatrixRun(id=new_id("m"), name=spec.name, user=user.name,
                    spec_json=json.dumps(spec.model_dump(mode="json")), points_json=json.dumps(points),
                    trigger=trigger, state="RUNNING", created_at=now,
                    deadline=now + spec.budget if spec.budget else None)
    return run, checked, samples


async def start_run(ctx: ApiContext, data: dict[str, Any], uploads: dict[str, Any], source: str | None,
                    user: User, trigger: str = "manual") -> tuple[MatrixRun, list[NewJob]]:
    """Check a matrix, then write its run and all its jobs in one transaction and queue them."""
    run, (accepted, links), samples = await asyncio.to_thread(prepare_run, ctx, data, uploads, source,
                                                              user, trigger)
    jobs = ctx.store.create_jobs(accepted, user.name, links, run=run, samples=samples)
    ctx.scheduler.matrix_active = True
    for job, (spec, _key) in zip(jobs, accepted, strict=True):
        ctx.scheduler.submit(job, spec)
    return run, jobs


def series_id(values: dict[str, Any], key: str) -> str:
    """A point's series: its axis values and its comparison key."""
    return hashlib.sha256(json.dumps([values, key], sort_keys=True).encode()).hexdigest()[:16]


def points_of(run: MatrixRun) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = json.loads(run.points_json)
    return points


def progress(run: MatrixRun, jobs: Sequence[MatrixJob | Job | NewJob]) -> dict[str, Any]:
    """Points done (every job succeeded), failed (ended, not all succeeded), running, waiting."""
    by_point: dict[int, list[MatrixJob | Job | NewJob]] = defaultdict(list)
    for job in jobs:
        by_point[job.matrix_point if job.matrix_point is not None else -1].append(job)
    rows = []
    counts = {"done": 0, "failed": 0, "running": 0, "waiting": 0}
    for i, values in enumerate(points_of(run)):
        mine = by_point.get(i, [])
        states = [j.state for j in mine]
        if mine and all(s == JobState.SUCCEEDED.value for s in states):
            state = "done"
        elif mine and all(s in TERMINAL for s in states):
            state = "failed"
        elif any(s in (JobState.STARTING.value, JobState.RUNNING.value, JobState.CANCELLING.value)
                 or s in TERMINAL for s in states):
            state = "running"
        else:
            state = "waiting"
        counts[state] += 1
        rows.append({"index": i, "values": values, "state": state, "jobs": [j.id for j in mine],
                     "job_states": dict(sorted(Counter(states).items()))})
    finished = bool(jobs) and all(j.state in TERMINAL for j in jobs)
    return {"points": rows, "counts": dict(counts, total=len(rows)), "jobs": len(jobs),
            "finished": finished}


def metric_values(record: dict[str, Any]) -> dict[str, tuple[float, str | None]]:
    """Each comparable metric of a record: its value (a stats object's median, else mean) and
    the direction the record declares for it (None: known by name, or unknown)."""
    out: dict[str, tuple[float, str | None]] = {}
    for name, value in (record.get("metrics") or {}).items():
        if name in _NOT_COMPARED:
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[name] = (float(value), None)
        elif isinstance(value, dict):
            for stat in ("median", "p50", "mean", "avg"):
                v = value.get(stat)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    declared = value.get("direction")
                    out[name] = (float(v), declared if isinstance(declared, str) else None)
                    break
    return out


def _thresholds(spec: dict[str, Any], metric: str) -> Any:
    from fleet.regress import Thresholds

    data = spec.get("thresholds") or {}
    fields = Thresholds.__dataclass_fields__
    base = {k: v for k, v in data.items() if k in fields}
    over: dict[str, Any] = data[metric] if isinstance(data.get(metric), dict) else {}
    return Thresholds.from_mapping({**base, **over})


def evaluate(store: Store, run: MatrixRun) -> dict[str, Any]:
    """The report of a run: per point and metric, the verdict against its series."""
    from fleet.regress import RunPoint, direction_of, judge

    spec = json.loads(run.spec_json)
    jobs = store.matrix.jobs(run.id)
    prog = progress(run, jobs)
    job_point = {j.id: (j.matrix_point, j.matrix_repeat) for j in jobs}
    results = [r for r in store.matrix.results(run.id) if job_point.get(r.job_id, (None, None))[1] is not None]
    by_point: dict[int, list[Result]] = defaultdict(list)
    for r in results:
        point = job_point[r.job_id][0]
        if point is not None:
            by_point[point].append(r)
    keys = sorted({r.comparison_key for r in results if r.comparison_key})
    # A point's series: the same comparison key at the same point (axis values) of earlier
    # runs of this matrix (an axis the key does not see, e.g. threads, must not mix).
    history: dict[tuple[str, str], dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    points_cache: dict[str, list[Any]] = {}
    for r, index, points_json in store.matrix.series_results(keys, run.name, run.user, run.id, HISTORY_RUNS):
        pts = points_cache.setdefault(r.matrix_run or "", json.loads(points_json))
        if index is None or index >= len(pts):
            continue
        values = json.dumps(pts[index], sort_keys=True)
        history[(r.comparison_key or "", values)][r.matrix_run or ""].append(r)
    alarms = store.matrix.last_alarms(run.user, run.name, run.id)
    earlier = _Earlier(store, run)
    judged = set(spec["metrics"]) if spec.get("metrics") else None
    cache: dict[int, tuple[dict[str, Any], dict[str, tuple[float, str | None]]]] = {}

    def read(r: Result) -> tuple[dict[str, Any], dict[str, tuple[float, str | None]]]:
        """A history record and its metric values, each read once (not once per metric)."""
        key = r.id or 0
        if key not in cache:
            record = json.loads(r.record_json)
            cache[key] = (record, metric_values(record))
        return cache[key]

    def parsed(r: Result) -> dict[str, Any]:
        return read(r)[0]

    points_out = []
    totals: dict[str, int] = defaultdict(int)
    for row in prog["points"]:
        mine = by_point.get(row["index"], [])
        entry: dict[str, Any] = {"index": row["index"], "values": row["values"], "state": row["state"],
                                 "jobs": row["jobs"], "metrics": {}, "notes": []}
        if not mine:
            entry["verdict"] = "missing"
            entry["notes"].append("no result from this point (its jobs: "
                                  + ", ".join(f"{n} {s}" for s, n in row["job_states"].items()) + ")")
            totals["missing"] += 1
            points_out.append(entry)
            continue
        point_keys = sorted({r.comparison_key or "" for r in mine})
        if len(point_keys) > 1:
            entry["notes"].append(f"its repeats have {len(point_keys)} comparison keys (hosts differ in "
                                  "driver, tool or power mode?): judged by the most common one")
        key = max(point_keys, key=lambda k: sum(1 for r in mine if r.comparison_key == k))
        entry["comparison_key"] = key
        entry["series"] = series = series_id(row["values"], key)
        records = [json.loads(r.record_json) for r in mine if (r.comparison_key or "") == key]
        entry["environment"] = _environment(records)
        past = history.get((key, json.dumps(row["values"], sort_keys=True)), {})
        if past:  # what tonight is compared with: the newest earlier run's environment
            newest = max(past)
            entry["baseline_environment"] = dict(_environment([parsed(r) for r in past[newest]]), run=newest)
        if not past:
            entry["notes"].append("new series: no earlier run with this comparison key"
                                  + earlier.key_change(row["values"], records[0]))
        invalid = [r for r in records if r.get("status") == "invalid"]
        valid = [r for r in records if r.get("status") != "invalid"]
        if invalid:
            reasons = sorted({why for r in invalid for why in r.get("invalid_reasons") or []})
            entry["notes"].append(f"{len(invalid)} of {len(records)} samples invalid: " + "; ".join(reasons))
        statuses: list[str] = []
        per_metric: dict[str, list[float]] = defaultdict(list)
        declared: dict[str, str | None] = {}
        for rec in valid:
            for name, (value, direction) in metric_values(rec).items():
                per_metric[name].append(value)
                declared[name] = declared.get(name) or direction
        if not valid:
            reasons = sorted({why for r in invalid for why in r.get("invalid_reasons") or []})
            current_invalid = tuple(reasons) or ("every sample invalid",)
            for rec in invalid:
                for name, (_value, direction) in metric_values(rec).items():
                    per_metric.setdefault(name, [])
                    declared[name] = declared.get(name) or direction
        else:
            current_invalid = ()
        for name, samples in sorted(per_metric.items()):
            direction = direction_of(name, declared.get(name))
            if judged is not None and name not in judged:
                entry["metrics"][name] = {"status": "skipped", "samples": samples,
                                          "reason": "not judged: not in the matrix's metrics:"}
                continue
            if direction is None:
                entry["metrics"][name] = {"status": "skipped", "samples": samples,
                                          "reason": "direction unknown: declare it in the result "
                                                    "(metrics.NAME.direction: lower|higher)"}
                continue
            runs = []
            for run_id in sorted(past):
                recs = [read(r) for r in past[run_id]]
                ok = [values.get(name) for x, values in recs if x.get("status") != "invalid"]
                vals = tuple(v[0] for v in ok if v is not None)
                bad = tuple(sorted({w for x, _ in recs if x.get("status") == "invalid"
                                    for w in x.get("invalid_reasons") or []})) if not vals else ()
                if vals or bad:
                    runs.append(RunPoint(run_id, vals, bad))
            v = judge(runs, RunPoint(run.id, tuple(samples), current_invalid), direction=direction,
                      thresholds=_thresholds(spec, name), since=alarms.get((series, name)))
            entry["metrics"][name] = {
                "status": v.status, "reason": v.reason, "direction": direction, "samples": samples,
                "before": v.before, "after": v.after, "change_pct": v.change_pct,
                "ci_pct": list(v.ci_pct) if v.ci_pct else None, "p_value": v.p_value, "kind": v.kind,
                "first_run": v.first_run, "baseline_runs": list(v.baseline_runs),
            }
            if v.alarm:
                entry["metrics"][name]["changes"] = _changes(past, v.baseline_runs, records)
            entry["metrics"][name].update(_series(runs, RunPoint(run.id, tuple(samples), current_invalid),
                                                  v.baseline_runs, _thresholds(spec, name)))
            statuses.append(v.status)
        verdict = point_verdict(statuses)
        entry["verdict"] = verdict
        totals[verdict] += 1
        points_out.append(entry)
    return {
        "id": run.id, "name": run.name, "user": run.user, "state": run.state, "created_at": run.created_at,
        "ended_at": run.ended_at, "progress": prog["counts"],
        "summary": {k: totals.get(k, 0) for k in ("regression", "improvement", "invalid", "missing",
                                                  "not_enough_samples", "unchanged")},
        "points": points_out,
    }


def point_verdict(statuses: list[str]) -> str:
    """A point's verdict from its metrics': a regression if any metric regressed, else an
    improvement if any improved, else unchanged if any metric could be judged (a secondary
    metric too noisy to compare is said on that metric, it does not void the point), else why
    none could be (invalid before not enough samples)."""
    for status in ("regression", "improvement", "unchanged", "invalid", "not_enough_samples"):
        if status in statuses:
            return status
    return "not_enough_samples"


def _environment(records: list[dict[str, Any]]) -> dict[str, Any]:
    first = records[0] if records else {}
    tool = first.get("tool") or {}
    return {"hosts": sorted({(r.get("target") or {}).get("host") for r in records} - {None}),
            "tool": tool.get("name"), "tool_version": tool.get("version"),
            "environment": first.get("environment") or {}}


def _series(runs: list[Any], current: Any, baseline: tuple[str, ...], thresholds: Any,
            keep: int = 60) -> dict[str, Any]:
    """What a report plots: the series' runs (median and samples; invalid ones marked, with
    why), where its level changed, and the baseline's band (5th-95th percentile of its samples)."""
    from fleet.regress import change_points, run_problems

    points = [*runs[-(keep - 1):], current]
    problems = {p.run: run_problems(p, thresholds) for p in points}
    valid = [p for p in points if p.samples and not problems[p.run]]
    medians = [statistics.median(p.samples) for p in valid]
    band = sorted(s for p in runs if p.run in baseline for s in p.samples)
    return {
        "series": [{"run": p.run, "median": statistics.median(p.samples) if p.samples else None,
                    "samples": list(p.samples), "invalid": problems[p.run]} for p in points],
        "change_points": [valid[i].run for i in change_points(medians)],
        "baseline_band": [band[int(0.05 * (len(band) - 1))], band[int(0.95 * (len(band) - 1))]] if band else None,
    }


def _changes(past: dict[str, list[Result]], baseline: tuple[str, ...], now: list[dict[str, Any]]) -> list[str]:
    """What differs between the newest baseline run and tonight: hosts, tool, model, driver,
    any environment value (the comparison key was equal, so none of its fields)."""
    if not baseline or baseline[-1] not in past or not now:
        return []
    before = [json.loads(r.record_json) for r in past[baseline[-1]]]
    out = []
    hosts_b = sorted({(r.get("target") or {}).get("host") or "?" for r in before})
    hosts_a = sorted({(r.get("target") or {}).get("host") or "?" for r in now})
    if hosts_b != hosts_a:
        out.append(f"hosts {', '.join(hosts_b)} -> {', '.join(hosts_a)}")
    b, a = before[0], now[0]
    for section, field in (("tool", "version"), ("model", "sha256"), ("model", "name")):
        vb, va = (b.get(section) or {}).get(field), (a.get(section) or {}).get(field)
        if vb != va:
            out.append(f"{section}.{field} {vb} -> {va}")
    eb, ea = b.get("environment") or {}, a.get("environment") or {}
    for k in sorted(set(eb) | set(ea)):
        if eb.get(k) != ea.get(k) and not isinstance(eb.get(k), (dict, list)):
            out.append(f"environment.{k} {eb.get(k)} -> {ea.get(k)}")
    return out[:20]


def verdict_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a judged run leaves behind (matrix_verdicts)."""
    now = time.time()
    rows = []
    for p in report["points"]:
        for metric, m in p["metrics"].items():
            if m.get("status") == "skipped" or "series" not in p:
                continue
            rows.append(dict(run=report["id"], user=report["user"], name=report["name"], point=p["index"],
                             series=p["series"], metric=metric, status=m["status"], kind=m.get("kind"),
                             first_run=m.get("first_run"), change_pct=m.get("change_pct"), created_at=now,
                             data_json=json.dumps({"values": p["values"], **m})))
    return rows


class _Earlier:
    """The same user's earlier runs of a matrix, each read once (for new series' notes)."""

    def __init__(self, store: Store, run: MatrixRun) -> None:
        self.store, self.run = store, run
        self.runs = [r for r in store.matrix.list_runs(run.user, name=run.name, limit=20) if r.id < run.id]
        self._points: dict[str, dict[int, list[Result]]] = {}

    def results_at(self, prev: MatrixRun) -> dict[int, list[Result]]:
        if prev.id not in self._points:
            jobs = {j.id: j.matrix_point for j in self.store.matrix.jobs(prev.id)}
            by_point: dict[int, list[Result]] = defaultdict(list)
            for r in self.store.matrix.results(prev.id):
                point = jobs.get(r.job_id)
                if point is not None:
                    by_point[point].append(r)
            self._points[prev.id] = by_point
        return self._points[prev.id]

    def key_change(self, values: dict[str, Any], now: dict[str, Any]) -> str:
        """What changed since the newest earlier run of the same point (a new series)."""
        from fleet.results import key_fields

        for prev in self.runs:
            try:
                p = points_of(prev).index(values)
            except ValueError:
                continue
            old = self.results_at(prev).get(p)
            if not old:
                continue
            before, after = key_fields(json.loads(old[0].record_json)), key_fields(now)
            changed = [f"{k} {before[k]} -> {after[k]}" for k in sorted(after) if before.get(k) != after[k]]
            if changed:
                return f"; the key changed since run {prev.id}: " + ", ".join(changed) + " (never compared across)"
            return ""
        return ""


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold (and a terminal shows as it is): control characters as '?'."""
    return _XML_BAD.sub("?", text)


def junit(report: dict[str, Any]) -> str:
    """JUnit XML: a testcase per point; a regression is a failure with its explanation."""
    suite = ET.Element("testsuite", name=f"fleet matrix {report['name']}", id=report["id"])
    failures = errors = skipped = 0
    for p in report["points"]:
        label = point_label(p["values"])
        case = ET.SubElement(suite, "testcase", classname=f"matrix.{report['name']}", name=label)
        lines = [f"{m}: {d.get('status')}: {d.get('reason')}" for m, d in p["metrics"].items()]
        text = "\n".join(lines + p["notes"])
        if p["verdict"] == "regression":
            failures += 1
            bad = [m for m, d in p["metrics"].items() if d.get("status") == "regression"]
            ET.SubElement(case, "failure", message="regression: " + ", ".join(bad), type="regression").text = text
        elif p["verdict"] == "missing":
            errors += 1
            ET.SubElement(case, "error", message="no result", type="missing").text = text
        elif p["verdict"] in ("invalid", "not_enough_samples"):
            skipped += 1
            ET.SubElement(case, "skipped", message=p["verdict"].replace("_", " ")).text = text
        else:
            ET.SubElement(case, "system-out").text = text
    suite.set("tests", str(len(report["points"])))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    for el in suite.iter():
        if el.text:
            el.text = _xml_text(el.text)
        for k, v in list(el.attrib.items()):
            el.attrib[k] = _xml_text(v)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


# ---------------------------------------------------------------------- the leader's keeper


async def keep(ctx: ApiContext, interval: float = 30.0) -> None:
    """On the leader: judge each run as soon as its last job ends (store its verdicts, tell
    its webhook), cancel what still waits when a run's time budget is spent, and start the
    matrices whose schedule came (every ``interval`` seconds)."""
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()

    def job_ended(_job_id: str) -> None:
        loop.call_soon_threadsafe(wake.set)

    ctx.scheduler.on_job_end = job_ended
    while True:
        try:
            async with asyncio.timeout(interval):
                await wake.wait()
            await asyncio.sleep(0.05)  # a batch of jobs ending: one look
        except TimeoutError:
            pass
        wake.clear()
        if not ctx.scheduler.leading:
            continue
        try:
            await tick(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("matrix keeper")


async def tick(ctx: ApiContext, now: float | None = None) -> None:
    now = time.time() if now is None else now
    store = ctx.store
    ctx.scheduler.matrix_active = False  # before the look: a run started meanwhile sets it again
    running = await asyncio.to_thread(store.matrix.running_runs)
    if running:
        ctx.scheduler.matrix_active = True
    for run in running:  # one run that cannot be judged must not stop the others (or schedules)
        try:
            await _keep_run(ctx, run, now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("matrix run %s", run.id)
    try:
        await fire_schedules(ctx, now)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("matrix schedules")


async def _keep_run(ctx: ApiContext, run: MatrixRun, now: float) -> None:
    store = ctx.store
    jobs = await asyncio.to_thread(store.matrix.jobs, run.id)
    if run.deadline is not None and now > run.deadline:
        waiting = [j.id for j in jobs if j.state in (JobState.PENDING.value, JobState.RETRYING.value)]
        for job_id in waiting:
            await ctx.scheduler.cancel(job_id)
        if waiting:
            log.info("matrix run %s: time budget spent; %d waiting jobs cancelled", run.id, len(waiting))
            jobs = await asyncio.to_thread(store.matrix.jobs, run.id)
    if progress(run, jobs)["finished"]:
        await judge_run(ctx, run)


async def judge_run(ctx: ApiContext, run: MatrixRun) -> dict[str, Any]:
    """Judge a run whose jobs all ended: store its verdicts, mark it DONE and tell its webhook,
    once (the keeper and a reader may both come; the first write wins). Returns the report."""
    try:
        report = await asyncio.to_thread(evaluate, ctx.store, run)
    except Exception as exc:  # a run whose results cannot be judged ends so, saying why, once
        log.exception("matrix run %s: cannot be judged", run.id)
        report = {"id": run.id, "name": run.name, "user": run.user,
                  "error": f"this run could not be judged: {type(exc).__name__}: {exc}"[:2000]}
        await asyncio.to_thread(ctx.store.matrix.judge_run, run.id, report, [], "ERROR")
        return report
    if await asyncio.to_thread(ctx.store.matrix.judge_run, run.id, report, verdict_rows(report)):
        log.info("matrix run %s (%s) judged: %s", run.id, run.name, report["summary"])
        report["state"] = "DONE"
        await notify(json.loads(run.spec_json), report, ctx.webhook_allow_private)
    return report


async def fire_schedules(ctx: ApiContext, now: float) -> None:
    store = ctx.store
    schedules = await asyncio.to_thread(store.matrix.schedules, None)
    if not schedules:
        return
    # Imported in a thread the first time (0.1 s of imports, not in the event loop's callback).
    croniter = (await asyncio.to_thread(importlib.import_module, "croniter")).croniter
    for sched in schedules:
        try:
            due = float(croniter(sched.cron, now).get_prev(float))
        except Exception:  # noqa: BLE001 - a cron stored before its checks: skipped, said
            log.warning("matrix schedule %s of %s: cron %r has no time", sched.name, sched.user, sched.cron)
            continue
        if due <= sched.last_fired:
            continue
        # Claimed once for the latest due time: nights missed while no leader ran are one run.
        if not await asyncio.to_thread(store.matrix.claim_schedule, sched.user, sched.name, due):
            continue
        user = await asyncio.to_thread(store.get_user, sched.user)
        if user is None:
            await asyncio.to_thread(store.matrix.schedule_fired, sched.user, sched.name, None, f"user {sched.user} is gone")
            continue
        try:
            run, _jobs = await start_run(ctx, json.loads(sched.spec_json), json.loads(sched.uploads_json),
                                         f"schedule {sched.name}", user, trigger="schedule")
        except Exception as exc:  # noqa: BLE001 - said on the schedule; the next night tries again
            log.warning("matrix schedule %s: %s", sched.name, exc)
            await asyncio.to_thread(store.matrix.schedule_fired, sched.user, sched.name, None, str(exc)[:2000])
            continue
        log.info("matrix schedule %s: run %s", sched.name, run.id)
        await asyncio.to_thread(store.matrix.schedule_fired, sched.user, sched.name, run.id, None)


def slack_body(report: dict[str, Any]) -> dict[str, Any]:
    """A Slack-compatible webhook body: a text, and blocks with each regression."""
    s = report["summary"]
    head = (f"fleet matrix {report['name']} run {report['id']}: {s['regression']} regression"
            f"{'s' if s['regression'] != 1 else ''}, {s['invalid']} invalid, {s['missing']} missing")
    lines = []
    for p in report["points"]:
        for metric, m in p["metrics"].items():
            if m.get("status") == "regression":
                label = point_label(p["values"])
                change = f"{m['change_pct']:+.1f}%" if m.get("change_pct") is not None else "from 0"
                lines.append(f"• {label}: {metric} {m['before']:.4g} -> {m['after']:.4g} "
                             f"({change}, from run {m.get('first_run')})")
    return {"text": head, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{head}*"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines[:40]) or "-"}}]}


WEBHOOK_DEADLINE = 15.0  # seconds a webhook call may take in all (a slow server cannot hold the keeper)


async def notify(spec: dict[str, Any], report: dict[str, Any], allow_private: bool = False) -> None:
    """POST the webhook of a run that ended with regressions, once, within WEBHOOK_DEADLINE;
    an address inside the controller's network is refused unless allowed. Failures are logged."""
    url = ((spec.get("notify") or {}) or {}).get("webhook")
    if not url or not report["summary"]["regression"]:
        return
    import ipaddress
    from urllib.parse import urlsplit

    import httpx

    try:
        async with asyncio.timeout(WEBHOOK_DEADLINE):
            parts = urlsplit(url)
            if not allow_private:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
                for info in infos:
                    ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                    if not ip.is_global:
                        log.warning("matrix %s: webhook %s refused: %s is not a public address "
                                    "(config webhook_allow_private)", report["name"], url, ip)
                        return
            async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as http:
                resp = await http.post(url, json=slack_body(report))
                if resp.status_code >= 400:
                    log.warning("matrix %s: webhook %s answered %d", report["name"], url, resp.status_code)
    except (TimeoutError, OSError, ValueError, httpx.HTTPError) as exc:
        log.warning("matrix %s: webhook %s: %s", report["name"], url, exc or type(exc).__name__)
