"""Matrix files (fleet/models/matrix.py): validation naming the field, expansion as GitHub
Actions' include/exclude, ${{ matrix.NAME }} and FLEET_MATRIX_*, repeat. Pure, in-process."""

from __future__ import annotations

import pytest

from fleet.errors import SpecError
from fleet.models.matrix import expand, load_matrix, point_specs, validate_matrix
from fleet.models.spec import expand_steps, validate_spec


def spec(**over: object) -> dict[str, object]:
    data: dict[str, object] = {"name": "nightly", "axes": {"model": ["a", "b"], "device": ["rtx", "jetson"]},
                               "job": {"run": "bench ${{ matrix.model }} on ${{ matrix.device }}",
                                       "resources": {"accelerator": "${{ matrix.device }}"}}}
    data.update(over)
    return data


def test_include_and_exclude_follow_github_actions() -> None:
    # the example of GitHub's docs: fruit x animal, includes that extend and that add points
    m = validate_matrix({"name": "gh", "axes": {"fruit": ["apple", "pear"], "animal": ["cat", "dog"]},
                         "include": [{"color": "green"}, {"color": "pink", "animal": "cat"},
                                     {"fruit": "apple", "shape": "circle"}, {"fruit": "banana"},
                                     {"fruit": "banana", "animal": "cat"}],
                         "job": {"run": "true"}, "repeat": 1})
    assert expand(m) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]
    ex = validate_matrix(spec(exclude=[{"model": "a", "device": "jetson"}]))
    assert expand(ex) == [{"model": "a", "device": "rtx"}, {"model": "b", "device": "rtx"},
                          {"model": "b", "device": "jetson"}]


def test_values_reach_the_job_as_text_typed_values_and_environment() -> None:
    m = validate_matrix(spec(axes={"model": ["a"], "device": ["rtx"], "batch": [8]},
                             job={"run": "bench ${{ matrix.model }} x${{matrix.batch}}",
                                  "params": {"batch": "${{ matrix.batch }}"}}, repeat=1))
    [(body, repeats)] = point_specs(m, expand(m)[0], 0)
    assert body["run"] == "bench a x8" and body["params"] == {"batch": 8}
    assert body["envs"] == {"FLEET_MATRIX_MODEL": "a", "FLEET_MATRIX_DEVICE": "rtx", "FLEET_MATRIX_BATCH": "8"}
    assert body["priority"] == 300 and repeats == [1] and body["name"] == "nightly.0-a-rtx-8"
    validate_spec(body)


def test_repeat_copies_a_job_and_a_chains_last_step_only() -> None:
    m = validate_matrix(spec(repeat=3))
    bodies = point_specs(m, expand(m)[0], 0)
    assert [b["name"] for b, _ in bodies] == ["nightly.0-a-rtx.r1", "nightly.0-a-rtx.r2", "nightly.0-a-rtx.r3"]
    assert [r for _, r in bodies] == [[1], [2], [3]]
    chain = validate_matrix({"name": "c", "axes": {"m": ["x"]}, "repeat": 3, "steps": [
        {"name": "compile", "run": "compile ${{ matrix.m }}", "outputs": ["engine"]},
        {"name": "bench", "run": "bench", "inputs": {"engine": {"step": "compile"}}}]})
    [(body, repeats)] = point_specs(chain, {"m": "x"}, 0)
    assert repeats == [None, 1, 2, 3]
    steps = expand_steps(validate_spec(body), body)
    # each copy waits for the compile: one compile, three benchmarks side by side
    assert [(n, after) for n, _, after in steps] == [("compile", None), ("bench-1", "compile"),
                                                    ("bench-2", "compile"), ("bench-3", "compile")]


@pytest.mark.parametrize(("over", "field", "words"), [
    ({"axes": {}}, "axes", "at least one axis"),
    ({"axes": {"1x": [1]}}, "axes", "axis name"),
    ({"axes": {"m": []}}, "axes.m", "at least one value"),
    ({"exclude": [{"modle": "a"}]}, "", "'modle' is not an axis"),
    ({"job": None}, "", "job: (a job spec) or steps:"),
    ({"repeat": 0}, "repeat", "greater than or equal to 1"),
    ({"schedule": "every night"}, "schedule", "cron expression"),
    ({"thresholds": {"min_effect": 3}}, "", "thresholds.min_effect"),
    ({"thresholds": {"latency_ms": {"alpah": 0.01}}}, "", "thresholds.latency_ms.alpah"),
    ({"notify": {"webhook": "ftp://x"}}, "notify.webhook", "http"),
    ({"budget": "soon"}, "budget", "duration"),
    ({"job": {"run": "${{ matrix.precision }}"}}, "job.run", "no axis or include key named 'precision'"),
    ({"job": {"run": "${{ secrets.x }}"}}, "job.run", "only ${{ matrix.NAME }}"),
    ({"axes": {"a": list(range(50)), "b": list(range(50))}}, "axes", "2500 points, at most 2000"),
    ({"surprise": 1}, "surprise", "unknown field"),
    ({"axes": {f"a{i}": [0, 1, 2, 3] for i in range(30)}}, "axes", "30 axes, at most 16"),
    ({"axes": {f"a{i}": list(range(10)) for i in range(10)}}, "axes", "10000000000 combinations"),
    ({"axes": {"m": ["a"], "M": ["b"]}}, "axes", "differ only in case"),
    ({"axes": {"m": [float("nan")]}}, "axes.m", "not a finite number"),
    ({"exclude": [{"model": float("inf")}]}, "", "not a finite number"),
    ({"schedule": "0 0 31 2 *"}, "schedule", "that time never comes"),
    ({"schedule": "* * * * *"}, "schedule", "at least 15 minutes"),
    ({"thresholds": {"alpha": "x"}}, "", "thresholds.alpha: must be a finite number"),
    ({"thresholds": {"alpha": 2}}, "", "between 0 and 1"),
    ({"thresholds": {"min_samples": 2.5}}, "", "whole number"),
    ({"thresholds": {"latency_ms": {"max_cv_pct": -1}}}, "", "thresholds.latency_ms.max_cv_pct: must be >= 0"),
])
def test_errors_name_the_field(over: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_matrix(spec(**over), "nightly.yml")
    assert err.value.source == "nightly.yml"
    assert any(f == field and words in m for f, m in err.value.errors), err.value.errors


def test_a_file_that_is_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="a matrix file is a mapping"):
        load_matrix("- a\n- b\n", "m.yml")


def test_a_point_verdict_is_its_worst_news_and_a_noisy_secondary_metric_does_not_void_it() -> None:
    from fleet.matrix import point_verdict

    assert point_verdict(["unchanged", "regression", "improvement"]) == "regression"
    assert point_verdict(["unchanged", "improvement"]) == "improvement"
    assert point_verdict(["unchanged", "invalid", "not_enough_samples"]) == "unchanged"
    assert point_verdict(["not_enough_samples", "invalid"]) == "invalid"
    assert point_verdict(["not_enough_samples"]) == point_verdict([]) == "not_enough_samples"


def test_matching_is_by_type_and_value_and_an_include_key_is_empty_where_absent() -> None:
    m = validate_matrix({"name": "t", "axes": {"a": [1, True, 1.0, "1"]}, "exclude": [{"a": 1}],
                         "include": [{"a": "1", "extra": "--fast"}], "repeat": 1,
                         "job": {"run": "bench ${{ matrix.a }} ${{ matrix.extra }}"}})
    points = expand(m)
    assert points == [{"a": True}, {"a": 1.0}, {"a": "1", "extra": "--fast"}]
    runs = [point_specs(m, p, i)[0][0]["run"] for i, p in enumerate(points)]
    assert runs == ["bench true ", "bench 1.0 ", "bench 1 --fast"]
    names = [point_specs(m, p, i)[0][0]["name"] for i, p in enumerate(points)]
    assert len(set(names)) == 3  # 1.0 and "1" print alike; the index keeps their jobs apart
