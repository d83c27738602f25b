"""Driving the terminal UI in tests: the app on a real server, the screen as text, waits on
what the screen shows (never a fixed sleep), and snapshots of the main views."""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from textual.pilot import Pilot

from fleet.client.aio import AsyncClient
from fleet_tui.app import FleetApp

SIZE = (150, 40)
SNAPSHOTS = Path(__file__).parent / "snapshots" / "tui"


def make_app(url: str, token: str, *, readonly: bool = False,
             rediscover: Callable[[], str | None] | None = None) -> FleetApp:
    return FleetApp(AsyncClient(url, token, timeout=30.0), readonly=readonly, label="fleet-under-test",
                    rediscover=rediscover)


def screen_text(app: FleetApp) -> str:
    """What the terminal shows, as plain text (the screenshot's text)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


async def until(pilot: Pilot[None], check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Let the app run until ``check()`` holds (each pause lets it take events and draw)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen in {timeout:.0f} s: {what}\n--- the screen:\n{screen_text(pilot.app)}")
        await pilot.pause(0.02)


async def shows(pilot: Pilot[None], text: str | re.Pattern[str], timeout: float = 30.0) -> None:
    def seen() -> bool:
        screen = screen_text(pilot.app)  # type: ignore[arg-type]
        return bool(text.search(screen)) if isinstance(text, re.Pattern) else text in screen

    await until(pilot, seen, f"{text!r} on the screen", timeout)


_VARYING = [
    (re.compile(r"\bj[0-9a-hjkmnp-tv-z]{14}\b"), "j<id>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "hh:mm:ss"),
    (re.compile(r"\b\d\d-\d\d \d\d:\d\d\b"), "mm-dd hh:mm"),
    (re.compile(r"\b\d+(\.\d)?s\b"), "Ns"),
    (re.compile(r"\b\d+m\d\ds\b"), "NmNNs"),
    (re.compile(r"127\.0\.\d+\.\d+(:\d+)?"), "127.0.x.x"),
]


def normalise(text: str) -> str:
    """The screen without what differs run to run (ids, times, addresses); lines' ends trimmed."""
    for pattern, repl in _VARYING:
        text = pattern.sub(repl, text)  # type: ignore[arg-type]
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip() + "\n"


def snapshot(app: FleetApp, name: str) -> None:
    """Compare the screen with tests/snapshots/tui/NAME.txt (FLEET_UPDATE_SNAPSHOTS=1 writes it),
    and save its SVG screenshot beside it for people to look at."""
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    got = normalise(screen_text(app))
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("FLEET_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.write_text(got)
        app.save_screenshot(f"{name}.svg", str(SNAPSHOTS))
        if not os.environ.get("FLEET_UPDATE_SNAPSHOTS"):
            raise AssertionError(f"no snapshot {path} yet: written now, look at it and commit it")
        return
    want = path.read_text()
    assert got == want, f"the {name} view changed (FLEET_UPDATE_SNAPSHOTS=1 to accept):\n{got}"
