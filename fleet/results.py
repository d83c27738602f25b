"""The result record (DESIGN.md §5.7): completed by the controller from what a runner wrote.

Runners fill model/precision/batch/tool/metrics/environment/raw; the controller adds ids, the
target host and device class, the status and the ``comparison_key`` (what must match for two
results to be comparable), then validates the record's shape before storing it.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from fleet.inventory import Host

SCHEMA_VERSION = 1
MAX_RECORD_BYTES = 4 << 20  # a result record is a summary; raw samples go to files (raw.*)
_SECTIONS = ("model", "precision", "target", "tool", "metrics", "environment", "raw", "artifact")


class InvalidResult(ValueError):
    """A runner wrote a result.json the controller cannot accept."""


def _major(version: Any) -> str | None:
    """A tool's major version: TensorRT 8.6.1 -> "8"; a change of major starts a new series."""
    if version is None:
        return None
    text = str(version).strip().lstrip("vV")
    return text.split(".", 1)[0] or None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def key_fields(record: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two results to be compared (DESIGN.md §5.11): model, device
    class and accelerator, precision, shapes and batch, runner, tool and its major version,
    driver / JetPack / HailoRT, power mode, locked clocks, image digest, and the scenario."""
    model = record.get("model") or {}
    tool = record.get("tool") or {}
    target = record.get("target") or {}
    precision = record.get("precision") or {}
    env = record.get("environment") or {}
    shapes = model.get("input_shapes") or model.get("inputs")
    locked = env.get("clocks_locked")
    return {
        "model_sha256": _text(model.get("sha256")),
        # without a hash (a team's own benchmark), the model's name stands for it
        "model_name": None if model.get("sha256") else _text(model.get("name")),
        "device_class": _text(target.get("device_class")),
        "accelerator": _text(target.get("accelerator")),
        "precision": _text(precision.get("applied") or precision.get("requested")),
        "shapes": json.dumps(shapes, sort_keys=True) if shapes else None,
        "batch": record.get("batch") if isinstance(record.get("batch"), int) else None,
        "runner": _text(record.get("runner")),
        "tool": _text(tool.get("name")),
        "tool_major": _major(tool.get("version")),
        "driver": _text(env.get("driver")),
        "jetpack": _text(env.get("jetpack") or env.get("l4t")),
        "hailort": _text(env.get("hailort")),
        "power_mode": _text(env.get("power_mode")),
        "clocks_locked": locked if isinstance(locked, bool) else None,
        "image_digest": _text(env.get("image_digest")),
        "scenario": _text(tool.get("scenario")),
    }


def comparison_key(record: dict[str, Any]) -> str:
    """Hash of :func:`key_fields`: two results with the same key are one series."""
    basis = key_fields(record)
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def key_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The results table's columns for a completed record (its key, status, matrix run)."""
    fields = key_fields(record)
    cols = {k: fields[k] for k in ("model_sha256", "accelerator", "precision", "shapes", "batch", "tool",
                                   "tool_major", "driver", "jetpack", "hailort", "power_mode",
                                   "clocks_locked", "image_digest")}
    cols.update(comparison_key=record.get("comparison_key"), status=record.get("status") or "ok",
                matrix_run=record.get("matrix_run_id"))
    return cols


def complete_record(
    raw: dict[str, Any], *, job_id: str, attempt_id: str, host: Host, runner: str,
    matrix_run: str | None = None,
) -> dict[str, Any]:
    """The full result record from a runner's result.json. Raises InvalidResult."""
    if not isinstance(raw, dict):
        raise InvalidResult("result.json is not a JSON object")
    size = len(json.dumps(raw))
    if size > MAX_RECORD_BYTES:
        raise InvalidResult(f"result.json is {size} bytes, over the limit of {MAX_RECORD_BYTES} "
                            "(a record is a summary: put per-query samples in a file and name it in raw)")
    for section in _SECTIONS:
        if section in raw and raw[section] is not None and not isinstance(raw[section], dict):
            raise InvalidResult(f"result.json: {section} must be an object")
    metrics = raw.get("metrics") or {}
    latency = metrics.get("latency_ms")
    if latency is not None:
        if not isinstance(latency, dict) or not all(
            isinstance(v, (int, float)) and v >= 0 for v in latency.values()
        ):
            raise InvalidResult("result.json: metrics.latency_ms must map names to numbers >= 0")
    record = dict(raw)
    record["schema_version"] = SCHEMA_VERSION
    record["job_id"] = job_id
    record["attempt_id"] = attempt_id
    record["matrix_run_id"] = matrix_run  # what the controller knows, not what the job says
    record["runner"] = runner
    reasons = record.get("invalid_reasons") or []
    if not isinstance(reasons, list) or not all(isinstance(r, str) and r for r in reasons):
        raise InvalidResult("result.json: invalid_reasons must be a list of non-empty strings")
    reasons = list(reasons)
    record["invalid_reasons"] = reasons
    record["status"] = "invalid" if reasons else "ok"
    target = dict(record.get("target") or {})
    target.update(host=host.name, device_class=host.device_class, accelerator=host.accelerator)
    target.setdefault("arch", host.arch)
    record["target"] = target
    record.setdefault("tool", {"name": runner})
    record.setdefault("metrics", {})
    record["comparison_key"] = comparison_key(record)
    validate(record)
    return record


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of the result record (fleet/schemas/result.schema.json)."""
    data: dict[str, Any] = json.loads((Path(__file__).parent / "schemas" / "result.schema.json").read_text())
    return data


def validate(record: dict[str, Any]) -> None:
    """Raise InvalidResult naming the first place where ``record`` breaks the schema."""
    validator = Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(record)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidResult(f"result record: {where}: {err.message}{more}")


def imported_record(partial: dict[str, Any], *, fmt: str, result_id: str, host: str,
                    device_class: str, name: str | None, source: str | None) -> dict[str, Any]:
    """A full record from a log parsed by hand (``fleet results import``)."""
    record = {k: v for k, v in partial.items() if k in _SECTIONS}
    record["schema_version"] = SCHEMA_VERSION
    record["job_id"] = result_id
    record["attempt_id"] = ""
    record["matrix_run_id"] = None
    record["invalid_reasons"] = []
    record["status"] = "ok"
    target = dict(record.get("target") or {})
    target.update(host=host, device_class=device_class)
    record["target"] = target
    record.setdefault("tool", {"name": fmt})
    record["runner"] = fmt
    record.setdefault("metrics", {})
    if name:
        record["model"] = dict(record.get("model") or {}, name=name)
    record["raw"] = dict(record.get("raw") or {}, imported_from=source, format=fmt)
    record["comparison_key"] = comparison_key(record)
    validate(record)
    return record
