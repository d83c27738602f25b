"""Job spec validation: every error names the field."""

import pytest

from fleet.errors import SpecError
from fleet.models.spec import load_spec, parse_duration, validate_spec


def errors_of(text: str) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        load_spec(text, "job.yaml")
    assert "job.yaml" in str(info.value)
    return dict(info.value.errors)


def test_minimal_shell_job_defaults():
    spec = load_spec("name: hi\nrun: echo hi\n")
    assert spec.runner == "shell"
    assert spec.priority == 500
    assert spec.retries.infra == 2 and spec.retries.exit_nonzero == 0
    assert spec.resources.slots == 1


def test_unknown_fields_are_errors_at_any_depth():
    assert errors_of("name: a\nrun: x\nrunn: y\n") == {"runn": "unknown field"}
    assert errors_of("name: a\nrun: x\nresources: {pol: rtx}\n") == {"resources.pol": "unknown field"}
    # Names that pydantic also uses for union members are still named (found by hypothesis).
    assert errors_of("name: a\nrun: x\nbool: 1\n") == {"bool": "unknown field"}
    assert errors_of("name: a\nrun: x\nresources: {str: 1}\n") == {"resources.str": "unknown field"}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: a\nkind: benchmark\n", "runner"),
        ("name: a\n", "run"),
        ("name: 'a b'\nrun: x\n", "name"),
        ("name: a\nrun: x\nresources: {arch: arm}\n", "resources.arch"),
        ("name: a\nrun: x\npriority: 0\n", "priority"),
        ("name: a\nrun: x\npriority: 1001\n", "priority"),
        ("name: a\nrun: x\ntimeout: soon\n", "timeout"),
        ("name: a\nrun: x\nenvs: {'1BAD': x}\n", "envs"),
        ("name: a\nrun: x\nenvs: {FLEET_JOB_ID: x}\n", "envs"),
        ("name: a\nrun: x\nenvs: {A: [1]}\n", "envs.A"),
        ("name: a\nrun: x\nresources: {slots: 0}\n", "resources.slots"),
        ("name: a\nrunner: onnxruntime\nkind: benchmark\nrun: echo\n", "run"),
        ("name: a\nrun: x\ninputs: {'../m': a.onnx}\n", "inputs"),
    ],
)
def test_bad_fields_are_named(text, field):
    assert field in errors_of(text)


def test_not_a_mapping_and_bad_yaml():
    assert "" in errors_of("- a\n- b\n")
    assert "" in errors_of("name: [\n")


def test_durations_and_retries_shorthand():
    spec = load_spec("name: a\nrun: x\ntimeout: 10m\nretries: 3\nenvs: {N: 5}\n")
    assert spec.timeout == 600.0
    assert spec.retries.infra == 3
    assert spec.envs == {"N": "5"}
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration(90) == 90.0
    with pytest.raises(ValueError):
        parse_duration("-3s")


def test_yaml_scalars_in_commands_get_a_hint():
    errs = errors_of("name: a\nrun: true\n")
    assert "quote it" in errs["run"]


def test_a_run_longer_than_a_command_line_is_refused_at_submit() -> None:
    """A `run` over Linux's limit for one argument (it reaches the host as `sh -c RUN`) failed
    on the host with E2BIG; it is refused at submit, naming the field and the limit."""
    from fleet.models.spec import MAX_ARG

    cases = [
        ({"name": "x", "run": "e" * (MAX_ARG + 1)}, "run", f"longer than one command line argument may be ({MAX_ARG}"),
        ({"name": "x", "run": "true", "setup": "s" * (MAX_ARG + 1)}, "setup", "longer than one command line argument"),
        ({"name": "x", "run": "true", "envs": {"BIG": "v" * MAX_ARG}}, "envs", "BIG is"),
        ({"name": "x", "run": "true", "envs": {f"E{i}": "v" * 100_000 for i in range(11)}}, "run",
         "more than a command line and environment may hold"),
    ]
    for spec, field, problem in cases:
        with pytest.raises(SpecError) as err:
            validate_spec(spec)
        assert any(f == field and problem in p for f, p in err.value.errors), err.value.errors
    validate_spec({"name": "x", "run": "e" * MAX_ARG})  # exactly at the limit: fine
