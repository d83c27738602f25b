"""The real host agent (``runners/wrapper.py agent``) driven over its stdin/stdout as the SSH
backend drives it: requests in, frames and log bytes collected by a reader thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.helpers import eventually

WRAPPER = Path(__file__).resolve().parent.parent / "runners" / "wrapper.py"


class Agent:
    def __init__(self, root: Path, waits: str) -> None:
        env = dict(os.environ, FLEET_AGENT_WAITS=waits)
        self.root = root
        self.proc = subprocess.Popen([sys.executable, "-S", "-B", str(WRAPPER), "agent"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.frames: list[dict[str, object]] = []
        self.logs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while line := out.readline():
            frame = json.loads(line)
            with self.lock:
                if frame.get("n"):
                    aid = str(frame["a"])
                    self.logs[aid] = self.logs.get(aid, b"") + out.read(int(frame["n"]))
                self.frames.append(frame)

    def send(self, **request: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def launch(self, aid: str, argv: list[str], **extra: object) -> Path:
        adir = self.root / aid
        self.send(op="launch", id=aid, attempt_dir=str(adir), job={}, argv=argv, grace=1,
                  cache_dir=str(self.root), inputs=[], **extra)
        return adir

    def end(self, aid: str, timeout: float = 30) -> dict[str, object]:
        def ended() -> dict[str, object] | None:
            with self.lock:
                return next((f for f in self.frames if f.get("a") == aid and f["t"] in ("exit", "lost")), None)
        return eventually(ended, timeout=timeout, what=f"attempt {aid} ended")

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(10)


def record(adir: Path) -> tuple[int, int | None]:
    """The attempt's process record as the agent reads it: (supervising agent's pid, process
    group of the job's current phase)."""
    from runners.hostfs import _process_record

    return _process_record(str(adir))  # type: ignore[no-any-return]


def started(adir: Path) -> bool:
    """Whether the attempt's job has been started (its process group is recorded)."""
    return record(adir)[1] is not None

