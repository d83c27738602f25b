"""The built-in ssh backend: runs attempts on inventory hosts through the attempt wrapper.

Per host, once per runner-bundle version: the bundle is unpacked into ``<workdir>/lib/<hash>``.
Per input file, once per host: the file goes into ``<workdir>/cache/<sha256>``. Per attempt: one
channel runs ``wrapper.py launch`` with the plan on stdin; that channel then carries the log
(stdout) and the events (stderr, JSON lines) until the exit record arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections.abc import Callable
from pathlib import Path

from fleet.backends.base import (
    AttemptPlan,
    AttemptSink,
    Backend,
    HostLost,
    Outcome,
    SetupFailed,
)
from fleet.backends.connection import ConnectionPool, SSHOptions, Transport
from fleet.inventory import Host
from fleet.runners import bundle, manifests

log = logging.getLogger(__name__)


def sh_path(path: str) -> str:
    """Quote a host path for sh, keeping a leading ``~/`` expandable as ``"$HOME"/``."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


class SSHBackend(Backend):
    name = "ssh"

    def __init__(
        self,
        options: SSHOptions,
        lookup_host: Callable[[str], Host | None],
        blob_path: Callable[[str], Path],
    ) -> None:
        self.pool = ConnectionPool(options, lookup_host)
        self.blob_path = blob_path
        self._lib_ready: dict[str, asyncio.Future[None]] = {}
        self._cached: dict[str, set[str]] = {}
        self._cache_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ paths on the host

    @staticmethod
    def lib_dir(host: Host) -> str:
        return join(host.workdir, "lib", bundle().digest)

    @staticmethod
    def cache_dir(host: Host) -> str:
        return join(host.workdir, "cache")

    @staticmethod
    def attempt_dir(host: Host, attempt_id: str) -> str:
        return join(host.workdir, "attempts", attempt_id)

    # ------------------------------------------------------------------ contract

    async def launch(self, plan: AttemptPlan, sink: AttemptSink, log_offset: int = 0) -> Outcome:
        host = plan.host
        transport = await self._transport(host)
        try:
            await self._ensure_lib(transport, host)
            if plan.inputs:
                await self._ensure_inputs(transport, host, plan)
            return await self._launch(transport, plan, sink, log_offset)
        except HostLost:
            self.pool.drop(host.name)
            self._forget(host.name)
            raise

    async def cancel(self, plan: AttemptPlan, grace: float) -> None:
        host = plan.host
        transport = await self._transport(host)
        await self._ensure_lib(transport, host)
        adir = self.attempt_dir(host, plan.attempt_id)
        cmd = (
            f"exec {shlex.quote(host.python)} -S {sh_path(join(self.lib_dir(host), 'wrapper.py'))}"
            f" cancel {sh_path(adir)} {float(grace)}"
        )
        await transport.exec(cmd)

    async def close(self) -> None:
        await self.pool.close()

    # ------------------------------------------------------------------ steps

    async def _transport(self, host: Host) -> Transport:
        return await self.pool.get(host)

    def _forget(self, host_name: str) -> None:
        self._lib_ready.pop(host_name, None)
        self._cached.pop(host_name, None)

    async def _ensure_lib(self, transport: Transport, host: Host) -> None:
        """Unpack the runner bundle into the host's lib dir unless it is there. Idempotent."""
        fut = self._lib_ready.get(host.name)
        if fut is None:
            fut = asyncio.ensure_future(self._install_lib(transport, host))
            self._lib_ready[host.name] = fut
        try:
            await asyncio.shield(fut)
        except BaseException:
            if self._lib_ready.get(host.name) is fut:
                del self._lib_ready[host.name]
            raise

    async def _install_lib(self, transport: Transport, host: Host) -> None:
        lib = sh_path(self.lib_dir(host))
        libs = sh_path(join(host.workdir, "lib"))
        script = (
            f"test -f {lib}/.ok && exit 0; set -e; mkdir -p {libs}; "
            f't=$(mktemp -d {libs}/.tmp.XXXXXX); tar -xzf - -C "$t"; touch "$t/.ok"; '
            f'mv -T "$t" {lib} 2>/dev/null || rm -rf "$t"; test -f {lib}/.ok'
        )
        err = bytearray()
        code = await transport.exec(script, stdin=bundle().tarball, on_stderr=err.extend)
        if code != 0:
            raise SetupFailed(
                f"host {host.name}: cannot install fleet's runners into {self.lib_dir(host)}: "
                f"{err.decode(errors='replace').strip() or f'exit {code}'}"
            )

    async def _ensure_inputs(self, transport: Transport, host: Host, plan: AttemptPlan) -> None:
        """Upload the plan's input files the host's cache lacks (each sha256 once per host)."""
        lock = self._cache_locks.setdefault(host.name, asyncio.Lock())
        known = self._cached.setdefault(host.name, set())
        wanted = sorted({f.sha256 for f in plan.inputs} - known)
        if not wanted:
            return
        async with lock:
            wanted = sorted(set(wanted) - known)
            if not wanted:
                return
            cache = sh_path(self.cache_dir(host))
            out = bytearray()
            check = (
                f"mkdir -p {cache} && cd {cache} && for s in {' '.join(wanted)}; "
                f'do [ -f "$s" ] || echo "$s"; done'
            )
            code = await transport.exec(check, on_stdout=out.extend)
            if code != 0:
                raise SetupFailed(f"host {host.name}: cannot create the input cache {self.cache_dir(host)}")
            missing = out.decode().split()
            for sha in missing:
                data = await asyncio.to_thread(self.blob_path(sha).read_bytes)
                upload = (
                    f"cd {cache} && cat > .up.$$ && mv -f .up.$$ {shlex.quote(sha)}"
                )
                if await transport.exec(upload, stdin=data) != 0:
                    raise SetupFailed(f"host {host.name}: upload of input {sha[:12]} failed")
            known.update(wanted)

    def _payload(self, plan: AttemptPlan, log_offset: int) -> dict[str, object]:
        host = plan.host
        payload: dict[str, object] = {
            "attempt_dir": self.attempt_dir(host, plan.attempt_id),
            "cache_dir": self.cache_dir(host),
            "job": plan.job,
            "env": plan.env,
            "setup": plan.setup,
            "timeout": plan.timeout,
            "grace": plan.grace,
            "inputs": [[f.rel_path, f.sha256] for f in plan.inputs],
            "offset": log_offset,
        }
        if plan.argv is not None:
            payload["argv"] = plan.argv
        else:
            manifest = manifests()[plan.runner]
            entry = join(self.lib_dir(host), plan.runner, manifest.entry or "run.py")
            # The wrapper expands ``~`` in the entry path (no shell is involved there).
            payload["entry"] = [host.python, entry, "job.json"]
        return payload

    async def _launch(
        self, transport: Transport, plan: AttemptPlan, sink: AttemptSink, log_offset: int
    ) -> Outcome:
        host = plan.host
        wrapper = sh_path(join(self.lib_dir(host), "wrapper.py"))
        cmd = f"exec {shlex.quote(host.python)} -S {wrapper} launch"
        events = _EventReader(sink)
        stdin = json.dumps(self._payload(plan, log_offset)).encode()
        code = await transport.exec(cmd, stdin=stdin, on_stdout=sink.log, on_stderr=events.feed)
        events.flush()
        if events.outcome is not None:
            return events.outcome
        if code == 127:
            raise SetupFailed(
                f"host {host.name}: {host.python} not found; install Python 3.8+ or set "
                f"ansible_python_interpreter for the host"
            )
        raise HostLost(
            f"host {host.name}: attempt wrapper ended without an exit record (exit {code}): "
            f"{events.noise_text() or 'no output'}"
        )


class _EventReader:
    """Parses the wrapper's stderr: JSON event lines; anything else is kept as noise."""

    def __init__(self, sink: AttemptSink) -> None:
        self.sink = sink
        self.buf = b""
        self.outcome: Outcome | None = None
        self.noise: list[str] = []

    def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self._line(line)

    def flush(self) -> None:
        if self.buf:
            self._line(self.buf)
            self.buf = b""

    def noise_text(self) -> str:
        return " | ".join(self.noise[-5:])[:2000]

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            return
        try:
            event = json.loads(text)
            kind = event["event"]
        except (ValueError, KeyError, TypeError):
            self.noise.append(text)
            return
        if kind == "started":
            self.sink.started(int(event.get("pid") or 0), float(event.get("at") or 0.0))
        elif kind == "exit":
            st = event.get("status") or {}
            self.outcome = Outcome(
                exit_code=st.get("exit_code"),
                signal=st.get("signal"),
                timed_out=bool(st.get("timed_out")),
                cancelled=bool(st.get("cancelled")),
                phase=st.get("phase") or "run",
                error=st.get("error"),
                result=event.get("result"),
                runner_error=event.get("error"),
                started_at=st.get("started_at"),
                ended_at=st.get("ended_at"),
            )
        elif kind == "lost":
            self.outcome = Outcome(exit_code=None, lost=str(event.get("message") or "lost"))
