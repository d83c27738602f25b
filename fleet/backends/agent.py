"""The controller's end of a host agent (``runners/wrapper.py agent``).

One long-lived channel per host carries every attempt: requests go down as JSON lines, frames
come back (a JSON header line; ``log`` frames are followed by raw bytes). Each attempt waits on
a future that the ``exit`` or ``lost`` frame resolves. If the channel dies, every attempt
waiting on it gets ``HostLost`` (the attempts themselves keep running on the host).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from fleet.backends import frames
from fleet.backends.base import AttemptSink, BackendError, HostLost, Outcome, SetupFailed
from fleet.backends.connection import Channel
from fleet.models.spec import SHA256_RE

log = logging.getLogger(__name__)


class InputsMissing(BackendError):
    """The host's cache lacks inputs of a launch (or had them altered: the agent removed
    those): upload them and launch again. The attempt did not start."""

    def __init__(self, host: str, shas: list[str]) -> None:
        super().__init__(f"host {host}: inputs missing from its cache: {', '.join(s[:12] for s in shas)}")
        self.shas = shas


class _Reader:
    """Buffered reads of the agent's stdout with a bound on a header line (a lying agent must
    not make the controller buffer gigabytes looking for a newline)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.buf = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        data = await self.channel.read(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def line(self, limit: int) -> bytes:
        """One line without its newline; b"" at EOF. Raises ProtocolError past ``limit``."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise frames.ProtocolError(f"a frame header of over {limit} bytes")
            start = len(self.buf)
            if self.eof or not await self._fill():
                return b""

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.eof or not await self._fill():
                raise asyncio.IncompleteReadError(bytes(self.buf), n)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


@dataclass
class _Waiter:
    sink: AttemptSink | None
    future: asyncio.Future[Outcome]


RENEW = b'{"op": "renew"}\n'


def renew_period(attempt_lease: float, keepalive_interval: float) -> float:
    """Seconds between two renewals of the attempt leases: four per lease, and within the SSH
    keepalive interval, so that the agents' answers keep the keepalives quiet (``Renewer``)."""
    period = attempt_lease / 4
    if keepalive_interval > 0:
        period = min(period, keepalive_interval * 0.9)
    return period


class Renewer:
    """Extends the attempt lease of every attempt every agent follows (runners/wrapper.py),
    all agents at once every ``period`` seconds: while this controller is alive and connected,
    its jobs never stop themselves.

    Each agent answers a renewal (a pong for no attempt), and what a connection receives
    restarts its SSH keepalive timer: a quiet host costs one round trip per period, not a
    renewal plus a keepalive request. And all at once, the loop served every ``TURN`` seconds
    of sending (a send is ~0.06 ms; the answers of the last sends are read in between): a
    renewal or a keepalive on its own timer costs the controller a wake-up of its own,
    together they come in a few passes of the loop. At 1,000 hosts, at rest: a timer per host
    for its renewals and asyncssh's for its keepalives, 3.8-4.3% of a core; answered renewals
    on a timer per host, 6.0-6.5%; all together, about 2% (bench/scale.py "steady")."""

    TURN = 0.003

    def __init__(self, period: float) -> None:
        if not period > 0:  # a beat of 0 would never let the loop sleep
            raise ValueError(f"the lease renewal period must be above 0 s, not {period}")
        self.period = period
        self.agents: dict[str, AgentChannel] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, agent: AgentChannel) -> None:
        self.agents[agent.host_name] = agent
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="agent-renewals")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self.agents:
            # On a fixed beat, not a period after the last pass ended: the time between two
            # renewals of a host stays within the keepalive interval however long a pass is.
            due = max(due + self.period, loop.time())
            await asyncio.sleep(due - loop.time())
            turn = time.perf_counter() + self.TURN
            for name, agent in list(self.agents.items()):
                if time.perf_counter() > turn:
                    await asyncio.sleep(0)
                    turn = time.perf_counter() + self.TURN
                try:
                    agent.send_raw(RENEW)
                except Exception as exc:  # noqa: BLE001 - a channel that died: its host gets a new agent
                    if not agent.alive:
                        if self.agents.get(name) is agent:
                            del self.agents[name]
                    else:  # not known dead: tried again next time
                        log.warning("renewing the attempt leases on %s failed: %s", name, exc)

    def close(self) -> None:
        self.agents.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None  # an agent added after this starts a new one


class AgentChannel:
    def __init__(self, host_name: str, channel: Channel) -> None:
        self.host_name = host_name
        self.channel = channel
        self.waiters: dict[str, _Waiter] = {}
        self.dead: str | None = None
        self.stderr_tail: list[str] = []
        self._pings = 0
        self._reader = asyncio.create_task(self._read_loop(), name=f"agent-{host_name}")
        self._err_reader = asyncio.create_task(self._read_stderr(), name=f"agent-err-{host_name}")

    @property
    def alive(self) -> bool:
        return self.dead is None

    async def run(self, attempt_id: str, request: dict[str, Any], sink: AttemptSink) -> Outcome:
        """Send a launch/follow request and wait for the attempt's end.

        Raises HostLost if the channel dies first.
        """
        if self.dead is not None:
            raise HostLost(self.dead)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiters[attempt_id] = _Waiter(sink, future)
        try:
            self.send(dict(request, id=attempt_id))
            return await future
        finally:
            self.waiters.pop(attempt_id, None)

    async def ping(self, timeout: float) -> None:
        """Round trip through the agent; raises HostLost if no answer within ``timeout``."""
        if self.dead is not None:
            raise HostLost(self.dead)
        self._pings += 1
        ping_id = f"ping-{self._pings}"
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiters[ping_id] = _Waiter(None, future)
        try:
            self.send({"op": "ping", "id": ping_id})
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise HostLost(f"host {self.host_name}: agent did not answer within {timeout:g} s") from None
        finally:
            self.waiters.pop(ping_id, None)

    async def gc(self, root: str, max_age: float, max_bytes: int, keep: list[str],
                 timeout: float) -> dict[str, Any]:
        """Retention of ended attempt directories under ``root`` (see ``gc_attempts`` in
        runners/wrapper.py); returns ``{"removed": [ids], "freed": N, "left": N}``."""
        if self.dead is not None:
            raise HostLost(self.dead)
        self._pings += 1
        gc_id = f"gc-{self._pings}"
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiters[gc_id] = _Waiter(None, future)
        try:
            self.send({"op": "gc", "id": gc_id, "root": root, "max_age": max_age,
                       "max_bytes": max_bytes, "keep": keep})
            outcome = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise HostLost(f"host {self.host_name}: attempt gc took over {timeout:g} s") from None
        finally:
            self.waiters.pop(gc_id, None)
        return outcome.result or {}

    def send(self, request: dict[str, Any]) -> None:
        self.send_raw(json.dumps(request).encode() + b"\n")

    def send_raw(self, line: bytes) -> None:
        if self.dead is not None:
            raise HostLost(self.dead)
        self.channel.write(line)

    def close(self) -> None:
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001 - closing a dead channel
            pass
        self._reader.cancel()
        self._err_reader.cancel()

    async def _read_stderr(self) -> None:
        while True:
            line = await self.channel.stderr.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail = (self.stderr_tail + [text])[-10:]
            log.warning("agent on %s: %s", self.host_name, text)

    async def _read_loop(self) -> None:
        reason = "agent channel closed"
        error_cls: type[BackendError] = HostLost
        reader = _Reader(self.channel)
        try:
            while True:
                line = await reader.line(frames.MAX_HEADER)
                if not line and reader.eof:
                    code = await self._exit_code()
                    if code == 127:
                        error_cls = SetupFailed
                        reason = "cannot start fleet's agent: python not found (install Python " \
                                 ">= 3.8 or set ansible_python_interpreter)"
                    elif code == 86:  # fleet.backends.ssh.BUNDLE_CHANGED
                        reason = ("fleet's runner bundle on the host failed its content check "
                                  "(changed since it was installed); it is installed again")
                    elif code is not None:
                        reason = f"agent exited with {code}"
                    break
                if not line.strip():
                    continue
                header = frames.header(line)
                data = await reader.exactly(header["n"]) if header["t"] == "log" else b""
                self._dispatch(header, data)
        except asyncio.CancelledError:
            reason = "agent channel closed by the controller"
            raise
        except frames.ProtocolError as exc:
            reason = f"agent broke the protocol: {exc}"
            self.close_soon()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError, KeyError) as exc:
            reason = f"agent channel broke: {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - asyncssh raises its own error types here
            reason = f"agent channel lost: {exc}"
        finally:
            tail = " | ".join(self.stderr_tail[-3:])
            self.dead = f"host {self.host_name}: {reason}" + (f" ({tail})" if tail else "")
            for waiter in list(self.waiters.values()):
                if not waiter.future.done():
                    waiter.future.set_exception(error_cls(self.dead))

    async def _exit_code(self) -> int | None:
        try:
            done = await asyncio.wait_for(self.channel.wait(), 2.0)
        except Exception:  # noqa: BLE001 - best effort: the exit status only refines the message
            return None
        return done if isinstance(done, int) else getattr(done, "exit_status", None)

    def close_soon(self) -> None:
        """Close the channel from inside the read loop (the agent broke the protocol)."""
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001 - closing a dead channel
            pass

    def _dispatch(self, header: dict[str, Any], data: bytes) -> None:
        """Hand one frame to the attempt waiting for it. Every field is checked first
        (fleet.backends.frames): a bad one fails that attempt, naming the field."""
        kind = header["t"]
        waiter = self.waiters.get(header.get("a") or "")
        if waiter is None:
            if kind == "error":
                log.warning("agent on %s: %s", self.host_name, str(header.get("message"))[:500])
            return
        if waiter.future.done():
            return
        try:
            self._deliver(kind, header, data, waiter)
        except frames.BadFrame as exc:
            waiter.future.set_exception(frames.BadFrame(f"host {self.host_name}: its agent sent an "
                                                        f"invalid {kind} frame: {exc}"))
        except Exception:  # a sink's trouble (the controller's own) must not end the channel
            log.exception("handling a %s frame of %s on %s", kind, header.get("a"), self.host_name)

    def _deliver(self, kind: str, header: dict[str, Any], data: bytes, waiter: _Waiter) -> None:
        if kind == "log":
            if waiter.sink is not None:
                waiter.sink.log(data)
        elif kind == "started":
            if waiter.sink is not None:
                pid = frames.opt_int(header.get("pid"), "pid", 0, 1 << 31) or 0
                waiter.sink.started(pid, frames.opt_time(header.get("at"), "at") or 0.0)
        elif kind == "exit":
            waiter.future.set_result(frames.exit_outcome(header))
        elif kind == "gc":
            removed = header.get("removed") or []
            if not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
                raise frames.BadFrame("removed must be a list of attempt ids")
            waiter.future.set_result(Outcome(exit_code=0, result={
                "removed": removed, "freed": frames.opt_int(header.get("freed"), "freed", 0, 1 << 62) or 0,
                "left": frames.opt_int(header.get("left"), "left", 0, 1 << 62) or 0}))
        elif kind == "pong":
            waiter.future.set_result(Outcome(exit_code=0))
        elif kind == "lost":
            message = frames.opt_text(header.get("message"), "message") or "lost"
            waiter.future.set_result(Outcome(exit_code=None, lost=message))
        elif kind == "missing":
            shas = header.get("inputs")
            if not isinstance(shas, list) or not shas or not all(isinstance(x, str) and SHA256_RE.match(x)
                                                                 for x in shas):
                raise frames.BadFrame("inputs must be a list of sha256 hashes")
            waiter.future.set_exception(InputsMissing(self.host_name, shas))
        elif kind == "error":
            message = frames.opt_text(header.get("message"), "message") or "error"
            waiter.future.set_exception(BackendError(f"host {self.host_name}: agent: {message}"))
