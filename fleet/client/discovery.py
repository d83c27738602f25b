"""Finding the API server, or starting the local one.

With no server configured (``FLEET_SERVER`` / config ``server``), the CLI uses a local server
bound to 127.0.0.1, started on first use in the background; its URL and pid are in
``$FLEET_HOME/server.json``, its admin token in ``$FLEET_HOME/token`` (0600), its log in
``$FLEET_HOME/server.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx

from fleet.config import Settings
from fleet.errors import FleetError

START_TIMEOUT = 30.0


@dataclass
class ServerInfo:
    url: str
    token: str | None
    pid: int | None
    local: bool
    inventory: str | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def _healthy(url: str) -> bool:
    # The local server: no TLS context (httpx loads the CA store for each call otherwise,
    # ~25 ms of CPU, and a start polls this every few tens of milliseconds).
    from fleet.client.calls import local_transport

    try:
        with httpx.Client(transport=local_transport(url), timeout=2.0) as http:
            return http.get(f"{url}/health").status_code == 200
    except httpx.HTTPError:
        return False


def read_token(settings: Settings) -> str | None:
    token = os.environ.get("FLEET_TOKEN")
    if token:
        return token.strip()
    try:
        return settings.token_file.read_text().strip() or None
    except FileNotFoundError:
        return None


def local_server(settings: Settings) -> ServerInfo | None:
    """The running local server, or None."""
    try:
        info = json.loads(settings.server_file.read_text())
    except (OSError, ValueError):
        return None
    pid = int(info.get("pid") or 0)
    if not pid or not _alive(pid):
        return None
    return ServerInfo(url=info["url"], token=read_token(settings), pid=pid, local=True,
                      inventory=info.get("inventory"))


class Started(Protocol):
    """What ``start_local`` needs of the process it started (``subprocess.Popen`` is one)."""

    pid: int

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...


def _popen(cmd: list[str], log: BinaryIO) -> Started:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, env=os.environ.copy())


def start_local(settings: Settings, inventory: str | None,
                spawn: Callable[[list[str], BinaryIO], Started] = _popen) -> ServerInfo:
    """Start the local server in the background (once, even with concurrent CLIs).

    ``spawn`` starts ``cmd`` as a new session writing to ``log`` (a test suite may start it
    faster than a new interpreter does)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with (settings.home / "server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = local_server(settings)
        if running is not None and _healthy(running.url):
            return running
        cmd = [sys.executable, "-m", "fleet"]
        if inventory:
            cmd += ["--inventory", str(Path(inventory).expanduser().resolve())]
        cmd += ["serve", "--local", "--host", "127.0.0.1", "--port", "0"]
        log = settings.server_log.open("ab")
        start = log.tell()  # what this start writes: earlier failures stay out of its error
        proc = spawn(cmd, log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                with settings.server_log.open("rb") as fh:
                    fh.seek(start)
                    lines = fh.read().decode(errors="replace").strip().splitlines()
                reason = _start_error(lines)
                raise FleetError(f"the local fleet server failed to start: {reason}"
                                 f"\n(its log: {settings.server_log})")
            info = local_server(settings)
            if info is not None and info.pid == proc.pid and _healthy(info.url):
                return info
            time.sleep(0.05)
        proc.terminate()
        raise FleetError(f"the local fleet server did not start within {START_TIMEOUT:.0f} s "
                         f"(log: {settings.server_log})")


def _start_error(lines: list[str]) -> str:
    """The gist of a failed start from its log: fleet's own error line when there is one
    ("fleet: ..."), else the last line of a traceback, else the last lines."""
    for line in reversed(lines):
        if line.startswith("fleet: "):
            return line[len("fleet: "):]
    for line in reversed(lines):
        if line and not line.startswith((" ", "Traceback")) and ":" in line:
            return line
    return "\n  ".join(lines[-5:]) or "it exited without a word"


def resolve(settings: Settings, inventory: str | None, autostart: bool = True) -> ServerInfo:
    """The server to talk to: configured, running local, or a freshly started local one."""
    if settings.server:
        return ServerInfo(url=settings.server, token=read_token(settings), pid=None, local=False)
    running = local_server(settings)
    if running is not None:
        if inventory and running.inventory and Path(inventory).expanduser().resolve() != Path(running.inventory):
            raise FleetError(
                f"the local server runs with inventory {running.inventory}; "
                f"stop it (fleet server stop) to use {inventory}"
            )
        return running
    if not autostart:
        raise FleetError("no local fleet server is running (fleet server start)")
    return start_local(settings, inventory or settings.inventory)


def stop_local(settings: Settings, timeout: float = 15.0) -> int | None:
    """SIGTERM the local server and wait for it to exit; returns its pid or None."""
    info = local_server(settings)
    if info is None or info.pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):  # it may end at any moment: that is the aim
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(info.pid):
            time.sleep(0.05)
        if _alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
    settings.server_file.unlink(missing_ok=True)
    return info.pid
