"""``procpool``: a fleet backend plugin that lives outside fleet, for tests.

An elastic pool of local processes: each attempt is a detached shell in a directory of its own
under the backend's state directory. Creating that directory is the launch marker (an attempt
is never started twice); the process writes its exit status to a file, so a controller that
died and came back follows the attempt to its end instead of running it again. It runs shell
jobs only and declares no optional capability (no health checks, no outputs, no retention).

fleet knows it only through the ``fleet.backends`` entry point in this distribution's
``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shlex
import signal
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fleet.backends.base import (
    AttemptPlan,
    AttemptSink,
    Backend,
    BackendContext,
    Outcome,
    SetupFailed,
)
from fleet.inventory import Host

POLL = 0.02  # seconds between looks at a running attempt's files


class ProcPoolSettings(BaseModel):
    """``backends: {procpool: {...}}`` in fleet's config.yaml."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(4, ge=1, le=64, description="attempts running at once")
    pool: str = Field("procpool", pattern=r"^[a-z][a-z0-9-]*$", description="the pool's name")
    startup_latency: float = Field(0.0, ge=0, description="seconds to start capacity")
    cost: float = Field(0.0, ge=0, description="per slot-hour")
    accelerator: str = "cpu"


class ProcPoolBackend(Backend):
    name = "procpool"
    settings_model = ProcPoolSettings

    def __init__(self, settings: ProcPoolSettings, root: Path, name: str) -> None:
        self.settings = settings
        self.root = root / "attempts"
        self.root.mkdir(parents=True, exist_ok=True)
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                            platform.machine().lower())
        self.pool = Host(
            name=settings.pool, pools=(settings.pool,), arch=arch,
            accelerator=settings.accelerator, slots=settings.limit, connection="local",
            backend=name, elastic=True, startup_latency=settings.startup_latency,
            cost=settings.cost,
        )

    @classmethod
    def create(cls, settings: BaseModel | None, ctx: BackendContext) -> ProcPoolBackend:
        assert isinstance(settings, ProcPoolSettings)
        return cls(settings, ctx.state_dir, ctx.name)

    def offers(self) -> list[Host]:
        return [self.pool]

    def _dir(self, plan: AttemptPlan) -> Path:
        return self.root / plan.attempt_id

    async def launch(self, plan: AttemptPlan, sink: AttemptSink, log_offset: int = 0) -> Outcome:
        where = self._dir(plan)
        if not where.exists():
            if plan.follow_only:
                return Outcome(exit_code=None, lost="the attempt never started in this pool")
            if plan.argv is None:
                raise SetupFailed(f"backend {self.name} runs shell jobs only "
                                  f"(runner {plan.runner} asked)")
            self._start(plan, where)
        return await self._follow(plan, where, sink, log_offset)

    def _start(self, plan: AttemptPlan, where: Path) -> None:
        where.mkdir()  # the launch marker: FileExistsError if someone else started it
        assert plan.argv is not None
        parts = []
        if plan.setup:
            parts.append(f"( {plan.setup} ) || {{ echo setup > phase; exit 1; }}")
        parts.append(shlex.join(plan.argv))
        (where / "run.sh").write_text("\n".join(parts) + "\n")
        # A detached process group that outlives the controller; the outer sh exits at once
        # (so no zombie is left to the controller) and the job's own exit status lands in
        # ``status`` when it ends.
        inner = (f"cd {shlex.quote(str(where))} && date +%s.%N > started && "
                 "{ /bin/sh run.sh > log 2>&1; echo $? > status.tmp; mv status.tmp status; }")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home()),
               **plan.env}
        subprocess.run(
            ["/bin/sh", "-c",
             f"setsid /bin/sh -c {shlex.quote(inner)} </dev/null >/dev/null 2>&1 & echo $! > pid"],
            cwd=where, env=env, check=True, timeout=10)

    async def _follow(self, plan: AttemptPlan, where: Path, sink: AttemptSink,
                      offset: int) -> Outcome:
        deadline = None if plan.timeout is None else time.monotonic() + plan.timeout
        announced = False
        timed_out = False
        while True:
            status = where / "status"
            pid = _read_int(where / "pid")
            started = _read_float(where / "started")
            if not announced and pid is not None and started is not None:
                sink.started(pid, started)
                announced = True
            offset = self._pump(where / "log", offset, sink)
            if status.exists():
                offset = self._pump(where / "log", offset, sink)
                code = _read_int(status)
                return Outcome(
                    exit_code=code, started_at=started, ended_at=status.stat().st_mtime,
                    cancelled=(where / "cancelled").exists(), timed_out=timed_out,
                    phase="setup" if (where / "phase").exists() else "run")
            if pid is not None and not _alive(pid) and not status.exists():
                await asyncio.sleep(POLL)
                if not status.exists():
                    return Outcome(exit_code=None, lost="the process vanished without a status")
            if deadline is not None and time.monotonic() > deadline and not timed_out:
                timed_out = True
                await self._signal(where, plan.grace)
            await asyncio.sleep(POLL)

    @staticmethod
    def _pump(path: Path, offset: int, sink: AttemptSink) -> int:
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return offset
        if data:
            sink.log(data)
        return offset + len(data)

    async def _signal(self, where: Path, grace: float) -> None:
        pid = _read_int(where / "pid")
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and not (where / "status").exists():
            await asyncio.sleep(POLL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    async def cancel(self, plan: AttemptPlan, grace: float) -> None:
        where = self._dir(plan)
        if not where.exists() or (where / "status").exists():
            return  # never started, or already ended: quietly
        (where / "cancelled").touch()
        await self._signal(where, grace)

    async def close(self) -> None:
        """Nothing to close; running attempts go on."""


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_float(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
