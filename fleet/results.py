"""The result record (DESIGN.md §5.7): completed by the controller from what a runner wrote.

Runners fill model/precision/batch/tool/metrics/environment/raw; the controller adds ids, the
target host and device class, the status and the ``comparison_key`` (what must match for two
results to be comparable), then validates the record's shape before storing it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

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
    record["comparison_key"] = comparison_key(record)
    return record
