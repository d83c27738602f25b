"""Regression verdicts for benchmark series (DESIGN.md §5.11): pure functions, no I/O.

A series is one comparison key's results over time; a *run point* is what one run (a night of a
matrix) measured for one metric of one series: its samples (one per repeat) and whether the run
was valid. For each new run point, :func:`judge` decides against the series' history:

* **invalid**: the run's own validity rules failed, or its samples are too noisy (coefficient of
  variation above ``max_cv_pct``): excluded, reported as such, never compared;
* **not enough samples**: too few samples tonight or in the baseline to decide: said, not guessed;
* **regression / improvement (step)**: tonight's samples against the baseline (the last
  ``baseline_runs`` valid runs since the last reported change) with a one-sided Mann-Whitney U
  test *and* a minimum effect size, as asv decides (a shift must be both significant and large
  enough to matter); the break is located with a change-point search so that a step the test
  missed for a night is attributed to the run where it started;
* **regression / improvement (drift)**: the last few runs against the start of a long window
  (since the last reported change): finds a slow drift that never makes a night-to-night step,
  and locates where it began with a continuous piecewise-linear change-point fit (ruptures).

numpy, scipy and ruptures are imported by the functions that need them: a matrix file's
thresholds are checked (``Thresholds``) without them.
``bench/regress.py`` measures recall and false alarms of this detector on synthetic series.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["lower", "higher"]
Status = Literal["regression", "improvement", "unchanged", "not_enough_samples", "invalid"]

# Metrics whose direction fleet knows (by name; units are in the names, DESIGN.md §5.7).
_HIGHER = ("throughput", "_per_s", "fps", "qps", "ips", "accuracy", "top1", "top5", "map")
_LOWER = ("latency", "_ms", "_s", "_w", "power", "energy", "size", "bytes", "memory", "mem_",
          "ram", "cv_pct", "temp", "seconds")


def direction_of(metric: str, declared: str | None = None) -> Direction | None:
    """Whether lower or higher is better for ``metric``: declared, else known by its name."""
    if declared in ("lower", "higher"):
        return declared  # type: ignore[return-value]
    name = metric.lower()
    if any(h in name for h in _HIGHER):
        return "higher"
    if any(name.endswith(s) or name.startswith(s) or s in name for s in _LOWER):
        return "lower"
    return None


@dataclass(frozen=True)
class Thresholds:
    """What it takes to call a change. Per metric and per matrix (``thresholds:`` in a matrix
    file), overridable."""

    min_effect_pct: float = 3.0    # a shift smaller than this is never a regression
    alpha: float = 0.002           # one-sided rank test, tonight against the baseline
    drift_alpha: float = 0.001     # one-sided rank test, recent runs against the window's start
    min_samples: int = 3           # per run
    min_baseline: int = 10         # samples in the baseline (two runs of 5)
    baseline_runs: int = 10        # valid runs the baseline takes (newest)
    drift_window: int = 30         # runs the drift test looks back
    drift_recent: int = 3          # runs pooled as "now" by the drift test
    max_cv_pct: float = 15.0       # a run noisier than this is invalid

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> Thresholds:
        """From a matrix file's ``thresholds`` (unknown keys raise naming the key)."""
        if not data:
            return cls()
        known = cls.__dataclass_fields__
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"thresholds.{key}: unknown (known: {', '.join(sorted(known))})")
            integer = isinstance(getattr(cls, key), int)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"thresholds.{key}: must be a finite number, not {value!r}")
            if integer and (value != int(value) or not 1 <= value <= 10_000):
                raise ValueError(f"thresholds.{key}: must be a whole number from 1 to 10000, not {value!r}")
            if key in ("alpha", "drift_alpha") and not 0 < value < 1:
                raise ValueError(f"thresholds.{key}: must be between 0 and 1, not {value!r}")
            if not integer and value < 0:
                raise ValueError(f"thresholds.{key}: must be >= 0, not {value!r}")
            out[key] = int(value) if integer else float(value)
        return cls(**out)


@dataclass(frozen=True)
class RunPoint:
    """What one run measured for one metric of one series."""

    run: str
    samples: tuple[float, ...]
    invalid: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str
    direction: Direction | None = None
    before: float | None = None        # baseline median
    after: float | None = None         # tonight's median (or the recent runs' for a drift)
    change_pct: float | None = None    # after / before - 1, in %
    ci_pct: tuple[float, float] | None = None  # 95% bootstrap interval of change_pct
    p_value: float | None = None
    kind: Literal["step", "drift"] | None = None
    first_run: str | None = None       # where the change started
    baseline_runs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def alarm(self) -> bool:
        return self.status in ("regression", "improvement")


def run_problems(point: RunPoint, t: Thresholds) -> list[str]:
    """Why a run's samples cannot be compared (empty: they can)."""
    problems = list(point.invalid)
    finite = [s for s in point.samples if math.isfinite(s) and abs(s) < 1e300]
    if len(finite) != len(point.samples):
        problems.append("non-finite or absurd samples (beyond 1e300)")
    # (a count that is mostly 0, frames dropped: its CV says nothing about noise)
    if len(finite) >= 2 and statistics.median(finite) != 0:
        mean = statistics.fmean(finite)
        if mean > 0:
            cv = 100 * statistics.stdev(finite) / mean
            if cv > t.max_cv_pct:
                problems.append(f"too noisy: coefficient of variation {cv:.1f}% > {t.max_cv_pct:g}%")
    return problems


def judge(history: Sequence[RunPoint], current: RunPoint, *, direction: Direction,
          thresholds: Thresholds | None = None, since: str | None = None) -> Verdict:
    """The verdict on ``current`` given the series' earlier runs (oldest first).

    ``since``: the run of the last change reported on this series and metric (an open or
    acknowledged regression, an improvement): older runs are another regime, never the
    baseline."""
    t = thresholds or Thresholds()
    problems = run_problems(current, t)
    if problems:
        return Verdict("invalid", "; ".join(problems), direction)
    if len(current.samples) < t.min_samples:
        return Verdict("not_enough_samples", f"{len(current.samples)} samples tonight, "
                       f"{t.min_samples} needed", direction)
    runs = list(history)
    if since is not None:
        cut = next((i for i, r in enumerate(runs) if r.run == since), None)
        if cut is not None:
            runs = runs[cut:]
    valid = [r for r in runs if not run_problems(r, t)]
    base = valid[-t.baseline_runs:]
    pooled = [s for r in base for s in r.samples]
    if len(pooled) < t.min_baseline:
        return Verdict("not_enough_samples", f"baseline has {len(pooled)} valid samples "
                       f"({len(base)} runs), {t.min_baseline} needed", direction,
                       after=statistics.median(current.samples))
    step = _compare(pooled, list(current.samples), direction, t, t.alpha)
    verdict = Verdict("unchanged", step.reason, direction, step.before, step.after, step.change,
                      step.ci, step.p, None, None, tuple(r.run for r in base))
    if step.alarm:
        first = _step_start(base, current, t)
        return Verdict(step.status, step.reason, direction, step.before, step.after, step.change,
                       step.ci, step.p, "step", first, tuple(r.run for r in base))
    # Drift: the newest runs against the start of a long window.
    window = valid[-t.drift_window:]
    if len(window) >= 2 * t.drift_recent + 2:
        recent = window[-(t.drift_recent - 1):] if t.drift_recent > 1 else []
        ref = window[: min(t.baseline_runs, len(window) - len(recent) - 1)]
        now = [s for r in recent for s in r.samples] + list(current.samples)
        ref_samples = [s for r in ref for s in r.samples]
        if len(ref_samples) >= t.min_baseline:
            drift = _compare(ref_samples, now, direction, t, t.drift_alpha)
            if drift.alarm:
                first = _drift_start(window, current)
                return Verdict(drift.status, "drift: " + drift.reason, direction, drift.before,
                               drift.after, drift.change, drift.ci, drift.p, "drift", first,
                               tuple(r.run for r in ref))
    return verdict


@dataclass(frozen=True)
class _Test:
    status: Status
    reason: str
    before: float
    after: float
    change: float | None
    ci: tuple[float, float] | None
    p: float

    @property
    def alarm(self) -> bool:
        return self.status in ("regression", "improvement")


def _compare(before: list[float], after: list[float], direction: Direction, t: Thresholds,
             alpha: float) -> _Test:
    from scipy.stats import mannwhitneyu

    b, a = statistics.median(before), statistics.median(after)
    if b == 0:
        return _zero_baseline(before, after, direction, alpha)
    change = 100.0 * (a / b - 1.0)
    worse_up = direction == "lower"
    went_up = change > 0
    alternative = "greater" if went_up else "less"
    p = float(mannwhitneyu(after, before, alternative=alternative).pvalue)
    significant = p < alpha
    big = abs(change) >= t.min_effect_pct
    ci = _bootstrap_ci(before, after)
    if significant and big:
        status: Status = "regression" if went_up == worse_up else "improvement"
        why = (f"median {b:.4g} -> {a:.4g} ({change:+.1f}%, 95% CI {ci[0]:+.1f}..{ci[1]:+.1f}%), "
               f"Mann-Whitney p={p:.2g} < {alpha:g}, |change| >= {t.min_effect_pct:g}%")
    else:
        status = "unchanged"
        parts = []
        if not significant:
            parts.append(f"p={p:.2g} >= {alpha:g}")
        if not big:
            parts.append(f"|{change:+.1f}%| < {t.min_effect_pct:g}%")
        why = f"median {b:.4g} -> {a:.4g} ({change:+.1f}%): " + " and ".join(parts)
    return _Test(status, why, b, a, change, ci, p)


def _zero_baseline(before: list[float], after: list[float], direction: Direction, alpha: float) -> _Test:
    """A count that was 0 (frames dropped, errors): no ratio exists, so the rank test alone
    decides, on the means' side (0 -> a few is news; 0 -> 0 is not)."""
    from scipy.stats import mannwhitneyu

    b, a = statistics.median(before), statistics.median(after)
    mb, ma = statistics.fmean(before), statistics.fmean(after)
    if mb == ma:
        return _Test("unchanged", f"median {b:.4g} -> {a:.4g}: no change", b, a, 0.0, None, 1.0)
    went_up = ma > mb
    p = float(mannwhitneyu(after, before, alternative="greater" if went_up else "less").pvalue)
    if p < alpha:
        status: Status = "regression" if went_up == (direction == "lower") else "improvement"
        return _Test(status, f"mean {mb:.4g} -> {ma:.4g} from a baseline median of 0 (no ratio): "
                             f"Mann-Whitney p={p:.2g} < {alpha:g}", b, a, None, None, p)
    return _Test("unchanged", f"mean {mb:.4g} -> {ma:.4g} from a baseline median of 0: p={p:.2g} >= "
                              f"{alpha:g}", b, a, None, None, p)


def _bootstrap_ci(before: list[float], after: list[float], n: int = 400) -> tuple[float, float]:
    """95% interval of the change of medians, in %, by a seeded bootstrap (deterministic)."""
    import numpy as np


    rng = np.random.default_rng(12345)
    bs = np.asarray(before, dtype=float)
    as_ = np.asarray(after, dtype=float)
    mb = np.median(rng.choice(bs, size=(n, bs.size)), axis=1)
    ma = np.median(rng.choice(as_, size=(n, as_.size)), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = 100.0 * (ma / mb - 1.0)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return (float(lo), float(hi))


def _medians(runs: Sequence[RunPoint]) -> list[float]:
    return [statistics.median(r.samples) for r in runs]


def _step_start(base: list[RunPoint], current: RunPoint, t: Thresholds) -> str:
    """The run where a step began: tonight, or an earlier night the test missed (the best
    single break of the run medians, l2 cost), if the runs since then are as shifted."""
    series = base + [current]
    if len(series) < 4:
        return current.run
    import numpy as np
    import ruptures


    med = np.asarray(_medians(series), dtype=float)
    brk = ruptures.Binseg(model="l2", min_size=1, jump=1).fit(med).predict(n_bkps=1)[0]
    if brk >= len(series) - 1 or brk < len(series) - 3:  # at tonight, or too far back
        return current.run
    before = float(np.median(med[:brk]))
    after = float(np.median(med[brk:]))
    tonight = float(med[-1])
    if before and abs(after / before - 1) * 100 >= t.min_effect_pct and \
            (after - before) * (tonight - before) > 0:
        return str(series[brk].run)
    return current.run


def _drift_start(window: list[RunPoint], current: RunPoint) -> str:
    """Where a drift began: the kink of a continuous piecewise-linear fit with one break."""
    series = window + [current]
    import numpy as np
    import ruptures

    med = np.asarray(_medians(series), dtype=float)
    if len(med) < 5:
        return series[0].run
    brk = ruptures.Binseg(model="clinear", min_size=2, jump=1).fit(med).predict(n_bkps=1)[0]
    return str(series[min(brk, len(series) - 1)].run)


def change_points(medians: Sequence[float], noise: float | None = None) -> list[int]:
    """Indices where a series' run medians change level (PELT, l2 cost, a BIC-like penalty
    scaled by the noise): for reports, which mark them on each series' plot."""
    if len(medians) < 6:
        return []
    import numpy as np
    import ruptures


    x = np.asarray(medians, dtype=float)
    if noise is None:  # robust noise of the medians: MAD of successive differences
        d = np.abs(np.diff(x))
        noise = float(np.median(d)) / 0.9539 if d.size else 0.0
    if not noise or not math.isfinite(noise):
        return []
    pen = 3.0 * math.log(len(x))
    bkps = ruptures.Pelt(model="l2", min_size=2, jump=1).fit(x / noise).predict(pen=pen)
    return [b for b in bkps if b < len(x)]
