"""Property-based tests of the spec loader: whatever a user writes, ``fleet submit`` answers a
JobSpec or a SpecError naming the field, never another exception; and a spec it accepts can be
sent to the API as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from fleet.errors import SpecError
from fleet.models.spec import JobSpec, _part, load_spec, validate_spec
from tests.spec_strategies import FIELDS, FUZZ, near_valid_specs, yaml_texts, yaml_values


def check_outcome(data: Any, outcome: JobSpec | SpecError) -> None:
    if isinstance(outcome, SpecError):
        assert outcome.errors, "a SpecError must say what is wrong"
        for field, problem in outcome.errors:
            assert isinstance(field, str) and isinstance(problem, str) and problem
            if field and isinstance(data, dict):
                # The field is the user's (a path through the spec), not pydantic's internals.
                assert "function-" not in field, field
                tops = {_part(k) for k in data} | set(FIELDS)
                assert any(field == t or field.startswith(t + ".") for t in tops), field
        return
    # Accepted: the spec and the data the CLI sends must both be JSON (no NaN, dates, bytes).
    json.dumps(data, allow_nan=False)
    outcome.model_dump_json()
    assert JobSpec.model_validate_json(outcome.model_dump_json()) == outcome


def outcome_of(fn: Any, *args: Any) -> JobSpec | SpecError:
    try:
        return fn(*args)
    except SpecError as exc:
        return exc


@FUZZ
@given(yaml_texts)
@example("a: 2001-13-01")  # PyYAML raises ValueError for an impossible date
@example("[" * 2000)  # and RecursionError when nested deep enough
@example("name: x\nrun: 'true'\ntimeout: .nan")
@example("name: x\nrun: 'true'\nparams: {b: !!binary /w==}")
@example("name: x\nrun: 'true'\nparams: &a {x: *a}")
@pytest.mark.long
def test_any_yaml_text_gives_a_spec_or_a_spec_error(text: str) -> None:
    outcome = outcome_of(load_spec, text, "job.yaml")
    if isinstance(outcome, SpecError):
        assert "job.yaml" in str(outcome)
    try:
        data = yaml.safe_load(text)
    except Exception:
        assert isinstance(outcome, SpecError)
        return
    check_outcome(data, outcome)


@FUZZ
@given(st.one_of(yaml_values, st.dictionaries(st.sampled_from(FIELDS), yaml_values, max_size=5)))
def test_any_document_gives_a_spec_or_a_spec_error(data: Any) -> None:
    check_outcome(data, outcome_of(validate_spec, data))
    # The same document written as YAML and read back by the loader.
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    check_outcome(yaml.safe_load(text), outcome_of(load_spec, text))


@FUZZ
@given(near_valid_specs(yaml_values))
def test_near_valid_specs_name_the_field(case: tuple[dict[str, Any], list[str]]) -> None:
    spec, touched = case
    outcome = outcome_of(validate_spec, spec)
    check_outcome(spec, outcome)
    if isinstance(outcome, SpecError):
        named = {f.split(".")[0] for f, _ in outcome.errors}
        # The problem is in a field that was changed, or in one the change made required
        # (a benchmark needs a runner, a shell job a command).
        touched_names = {t or '""' for t in touched}
        assert named & (touched_names | {"run", "runner"}), (outcome.errors, touched)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: x\nrun: 'true'\ntimeout: .nan", "timeout"),
        ("name: x\nrun: 'true'\nqueue_timeout: .inf", "queue_timeout"),
        ("name: x\nrun: 'true'\nparams: {when: 2024-01-31}", "params.when"),
        ("name: x\nrun: 'true'\nparams: {b: !!binary /w==}", "params.b"),
        ("name: x\nrun: 'true'\nparams: {x: .nan}", "params.x"),
        ("name: x\nrun: 'true'\nparams: &a {x: *a}", "params"),
        ("name: x\nrun: 'true'\nenvs: {A: \"a\\0b\"}", "envs"),
        ("name: x\nrun: \"a\\0b\"", "run"),
        ("name: \"\\ud800\"\nrun: 'true'", "name"),
        ("name: x\nrun: 'true'\noutputs: ['../up']", "outputs"),
        ("name: x\nrun: 'true'\noutputs: ['/etc/*']", "outputs"),
        ("name: x\nrun: 'true'\noutputs: ['~/x']", "outputs"),
        ("name: x\nrun: 'true'\nenvs: {A: {secret: true}}", "envs.A.value"),
        ("name: x\nrun: 'true'\ninputs: {m: {kind: file, filename: '..', files: {}}}", "inputs.m.filename"),
        ("name: x\nrun: 'true'\ninputs: {m: {kind: dir, filename: d, files: {'../x': {sha256: '"
         + "0" * 64 + "', size: 1}}}}", "inputs.m.files"),
        ("name: x\nrun: 'true'\ninputs: {m: {kind: dir, filename: d, files: {a: {sha256: '" + "0" * 64
         + "', size: 1}, a/b: {sha256: '" + "0" * 64 + "', size: 1}}}}", "inputs.m.files"),
        ("name: x\nrun: 'true'\ninputs: {m: {kind: file, filename: a, files: {a: {sha256: '" + "0" * 64
         + "', size: 1}, b: {sha256: '" + "0" * 64 + "', size: 1}}}}", "inputs.m.files"),
    ],
)
def test_regressions_found_by_fuzzing(text: str, field: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(text, "job.yaml")
    fields = [f for f, _ in info.value.errors]
    assert any(f == field or f.startswith(field + ".") for f in fields), info.value.errors
    # One clear problem per field: no "should be a valid string" from the other union member.
    assert not any(field.startswith(f + ".") for f in fields), info.value.errors


def test_bad_yaml_values_are_spec_errors_in_the_cli(tmp_path, fleet_home):
    """``fleet submit`` prints one clear line (exit 2) for what PyYAML itself cannot read."""
    import subprocess
    import sys

    spec = tmp_path / "job.yaml"
    for text, words in [("name: x\nrun: 'true'\nwhen: 2024-13-01\n", "not valid YAML"),
                        ("name: x\nrun: 'true'\nparams: {when: 2024-01-31}\n", "params.when"),
                        ("[" * 5000, "not valid YAML")]:
        spec.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "fleet", "submit", str(spec)],
                              check=False, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
