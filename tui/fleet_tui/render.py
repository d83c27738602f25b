"""How the views show things: states in colour, times and durations short, series as
sparklines, and every string that came from a user or a job made safe for the terminal."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.text import Text

from fleet.cli.render import safe

STATE_STYLE = {
    "PENDING": "yellow", "STARTING": "cyan", "RUNNING": "bold cyan", "RETRYING": "magenta",
    "CANCELLING": "magenta", "SUCCEEDED": "green", "FAILED": "bold red", "CANCELLED": "dim",
    "TIMED_OUT": "red",
}
HEALTH_STYLE = {"good": "green", "bad": "bold red", "unknown": "yellow", "maintenance": "magenta", "-": "dim"}
HOST_STATE_STYLE = {"idle": "green", "busy": "cyan", "draining": "magenta", "drained": "magenta",
                    "offline": "bold red", "gateway": "dim"}
VERDICT_STYLE = {"regression": "bold white on red", "improvement": "bold white on green",
                 "unchanged": "white on grey23", "invalid": "black on yellow",
                 "not_enough_samples": "black on yellow", "missing": "white on grey37",
                 "failed": "white on dark_red", "running": "black on cyan", "waiting": "grey70 on grey15",
                 "done": "white on grey23"}
BARS = "▁▂▃▄▅▆▇█"


def clean(value: object) -> str:
    """A value from the server (a job's name, a message, a log line) with control characters
    shown, not obeyed."""
    text = "" if value is None else str(value)
    return text if text.isprintable() else safe(text)  # most are: no need to walk them


def styled(value: object, style: str | None) -> Text:
    return Text(clean(value), style=style or "")


def state(value: str | None) -> Text:
    return Text(value or "-", style=STATE_STYLE.get(value or "", ""))


def health(value: str | None) -> Text:
    return Text(value or "-", style=HEALTH_STYLE.get(value or "", ""))


def clock(ts: float | None) -> str:
    """A time of day for today, else the date."""
    if not ts:
        return "-"
    t = time.localtime(ts)
    if time.strftime("%Y-%m-%d", t) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%m-%d %H:%M", t)


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds / 86400:.1f}d"


def took(started: float | None, ended: float | None) -> str:
    if started is None:
        return "-"
    return duration((ended or time.time()) - started)


def sparkline(values: Sequence[float], width: int = 20) -> str:
    """The last ``width`` values as bars, scaled between their min and max."""
    values = list(values)[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    if span <= abs(high) * 1e-9 or span == 0:
        return BARS[3] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int((v - low) / span * len(BARS)))] for v in values)


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"
