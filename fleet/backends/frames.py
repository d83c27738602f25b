"""What a host agent may say, checked field by field (DESIGN.md §7: nothing a host reports is
believed unchecked).

A job on a host with ``isolation: none`` runs as the agent's own account and can rewrite the
agent, so every frame is untrusted input: its header is a bounded JSON object, each field has
the type fleet expects, numbers are finite and in range, paths are relative and stay inside the
attempt directory, hashes are 64 hex digits. A header that cannot be read ends the channel
(:class:`ProtocolError`); a frame of one attempt with a bad field fails that attempt
(:class:`BadFrame`), saying which field.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fleet.backends.base import BackendError, HostLost, Outcome
from fleet.models.enums import Reason
from fleet.models.spec import SHA256_RE

MAX_HEADER = 8 << 20  # bytes of one JSON header line (an exit frame carries the result record)
MAX_LOG_FRAME = 1 << 20  # bytes of one log frame (the agent sends 64 KiB)
MAX_OUTPUTS = 1000
MAX_OUTPUT_BYTES = 1 << 40
MAX_TEXT = 64 << 10  # an error message or a phase name
PHASES = frozenset({"run", "setup", "prepare"})
KINDS = frozenset({"log", "started", "attached", "exit", "lost", "error", "pong", "gc", "missing"})


class ProtocolError(HostLost):
    """The agent's stream cannot be read any more (a header too long, not JSON, not an
    object): the channel is closed and the host is checked again, bundle included."""


class BadFrame(BackendError):
    """One attempt's frame holds a field fleet does not accept: the attempt fails."""

    reason = Reason.RUNNER_ERROR


def header(line: bytes) -> dict[str, Any]:
    """Parse one header line. Raises ProtocolError."""
    if len(line) > MAX_HEADER:
        raise ProtocolError(f"a frame header of over {MAX_HEADER} bytes")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"a frame header that is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ProtocolError("a frame header that is not a JSON object")
    kind = data.get("t")
    if kind not in KINDS:
        raise ProtocolError(f"a frame of unknown type {str(kind)[:40]!r}")
    if not isinstance(data.get("a"), (str, type(None))):
        raise ProtocolError("a frame whose attempt id is not a string")
    if kind == "log":
        n = data.get("n")
        if not isinstance(n, int) or not _int(n) or not 0 <= n <= MAX_LOG_FRAME:
            raise ProtocolError(f"a log frame of {str(n)[:40]} bytes (at most {MAX_LOG_FRAME})")
    return data


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def opt_int(value: Any, field: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if not _int(value) or not low <= value <= high:
        raise BadFrame(f"{field} must be an integer from {low} to {high}, not {str(value)[:40]}")
    return int(value)


def opt_time(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value < 1e11:
        raise BadFrame(f"{field} must be a time in seconds, not {str(value)[:40]}")
    return float(value)


def opt_text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadFrame(f"{field} must be text, not {type(value).__name__}")
    return value[:MAX_TEXT]


def opt_object(value: Any, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadFrame(f"{field} must be an object, not {type(value).__name__}")
    return value


def relative_path(value: Any, field: str) -> str:
    """A path inside the attempt directory: relative, no ``..``, no NUL, no empty part."""
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise BadFrame(f"{field} must be a relative path")
    parts = value.split("/")
    if value.startswith("/") or "\x00" in value or any(p in ("", ".", "..") for p in parts):
        raise BadFrame(f"{field} {value[:200]!r} is not a path inside the attempt directory")
    return value


def outputs(value: Any) -> list[dict[str, Any]]:
    """The files an attempt hands over: ``{path, size, sha256}`` each, checked."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_OUTPUTS:
        raise BadFrame(f"outputs must be a list of at most {MAX_OUTPUTS} files")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadFrame(f"outputs[{i}] must be an object")
        path = relative_path(item.get("path"), f"outputs[{i}].path")
        sha = item.get("sha256")
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise BadFrame(f"outputs[{i}].sha256 must be 64 lowercase hex digits, not {str(sha)[:80]!r}")
        size = opt_int(item.get("size"), f"outputs[{i}].size", 0, MAX_OUTPUT_BYTES)
        if size is None:
            raise BadFrame(f"outputs[{i}].size is missing")
        out.append({"path": path, "sha256": sha, "size": size})
    return out


def exit_outcome(frame: dict[str, Any]) -> Outcome:
    """The Outcome an ``exit`` frame reports. Raises BadFrame naming the field."""
    st = opt_object(frame.get("status"), "status") or {}
    phase = st.get("phase") or "run"
    if phase not in PHASES:
        raise BadFrame(f"status.phase must be one of {', '.join(sorted(PHASES))}")
    for flag in ("timed_out", "cancelled", "fenced"):
        if not isinstance(st.get(flag, False), (bool, type(None))):
            raise BadFrame(f"status.{flag} must be true or false")
    return Outcome(
        exit_code=opt_int(st.get("exit_code"), "status.exit_code", -(1 << 31), (1 << 31) - 1),
        signal=opt_int(st.get("signal"), "status.signal", 0, 128),
        timed_out=bool(st.get("timed_out")), cancelled=bool(st.get("cancelled")),
        phase=phase, error=opt_text(st.get("error"), "status.error"), fenced=bool(st.get("fenced")),
        result=opt_object(frame.get("result"), "result"),
        runner_error=opt_object(frame.get("error"), "error"),
        started_at=opt_time(st.get("started_at"), "status.started_at"),
        ended_at=opt_time(st.get("ended_at"), "status.ended_at"),
        outputs=outputs(frame.get("outputs")),
        outputs_problem=opt_text(frame.get("outputs_problem"), "outputs_problem"),
    )
