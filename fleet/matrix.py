"""Matrix runs on the server: progress, and the verdict of every point (DESIGN.md §5.11).

A point's samples are the results of its measuring jobs (one per repeat); its series is the
results with the same comparison key from earlier matrix runs, one run point per run. Each
metric with a known direction is judged by fleet.regress; reports (JSON, JUnit XML) are built
from that one structure.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any
from xml.etree import ElementTree as ET

from fleet.models.enums import JobState
from fleet.models.tables import Job, MatrixRun, Result
from fleet.store import Store

TERMINAL = {JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value,
            JobState.TIMED_OUT.value}
# Counters and noise figures in a metrics section: not something to compare as a performance.
_NOT_COMPARED = {"samples", "iterations", "cv", "cv_pct"}


def points_of(run: MatrixRun) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = json.loads(run.points_json)
    return points


def progress(run: MatrixRun, jobs: list[Job]) -> dict[str, Any]:
    """Points done (every job succeeded), failed (ended, not all succeeded), running, waiting."""
    by_point: dict[int, list[Job]] = defaultdict(list)
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
                     "job_states": dict(sorted(_count(states).items()))})
    finished = bool(jobs) and all(j.state in TERMINAL for j in jobs)
    return {"points": rows, "counts": dict(counts, total=len(rows)), "jobs": len(jobs),
            "finished": finished}


def _count(states: list[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for s in states:
        out[s] += 1
    return out


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
    jobs = store.matrix_jobs(run.id)
    prog = progress(run, jobs)
    job_point = {j.id: (j.matrix_point, j.matrix_repeat) for j in jobs}
    results = [r for r in store.matrix_results(run.id) if job_point.get(r.job_id, (None, None))[1] is not None]
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
    for r, index, points_json in store.series_results(keys, run.name, run.user, run.id):
        pts = points_cache.setdefault(r.matrix_run or "", json.loads(points_json))
        if index is None or index >= len(pts):
            continue
        values = json.dumps(pts[index], sort_keys=True)
        history[(r.comparison_key or "", values)][r.matrix_run or ""].append(r)
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
        records = [json.loads(r.record_json) for r in mine if (r.comparison_key or "") == key]
        entry["environment"] = _environment(records)
        past = history.get((key, json.dumps(row["values"], sort_keys=True)), {})
        if not past:
            entry["notes"].append("new series: no earlier run with this comparison key"
                                  + _key_change(store, run, row["index"], key))
        invalid = [r for r in records if r.get("status") == "invalid"]
        valid = [r for r in records if r.get("status") != "invalid"]
        if invalid:
            reasons = sorted({why for r in invalid for why in r.get("invalid_reasons") or []})
            entry["notes"].append(f"{len(invalid)} of {len(records)} samples invalid: " + "; ".join(reasons))
        worst = "unchanged"
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
            if direction is None:
                entry["metrics"][name] = {"status": "skipped", "samples": samples,
                                          "reason": "direction unknown: declare it in the result "
                                                    "(metrics.NAME.direction: lower|higher)"}
                continue
            runs = []
            for run_id in sorted(past):
                recs = [json.loads(r.record_json) for r in past[run_id]]
                ok = [metric_values(x).get(name) for x in recs if x.get("status") != "invalid"]
                vals = tuple(v[0] for v in ok if v is not None)
                bad = tuple(sorted({w for x in recs if x.get("status") == "invalid"
                                    for w in x.get("invalid_reasons") or []})) if not vals else ()
                if vals or bad:
                    runs.append(RunPoint(run_id, vals, bad))
            v = judge(runs, RunPoint(run.id, tuple(samples), current_invalid), direction=direction,
                      thresholds=_thresholds(spec, name))
            entry["metrics"][name] = {
                "status": v.status, "reason": v.reason, "direction": direction, "samples": samples,
                "before": v.before, "after": v.after, "change_pct": v.change_pct,
                "ci_pct": list(v.ci_pct) if v.ci_pct else None, "p_value": v.p_value, "kind": v.kind,
                "first_run": v.first_run, "baseline_runs": list(v.baseline_runs),
            }
            worst = _worse(worst, v.status)
        entry["verdict"] = worst
        totals[worst] += 1
        points_out.append(entry)
    return {
        "id": run.id, "name": run.name, "user": run.user, "state": run.state, "created_at": run.created_at,
        "ended_at": run.ended_at, "progress": prog["counts"],
        "summary": {k: totals.get(k, 0) for k in ("regression", "improvement", "invalid", "missing",
                                                  "not_enough_samples", "unchanged")},
        "points": points_out,
    }


_RANK = {"regression": 5, "invalid": 4, "not_enough_samples": 3, "improvement": 2, "unchanged": 1}


def _worse(a: str, b: str) -> str:
    return a if _RANK.get(a, 0) >= _RANK.get(b, 0) else b


def _environment(records: list[dict[str, Any]]) -> dict[str, Any]:
    first = records[0] if records else {}
    tool = first.get("tool") or {}
    return {"hosts": sorted({(r.get("target") or {}).get("host") for r in records} - {None}),
            "tool": tool.get("name"), "tool_version": tool.get("version"),
            "environment": first.get("environment") or {}}


def _key_change(store: Store, run: MatrixRun, index: int, key: str) -> str:
    """For a new series: what changed since this matrix's last run of the same point."""
    values = points_of(run)[index]
    for prev in store.list_matrix_runs(run.user, name=run.name, limit=20):
        if prev.id >= run.id:
            continue
        try:
            p = points_of(prev).index(values)
        except ValueError:
            continue
        rows = [r for r in store.matrix_results(prev.id)]
        jobs = {j.id: j for j in store.matrix_jobs(prev.id)}
        old = [r for r in rows if jobs.get(r.job_id) is not None and jobs[r.job_id].matrix_point == p]
        if not old:
            continue
        from fleet.results import key_fields

        before = key_fields(json.loads(old[0].record_json))
        now_rows = [r for r in store.matrix_results(run.id) if r.comparison_key == key]
        if not now_rows:
            return ""
        after = key_fields(json.loads(now_rows[0].record_json))
        changed = [f"{k} {before[k]} -> {after[k]}" for k in sorted(after) if before.get(k) != after[k]]
        if changed:
            return f"; the key changed since run {prev.id}: " + ", ".join(changed) + " (never compared across)"
        return ""
    return ""


def junit(report: dict[str, Any]) -> str:
    """JUnit XML: a testcase per point; a regression is a failure with its explanation."""
    suite = ET.Element("testsuite", name=f"fleet matrix {report['name']}", id=report["id"])
    failures = errors = skipped = 0
    for p in report["points"]:
        label = ", ".join(f"{k}={v}" for k, v in p["values"].items())
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
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
