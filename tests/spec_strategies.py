"""Hypothesis strategies for job specs: arbitrary documents, odd values, near-valid specs.

Shared by the property tests of the spec loader (tests/test_fuzz_spec.py) and of the API
(tests/test_fuzz_api.py). Every generated valid spec runs ``true`` at most, on a drained host.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fleet.models.spec import JobSpec

FIELDS = sorted(JobSpec.model_fields)
NESTED = {
    "resources": ["pool", "arch", "accelerator", "labels", "slots"],
    "retries": ["infra", "exit_nonzero"],
    "hooks": ["before", "after"],
}
SHA = "0" * 64

# Reproducible in CI: a fixed derandomized run, no example database, no per-example deadline.
# FLEET_FUZZ_EXAMPLES=500 for a deep run (specs get 5x the API's per-route count: 100 here).
EXAMPLES = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "20"))
FUZZ = settings(
    max_examples=5 * EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

ODD_STRINGS = [
    "", " ", ".", "..", "../x", "a/../../b", "/etc/passwd", "~/x", "~", "a\x00b", "\ud800x",
    "$(echo pwned)", "`id`", "; echo pwned", "a\nb", "'\"", "\\", "10m", "-1", "0",
    "1e400", "nan", "inf", "x" * 300, "shell", "onnxruntime", "benchmark", "compile", "x86_64",
    "aarch64", "local", "jetson", "a/b", "secret", "true", "null", "é", "\u202e", "🙂",
    "FLEET_JOB_ID", "1BAD", "A", SHA, "*", "**/*", "inputs/../x",
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=1100),
    st.integers(),
    st.just(2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
)
keys = st.one_of(st.sampled_from(FIELDS + ["runn", "value", "secret", "kind", "files"]),
                 st.text(max_size=8), st.sampled_from(ODD_STRINGS))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
# Python values YAML can also produce (and JSON cannot carry).
yaml_scalars = st.one_of(
    json_scalars,
    st.floats(),  # NaN and infinities
    st.dates(),
    st.datetimes(min_value=datetime.datetime(1900, 1, 1)),
    st.binary(max_size=8),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys | st.integers(), inner, max_size=4),
    max_leaves=12,
)

blob_refs = st.fixed_dictionaries(
    {"sha256": st.sampled_from([SHA, "0" * 63, "G" * 64, SHA.upper()]) | json_scalars,
     "size": st.integers(min_value=-2, max_value=10) | json_scalars},
)
input_refs = st.fixed_dictionaries(
    {"kind": st.sampled_from(["file", "dir", "link"]) | json_scalars,
     "filename": st.sampled_from(["m.onnx", "..", ".", "a/b", "/abs", "a\x00", "$(x)"]) | json_scalars,
     "files": st.dictionaries(st.sampled_from(["m.onnx", "a/b", "../x", "/x", "a//b", "a/./b", ""])
                              | st.text(max_size=6), blob_refs | json_values, max_size=3)},
    optional={"extra": json_values},
)
secret_values = st.fixed_dictionaries(
    {"value": json_scalars}, optional={"secret": json_values, "other": json_values})

field_values: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(ODD_STRINGS) | json_values,
    "kind": st.sampled_from(["shell", "benchmark", "compile", "Shell", ""]) | json_values,
    "runner": st.sampled_from(["shell", "onnxruntime", "nope", "../shell"]) | json_values,
    "inputs": st.dictionaries(st.sampled_from(["m", "../m", "a b", "M-1.x"]) | st.text(max_size=5),
                              input_refs | json_values, max_size=3) | json_values,
    "envs": st.dictionaries(st.sampled_from(["A", "FLEET_X", "1A", "a-b", "PATH"]) | st.text(max_size=5),
                            secret_values | json_values, max_size=3) | json_values,
    "timeout": st.sampled_from(["10m", "0", "-5s", "1.5h", "soon", "1e400 s", "90 ms"]) | json_values,
    "queue_timeout": st.sampled_from(["10m", "0", "x"]) | json_values,
    "outputs": st.lists(st.sampled_from(ODD_STRINGS) | st.text(max_size=6), max_size=3) | json_values,
    "priority": st.integers(min_value=-5, max_value=1005) | json_values,
    "params": st.dictionaries(st.text(max_size=6), json_values, max_size=4) | json_values,
    "setup": st.sampled_from(["true", "a\x00b"]) | json_values,
    "run": st.sampled_from(["true", "", "a\x00b"]) | json_values,
}
for _f in FIELDS:
    field_values.setdefault(_f, json_values)


@st.composite
def near_valid_specs(draw: st.DrawFn, values: st.SearchStrategy[Any] = json_values) -> tuple[dict[str, Any], list[str]]:
    """A valid shell spec running ``true`` with a few fields changed, added or removed.
    Returns the spec and the top-level fields that were touched."""
    spec: dict[str, Any] = {"name": "fuzz", "run": "true"}
    touched: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        op = draw(st.sampled_from(["set", "set", "nested", "delete", "unknown"]))
        if op == "set":
            field = draw(st.sampled_from(FIELDS))
            spec[field] = draw(field_values[field] | values)
        elif op == "nested":
            field = draw(st.sampled_from(sorted(NESTED)))
            sub = draw(st.sampled_from(NESTED[field] + ["bogus"]))
            current = spec.get(field)
            spec[field] = dict(current) if isinstance(current, dict) else {}
            spec[field][sub] = draw(values)
        elif op == "delete":
            field = draw(st.sampled_from(["name", "run"]))
            spec.pop(field, None)
        else:
            field = draw(st.sampled_from(["runn", "resourcez", "Name", "env", ""]) | st.text(max_size=6))
            spec[field] = draw(values)
        touched.append(field)
    return spec, touched


YAML_FRAGMENTS = [
    "name: x", "run: true", "run: 'true'", "name: 2001-01-01", "timeout: .nan", "timeout: .inf",
    "timeout: 1e400", "params: {d: 2001-13-45}", "params: {b: !!binary /w==}", "p: !!binary ???",
    "params: &a {x: *a}", "&a [*a]", "? [a]\n: 1", "envs: {A: {secret: x}}", "envs: {A: !!int x}",
    "x: !!float y", "x: !!timestamp 2020-99-99", "x: !!set {a, b}", "x: !!omap [a: 1]",
    "x: !!python/object:os.system ls", "inputs: {m: {kind: file, filename: .., files: {}}}",
    "resources: {labels: {a: [1]}}", "{", "[", "- a", "\t", "'", '"\\ud800"', "name: \"\\0\"",
    "---", "...", "%YAML 1.1", "!!str", "*undefined", "x: 0o777", "x: 0x1F", "x: 1_000",
    "[" * 200, "{a: " * 120, "x: 2001-12-14t21:59:43.10-05:00", "x: 2001-12-14 99:99:99",
]
yaml_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(YAML_FRAGMENTS) | st.text(max_size=10), max_size=8).map("\n".join),
)
