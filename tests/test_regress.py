"""The regression detector (fleet/regress.py) on series with known changes: pure, in-process.
Its recall and false-alarm rates over many series are measured by bench/regress.py."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.regress import RunPoint, Thresholds, change_points, direction_of, judge


def nights(levels: list[float], noise_pct: float, seed: int = 7, samples: int = 5) -> list[RunPoint]:
    rng = np.random.default_rng(seed)
    return [RunPoint(f"r{i}", tuple(float(v) for v in 10 * lv * rng.lognormal(0, noise_pct / 100, samples)))
            for i, lv in enumerate(levels)]


def test_a_step_is_a_regression_from_the_night_it_started() -> None:
    runs = nights([1.0] * 12 + [1.06], 2)
    v = judge(runs[:-1], runs[-1], direction="lower")
    assert v.status == "regression" and v.kind == "step" and v.first_run == "r12"
    assert v.change_pct is not None and 3 < v.change_pct < 10
    assert v.ci_pct is not None and v.ci_pct[0] > 0  # the interval excludes no change
    assert v.p_value is not None and v.p_value < 0.002
    assert "Mann-Whitney" in v.reason and len(v.baseline_runs) == 10


def test_direction_decides_regression_or_improvement() -> None:
    runs = nights([1.0] * 12 + [1.06], 2)
    assert judge(runs[:-1], runs[-1], direction="higher").status == "improvement"
    faster = nights([1.0] * 12 + [0.94], 2)
    assert judge(faster[:-1], faster[-1], direction="lower").status == "improvement"


def test_noise_alone_is_unchanged_and_a_small_significant_shift_is_not_a_regression() -> None:
    runs = nights([1.0] * 30, 2)
    assert all(judge(runs[:i], runs[i], direction="lower").status == "unchanged" for i in range(10, 30))
    quiet = nights([1.0] * 12 + [1.02], 0.2)  # 2% at 0.2% noise: significant, below 3%
    v = judge(quiet[:-1], quiet[-1], direction="lower")
    assert v.status == "unchanged" and v.p_value is not None and v.p_value < 0.002
    assert "< 3%" in v.reason


def test_a_noisy_run_is_invalid_and_not_compared() -> None:
    runs = nights([1.0] * 12, 2)
    noisy = RunPoint("bad", (10.0, 14.0, 7.0, 12.0, 9.0))
    v = judge(runs, noisy, direction="lower")
    assert v.status == "invalid" and "coefficient of variation" in v.reason
    flagged = RunPoint("flag", runs[0].samples, invalid=("clocks not locked",))
    assert judge(runs, flagged, direction="lower").status == "invalid"
    # an invalid run in the history is left out of the baseline
    v = judge(runs + [noisy], runs[1], direction="lower")
    assert "bad" not in v.baseline_runs


def test_too_few_samples_are_said_not_guessed() -> None:
    runs = nights([1.0] * 3 + [1.5], 1)
    assert judge(runs[:1], runs[-1], direction="lower").status == "not_enough_samples"
    two = RunPoint("two", (10.0, 10.1))
    assert judge(runs[:3], two, direction="lower").status == "not_enough_samples"


def test_since_starts_a_new_baseline_after_a_reported_change() -> None:
    runs = nights([1.0] * 12 + [1.1] * 3, 2)
    assert judge(runs[:12], runs[12], direction="lower").status == "regression"
    # reported at r12: the nights after it are compared with the new level, not the old one
    v = judge(runs[:14], runs[14], direction="lower", since="r12")
    assert v.status == "unchanged" and v.baseline_runs == ("r12", "r13")


def test_a_slow_drift_is_found_and_located_near_its_start() -> None:
    levels = [1.0] * 20 + [1.0 + 0.005 * (i + 1) for i in range(20)]
    runs = nights(levels, 1)
    found = [judge(runs[:i], runs[i], direction="lower") for i in range(20, 40)]
    alarms = [v for v in found if v.alarm]
    assert alarms and alarms[0].status == "regression" and alarms[0].kind == "drift"
    assert abs(int(alarms[0].first_run[1:]) - 20) <= 5  # type: ignore[index]


def test_thresholds_from_a_matrix_file_name_unknown_keys() -> None:
    assert Thresholds.from_mapping({"min_effect_pct": 5}).min_effect_pct == 5
    with pytest.raises(ValueError, match="thresholds.min_effect: unknown"):
        Thresholds.from_mapping({"min_effect": 5})


@pytest.mark.parametrize(("metric", "want"), [
    ("latency_ms", "lower"), ("throughput_per_s", "higher"), ("power_w", "lower"),
    ("fps", "higher"), ("engine_size_bytes", "lower"), ("ram_mb", "lower"), ("widgets", None),
])
def test_known_directions(metric: str, want: str | None) -> None:
    assert direction_of(metric) == want
    assert direction_of("widgets", "higher") == "higher"


def test_change_points_mark_a_level_shift() -> None:
    rng = np.random.default_rng(3)
    med = list(np.r_[np.ones(15), 1.08 * np.ones(15)] * (1 + rng.normal(0, 0.01, 30)))
    assert change_points(med) == [15]
    assert change_points(list(1 + rng.normal(0, 0.01, 30))) == []


def test_a_count_that_was_zero_is_judged_by_the_rank_test_alone() -> None:
    zeros = [RunPoint(f"r{i}", (0.0,) * 5) for i in range(4)]
    assert judge(zeros, RunPoint("same", (0.0,) * 5), direction="lower").status == "unchanged"
    v = judge(zeros, RunPoint("drops", (3.0, 3.0, 4.0, 3.0, 3.0)), direction="lower")
    assert v.status == "regression" and v.change_pct is None and "no ratio" in v.reason
    one_blip = judge(zeros, RunPoint("blip", (0.0, 0.0, 0.0, 0.0, 1.0)), direction="lower")
    assert one_blip.status == "unchanged"
