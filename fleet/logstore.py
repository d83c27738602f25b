"""The controller's log store: one file per attempt under ``$FLEET_HOME/logs/<job>/``.

Writers append bytes as they arrive from the host; followers wait on a per-attempt condition
instead of polling, so ``fleet logs -f`` sees a line as soon as the controller has it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from fleet.secrets import Redactor


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, BinaryIO] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._redactors: dict[str, Redactor] = {}

    def path(self, job_id: str, attempt_id: str) -> Path:
        return self.root / job_id / f"{attempt_id}.log"

    def size(self, job_id: str, attempt_id: str) -> int:
        try:
            return self.path(job_id, attempt_id).stat().st_size
        except FileNotFoundError:
            return 0

    def redact(self, attempt_id: str, secrets: Iterable[str]) -> None:
        """Mask these values (a job's secrets) in everything appended to the attempt's log."""
        secrets = [s for s in secrets if s]
        if secrets and attempt_id not in self._redactors:
            self._redactors[attempt_id] = Redactor(secrets)

    def append(self, job_id: str, attempt_id: str, data: bytes) -> None:
        """Append bytes to an attempt's log and wake its followers. Never blocks for long."""
        redactor = self._redactors.get(attempt_id)
        if redactor is not None:
            data = redactor.feed(data)
        fh = self._open.get(attempt_id)
        if fh is None:
            path = self.path(job_id, attempt_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = path.open("ab", buffering=0)
            self._open[attempt_id] = fh
        fh.write(data)
        self._wake(attempt_id)

    def close(self, attempt_id: str) -> None:
        """The attempt ended: close its file and release followers for a final read."""
        redactor = self._redactors.pop(attempt_id, None)
        tail = redactor.flush() if redactor is not None else b""
        if tail and attempt_id in self._open:
            self._open[attempt_id].write(tail)
        fh = self._open.pop(attempt_id, None)
        if fh is not None:
            fh.close()
        self._wake(attempt_id)

    def _wake(self, attempt_id: str) -> None:
        event = self._waiters.pop(attempt_id, None)
        if event is not None:
            event.set()

    async def wait(self, attempt_id: str, timeout: float) -> None:
        """Wait until the attempt's log grows or ends, or ``timeout`` passes."""
        event = self._waiters.setdefault(attempt_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            pass

    def read(self, job_id: str, attempt_id: str, offset: int, limit: int = 1 << 20) -> bytes:
        try:
            with self.path(job_id, attempt_id).open("rb") as fh:
                fh.seek(offset)
                return fh.read(limit)
        except FileNotFoundError:
            return b""

    def close_all(self) -> None:
        # Shutdown: attempts go on without us. Bytes held back for redaction are not written;
        # the next controller reads them again from the host (it resumes at the log's size).
        self._redactors.clear()
        for attempt_id in list(self._open):
            self.close(attempt_id)
