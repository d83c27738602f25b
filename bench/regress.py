#!/usr/bin/env python3
"""How well fleet's regression detector (fleet/regress.py) finds planted changes, against two
common detectors measured on the same synthetic series in the same run.

    python bench/regress.py [--series 100] [--nights 40] [--samples 5] [--outliers 0.0] [--json]

Each series is a latency (lower is better) measured every night with ``--samples`` samples
(one per repeat), multiplicative log-normal noise of 1, 2, 5 and 10%, optionally a share of
outlier samples (+25%, a thermal hiccup). Scenarios: no change; a +5% step at night 20; a -5%
step (an improvement); a drift of +0.5% a night from night 20 (+10% by night 40). Every night
from night 6 on is judged as the server would: against the history, with the last reported
change as the start of the baseline.

Printed per noise level and scenario:
* recall: series whose change is flagged with the right sign (a step within 2 nights of it, a
  drift by the last night), and how many of those name the right first night (a step: exactly;
  a drift: within 5 nights);
* false alarms per 100 series-nights: any flag on a night with nothing new to find (every night
  of the no-change series, and the nights before the change in the others).

Baselines, same series: ``threshold`` flags |mean tonight / mean last night - 1| >= 5% (a plain
percentage alert); ``zscore`` flags tonight's mean outside mean +- 3 sd of the last 10 nights'
means (a conbench-like z-score). Targets (issue 12): >= 95% of 5% steps found at 2% noise with
5 samples; <= 1 false alarm per 100 series-nights at 5% noise.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from fleet.regress import RunPoint, Thresholds, judge

NOISES = (1.0, 2.0, 5.0, 10.0)
SCENARIOS = ("none", "step+5%", "step-5%", "drift+0.5%/night")
CHANGE_AT = 20
FIRST_JUDGED = 6


def level(scenario: str, night: int) -> float:
    if scenario == "none" or night < CHANGE_AT:
        return 1.0
    if scenario == "step+5%":
        return 1.05
    if scenario == "step-5%":
        return 0.95
    return 1.0 + 0.005 * (night - CHANGE_AT + 1)


def series(rng: np.random.Generator, scenario: str, noise: float, nights: int, samples: int,
           outliers: float) -> list[list[float]]:
    out = []
    for night in range(nights):
        sigma = math.log1p(noise / 100)
        x = 10.0 * level(scenario, night) * rng.lognormal(0.0, sigma, samples)
        if outliers:
            x = np.where(rng.random(samples) < outliers, x * 1.25, x)
        out.append([float(v) for v in x])
    return out


def expected_sign(scenario: str) -> str | None:
    return {"none": None, "step-5%": "improvement"}.get(scenario, "regression")


def run_fleet(data: list[list[float]], t: Thresholds) -> tuple[list[tuple[int, str, int]], float]:
    """Alarms as (night, status, first night), judging every night as the server would."""
    points = [RunPoint(f"n{i}", tuple(s)) for i, s in enumerate(data)]
    since: str | None = None
    alarms = []
    spent = 0.0
    for night in range(FIRST_JUDGED, len(points)):
        t0 = time.perf_counter()
        v = judge(points[:night], points[night], direction="lower", thresholds=t, since=since)
        spent += time.perf_counter() - t0
        if v.alarm:
            first = int((v.first_run or points[night].run)[1:])
            alarms.append((night, v.status, first))
            since = v.first_run
    return alarms, spent


def run_threshold(data: list[list[float]]) -> list[tuple[int, str, int]]:
    alarms = []
    for night in range(FIRST_JUDGED, len(data)):
        a, b = statistics.fmean(data[night]), statistics.fmean(data[night - 1])
        change = a / b - 1
        if abs(change) >= 0.05:
            alarms.append((night, "regression" if change > 0 else "improvement", night))
    return alarms


def run_zscore(data: list[list[float]]) -> list[tuple[int, str, int]]:
    alarms = []
    for night in range(FIRST_JUDGED, len(data)):
        means = [statistics.fmean(d) for d in data[max(0, night - 10):night]]
        mu, sd = statistics.fmean(means), statistics.stdev(means)
        a = statistics.fmean(data[night])
        if sd and abs(a - mu) > 3 * sd:
            alarms.append((night, "regression" if a > mu else "improvement", night))
    return alarms


def score(all_alarms: list[list[tuple[int, str, int]]], scenario: str, nights: int) -> dict[str, float]:
    want = expected_sign(scenario)
    found = attributed = false = quiet_nights = 0
    for alarms in all_alarms:
        quiet_end = nights if want is None else CHANGE_AT
        quiet_nights += quiet_end - FIRST_JUDGED
        false += sum(1 for night, _, _ in alarms if night < quiet_end)
        if want is None:
            continue
        if scenario.startswith("step"):
            hits = [a for a in alarms if CHANGE_AT <= a[0] <= CHANGE_AT + 2 and a[1] == want]
            ok = [a for a in hits if a[2] == CHANGE_AT]
        else:
            hits = [a for a in alarms if a[0] >= CHANGE_AT and a[1] == want]
            ok = [a for a in hits if abs(a[2] - CHANGE_AT) <= 5]
        found += bool(hits)
        attributed += bool(ok)
    n = len(all_alarms)
    return {
        "recall_pct": 100.0 * found / n if want else math.nan,
        "attributed_pct": 100.0 * attributed / n if want else math.nan,
        "false_per_100": 100.0 * false / quiet_nights if quiet_nights else math.nan,
    }


def cell(args: tuple[float, str, int, int, int, float, dict[str, float]]) -> dict[str, object]:
    noise, scenario, n_series, nights, samples, outliers, overrides = args
    rng = np.random.default_rng(zlib.crc32(f"{noise}/{scenario}".encode()))
    datas = [series(rng, scenario, noise, nights, samples, outliers) for _ in range(n_series)]
    fleet, spent = [], 0.0
    for d in datas:
        alarms, s = run_fleet(d, Thresholds.from_mapping(overrides))
        fleet.append(alarms)
        spent += s
    judged = n_series * (nights - FIRST_JUDGED)
    return {
        "noise_pct": noise, "scenario": scenario,
        "fleet": score(fleet, scenario, nights),
        "threshold": score([run_threshold(d) for d in datas], scenario, nights),
        "zscore": score([run_zscore(d) for d in datas], scenario, nights),
        "ms_per_verdict": 1000 * spent / judged,
    }


def fmt(v: float) -> str:
    return "   -" if math.isnan(v) else f"{v:5.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--nights", type=int, default=40)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--outliers", type=float, default=0.0, help="share of outlier samples (+25%%)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a threshold of fleet's detector (fleet.regress.Thresholds)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.nights <= CHANGE_AT + 2:
        ap.error(f"--nights must be > {CHANGE_AT + 2}")
    overrides = {}
    for kv in a.set:
        key, _, value = kv.partition("=")
        overrides[key] = float(value) if "." in value else int(value)
    Thresholds.from_mapping(overrides)  # unknown keys fail here, naming the key
    jobs = [(n, s, a.series, a.nights, a.samples, a.outliers, overrides)
            for n in NOISES for s in SCENARIOS]
    with ProcessPoolExecutor() as pool:
        rows = list(pool.map(cell, jobs))
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{a.series} series x {a.nights} nights, {a.samples} samples a night, outliers "
          f"{100 * a.outliers:g}%; change at night {CHANGE_AT}, judged from night {FIRST_JUDGED}")
    print(f"{'noise':>5} {'scenario':<17} | {'fleet: recall attrib false/100':<31}| "
          f"{'threshold: recall false/100':<28}| {'zscore: recall false/100':<25}| ms/verdict")
    for r in rows:
        f, th, z = r["fleet"], r["threshold"], r["zscore"]  # type: ignore[misc]
        print(f"{r['noise_pct']:4g}% {r['scenario']:<17} |   {fmt(f['recall_pct'])}% "
              f"{fmt(f['attributed_pct'])}%  {fmt(f['false_per_100'])}        | "
              f"   {fmt(th['recall_pct'])}%  {fmt(th['false_per_100'])}           | "
              f"  {fmt(z['recall_pct'])}%  {fmt(z['false_per_100'])}       | {r['ms_per_verdict']:.2f}")
    by = {(r["noise_pct"], r["scenario"]): r for r in rows}
    step = by[(2.0, "step+5%")]["fleet"]["recall_pct"]  # type: ignore[index]
    false5 = max(by[(5.0, s)]["fleet"]["false_per_100"] for s in SCENARIOS)  # type: ignore[index]
    th5 = max(by[(5.0, s)]["threshold"]["false_per_100"] for s in SCENARIOS)  # type: ignore[index]
    print(f"5% steps found at 2% noise: {step:.1f}% (target >= 95%): "
          f"{'met' if step >= 95 else 'NOT MET'}")
    print(f"false alarms per 100 series-nights at 5% noise: {false5:.2f} (target <= 1): "
          f"{'met' if false5 <= 1 else 'NOT MET'}; threshold detector {th5:.2f} "
          f"({th5 / false5 if false5 else math.inf:.0f}x fleet's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
