"""Human output of the CLI: aligned tables and short summaries. ``--json`` bypasses this."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from fleet.api.schemas import JobDetail, JobOut

STATE_COLORS = {
    "SUCCEEDED": "green", "FAILED": "red", "TIMED_OUT": "red", "CANCELLED": "yellow",
    "RUNNING": "cyan", "STARTING": "cyan", "PENDING": "white", "RETRYING": "magenta",
    "CANCELLING": "yellow",
}


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()
    return "\n".join([line(headers)] + [line(r) for r in rows])


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    delta = max(0.0, time.time() - ts)
    if delta < 60:
        return f"{delta:.0f}s ago"
    if delta < 3600:
        return f"{delta / 60:.0f}m ago"
    if delta < 86400:
        return f"{delta / 3600:.1f}h ago"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def duration(start: float | None, end: float | None) -> str:
    if start is None:
        return "-"
    seconds = (end or time.time()) - start
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def state(value: str) -> str:
    return click.style(value, fg=STATE_COLORS.get(value))


def jobs_table(items: Sequence[JobOut]) -> str:
    rows = [
        [j.id, j.name[:32], j.user, j.state, j.reason or "", j.host or j.pool or "-",
         ago(j.created_ts), duration(j.started_ts, j.ended_ts)]
        for j in items
    ]
    return table(rows, ["ID", "NAME", "USER", "STATE", "REASON", "HOST/POOL", "SUBMITTED", "RAN"])


def result_summary(record: dict[str, Any] | None) -> str | None:
    """One line for a benchmark result: latency, throughput, where and with what."""
    if not record:
        return None
    metrics = record.get("metrics") or {}
    lat = metrics.get("latency_ms") or {}
    tool = record.get("tool") or {}
    target = record.get("target") or {}
    parts = []
    if lat:
        parts.append(
            "latency ms: " + " ".join(
                f"{k} {lat[k]:.3f}" for k in ("mean", "median", "p90", "p99") if isinstance(lat.get(k), (int, float))
            )
        )
    if isinstance(metrics.get("throughput_per_s"), (int, float)):
        parts.append(f"throughput {metrics['throughput_per_s']:.1f}/s")
    where = f"{target.get('host', '?')} ({target.get('device_name') or target.get('device_class', '')})"
    tool_s = f"{tool.get('name', '')} {tool.get('version', '')}".strip()
    return f"{', '.join(parts)} on {where} with {tool_s}" if parts else None


def job_detail(job: JobDetail) -> str:
    lines = [
        f"id:        {job.id}",
        f"name:      {job.name}",
        f"user:      {job.user}",
        f"kind:      {job.kind} ({job.runner})",
        f"queue:     {job.queue}",
        f"state:     {state(job.state)}" + (f"  reason: {job.reason}" if job.reason else ""),
    ]
    if job.message:
        lines.append(f"message:   {job.message}")
    lines.append(f"host:      {job.host or '-'}")
    lines.append(f"submitted: {job.created_at}")
    if job.started_at:
        lines.append(f"started:   {job.started_at}  (ran {duration(job.started_ts, job.ended_ts)})")
    lines.append(f"attempts:  {job.attempts}")
    if job.attempt_list:
        rows = [
            [str(a.number), a.id, a.host + (f" ({a.backend})" if a.backend != "ssh" else ""), a.state,
             a.reason or "", "" if a.exit_code is None else str(a.exit_code),
             a.started_at or "-", a.ended_at or "-", (a.message or "")[:60]]
            for a in job.attempt_list
        ]
        lines.append(_indent(table(rows, ["#", "ATTEMPT", "HOST", "STATE", "REASON", "EXIT", "STARTED",
                                          "ENDED", "MESSAGE"])))
        cloud = [a.cost for a in job.attempt_list if a.cost is not None]
        if cloud:
            lines.append(f"cloud:     {sum(cloud):.4f} (pod time at the pools' price per slot-hour)")
    summary = result_summary(job.result)
    if summary:
        lines.append(f"result:    {summary}")
    if job.result and job.result.get("status") == "invalid":
        lines.append("validity:  INVALID: " + "; ".join(job.result.get("invalid_reasons") or []))
    if job.artifacts:
        lines.append("artifacts:")
        lines.append(_indent(table([[a.id, a.name, a.kind, size(a.size), a.sha256[:12]] for a in job.artifacts],
                                   ["ID", "NAME", "KIND", "SIZE", "SHA256"])))
    if job.chain_jobs:
        lines.append(f"chain:     {job.chain} ({len(job.chain_jobs)} steps)")
        rows = [[("> " if c.id == job.id else "  ") + (c.step or ""), c.id, c.state, c.reason or "",
                 c.host or c.pool or "-", (c.message or "")[:70]] for c in job.chain_jobs]
        lines.append(_indent(table(rows, ["STEP", "JOB", "STATE", "REASON", "HOST/POOL", "MESSAGE"])))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def dump(data: Any) -> str:
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if hasattr(d, "model_dump") else d for d in data]
    return json.dumps(data, indent=2)


def size(n: int) -> str:
    """Bytes for people: 512 B, 4.0 KiB, 12.3 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class SafeText:
    """Makes a job's log safe to print on a terminal: control characters (escape sequences that
    clear the screen, set the title or the clipboard through OSC 52, a lone carriage return
    that hides a line) are shown in caret notation (``^[``, ``^M``) instead of being obeyed.
    Tabs, newlines and CRLF stay. Fed bytes in chunks; UTF-8 split across chunks is kept."""

    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._cr = False  # a carriage return at the end of the last chunk

    def feed(self, data: bytes, final: bool = False) -> bytes:
        text = self._decoder.decode(data, final)
        out = []
        for ch in text:
            if self._cr:
                self._cr = False
                if ch == "\n":
                    out.append("\n")
                    continue
                out.append("^M")
            code = ord(ch)
            if ch == "\r":
                self._cr = True
            elif ch in "\n\t" or (32 <= code < 127) or code > 159:
                out.append(ch)
            elif code < 32:
                out.append("^" + chr(code + 64))
            elif code == 127:
                out.append("^?")
            else:  # C1 controls (U+0080..U+009F) act like ESC sequences on some terminals
                out.append(f"<U+{code:04X}>")
        if final and self._cr:
            out.append("^M")
            self._cr = False
        return "".join(out).encode("utf-8")


def safe(text: str) -> str:
    """``text`` (a user's axis values, metric names, reasons) with control characters shown,
    not obeyed: safe to print on a terminal (see SafeText)."""
    return SafeText().feed(text.encode("utf-8", "replace"), final=True).decode("utf-8")
