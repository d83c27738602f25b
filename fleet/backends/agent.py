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
from dataclasses import dataclass
from typing import Any

from fleet.backends.base import AttemptSink, BackendError, HostLost, Outcome, SetupFailed
from fleet.backends.connection import Channel

log = logging.getLogger(__name__)


@dataclass
class _Waiter:
    sink: AttemptSink | None
    future: asyncio.Future[Outcome]


class AgentChannel:
    def __init__(self, host_name: str, channel: Channel, renew_every: float | None = None) -> None:
        self.host_name = host_name
        self.channel = channel
        self.waiters: dict[str, _Waiter] = {}
        self.dead: str | None = None
        self.stderr_tail: list[str] = []
        self._pings = 0
        self._reader = asyncio.create_task(self._read_loop(), name=f"agent-{host_name}")
        self._err_reader = asyncio.create_task(self._read_stderr(), name=f"agent-err-{host_name}")
        self._renewer = (asyncio.create_task(self._renew(renew_every), name=f"agent-renew-{host_name}")
                         if renew_every else None)

    async def _renew(self, every: float) -> None:
        """Extend the attempt lease of every attempt the agent follows (see runners/wrapper.py):
        while this controller is alive and connected, its jobs never stop themselves."""
        while self.dead is None:
            await asyncio.sleep(every)
            try:
                self.send({"op": "renew"})
            except Exception:  # noqa: BLE001 - a dead channel ends the loop above
                return

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
        except (TimeoutError, asyncio.TimeoutError):
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
        except (TimeoutError, asyncio.TimeoutError):
            raise HostLost(f"host {self.host_name}: attempt gc took over {timeout:g} s") from None
        finally:
            self.waiters.pop(gc_id, None)
        return outcome.result or {}

    def send(self, request: dict[str, Any]) -> None:
        if self.dead is not None:
            raise HostLost(self.dead)
        self.channel.write(json.dumps(request).encode() + b"\n")

    def close(self) -> None:
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001 - closing a dead channel
            pass
        self._reader.cancel()
        self._err_reader.cancel()
        if self._renewer is not None:
            self._renewer.cancel()

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
        try:
            while True:
                line = await self.channel.readline()
                if not line:
                    code = await self._exit_code()
                    if code == 127:
                        error_cls = SetupFailed
                        reason = "cannot start fleet's agent: python not found (install Python " \
                                 ">= 3.8 or set ansible_python_interpreter)"
                    elif code is not None:
                        reason = f"agent exited with {code}"
                    break
                header = json.loads(line)
                data = await self.channel.readexactly(header["n"]) if header.get("t") == "log" else b""
                self._dispatch(header, data)
        except asyncio.CancelledError:
            reason = "agent channel closed by the controller"
            raise
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

    def _dispatch(self, header: dict[str, Any], data: bytes) -> None:
        kind = header.get("t")
        waiter = self.waiters.get(header.get("a") or "")
        if waiter is None:
            if kind == "error":
                log.warning("agent on %s: %s", self.host_name, header.get("message"))
            return
        if kind == "log":
            if waiter.sink is not None:
                waiter.sink.log(data)
        elif kind == "started":
            if waiter.sink is not None:
                waiter.sink.started(int(header.get("pid") or 0), float(header.get("at") or 0.0))
        elif kind == "exit":
            st = header.get("status") or {}
            waiter.future.set_result(Outcome(
                exit_code=st.get("exit_code"), signal=st.get("signal"),
                timed_out=bool(st.get("timed_out")), cancelled=bool(st.get("cancelled")),
                phase=st.get("phase") or "run", error=st.get("error"), fenced=bool(st.get("fenced")),
                result=header.get("result"), runner_error=header.get("error"),
                started_at=st.get("started_at"), ended_at=st.get("ended_at"),
                outputs=list(header.get("outputs") or []), outputs_problem=header.get("outputs_problem"),
            ))
        elif kind == "gc":
            waiter.future.set_result(Outcome(exit_code=0, result=header))
        elif kind == "pong":
            waiter.future.set_result(Outcome(exit_code=0))
        elif kind == "lost":
            waiter.future.set_result(Outcome(exit_code=None, lost=str(header.get("message") or "lost")))
        elif kind == "error":
            waiter.future.set_exception(BackendError(f"host {self.host_name}: agent: {header.get('message')}"))
