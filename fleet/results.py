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
_SECTIONS = ("model", "precision", "target", "tool", "metrics", "environment", "raw", "artifact")


class InvalidResult(ValueError):
    """A runner wrote a result.json the controller cannot accept."""


def comparison_key(record: dict[str, Any]) -> str:
    """Hash of what must be equal for two results to be compared (model, device, tool, ...)."""
    model = record.get("model") or {}
    tool = record.get("tool") or {}
    target = record.get("target") or {}
    precision = record.get("precision") or {}
    basis = {
        "model": model.get("sha256"),
        "device_class": target.get("device_class"),
        "device": target.get("device_name"),
        "tool": tool.get("name"),
        "tool_version": tool.get("version"),
        "precision": precision.get("applied"),
        "batch": record.get("batch"),
        "scenario": tool.get("scenario"),
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


def complete_record(
    raw: dict[str, Any], *, job_id: str, attempt_id: str, host: Host, runner: str
) -> dict[str, Any]:
    """The full result record from a runner's result.json. Raises InvalidResult."""
    if not isinstance(raw, dict):
        raise InvalidResult("result.json is not a JSON object")
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
    record.setdefault("matrix_run_id", None)
    reasons = list(record.get("invalid_reasons") or [])
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
    record.setdefault("metrics", {})
    if name:
        record["model"] = dict(record.get("model") or {}, name=name)
    record["raw"] = dict(record.get("raw") or {}, imported_from=source, format=fmt)
    record["comparison_key"] = comparison_key(record)
    validate(record)
    return record
