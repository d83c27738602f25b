"""Pure-Python lab hosts: one asyncssh server per host, all on the lab's event loop.

A host runs each exec request as ``/bin/sh -c COMMAND`` in its HOME with its own environment,
passes stdin/stdout/stderr through as bytes with flow control both ways, and reports the exit
status or signal, the way sshd does: the exit status is sent once the shell has exited *and* its
stdout and stderr have reached EOF. It also serves SFTP/SCP (relative paths start at HOME) and
direct-tcpip forwarding to loopback, so ProxyJump through it works.

Deliberate differences from sshd: a PTY request is granted but the command still runs on pipes
(Ansible insists on ``ssh -tt``; nothing here needs a terminal); the client's env requests are
ignored; commands run as the test process's user with the real /etc, so ``~user`` expands to that
user's real home (``$HOME`` and ``~`` are the host's; see :meth:`Lab.write_inventory` for how
Ansible is kept inside the host's HOME).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import posixpath
import signal
import subprocess
from pathlib import Path
from typing import Any

import asyncssh

# Stop reading a child's output while this much is waiting to go out on the channel.
_OUTPUT_HIGH_WATER = 256 * 1024
_READ_SIZE = 65536


class AsyncsshHost:
    """The server side of one asyncssh lab host.

    :meth:`start` listens on ``address:port`` (port 0 picks one, kept for later restarts);
    :meth:`stop` closes the listener *and* aborts open connections, as if the host vanished.
    ``commands`` and ``tunnels`` record every exec command and every accepted direct-tcpip
    destination, for assertions; they are appended on the loop thread only.
    """

    def __init__(
        self,
        name: str,
        address: str,
        home: Path,
        env: dict[str, str],
        host_key: asyncssh.SSHKey,
        user: str,
        authorized_keys: asyncssh.SSHAuthorizedKeys,
    ) -> None:
        self.name = name
        self.address = address
        self.port = 0
        self.home = home
        self.env = env
        self.user = user
        self.authorized_keys = authorized_keys
        self.commands: list[str] = []
        self.tunnels: list[tuple[str, int]] = []
        self._host_key = host_key
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen (again) on the host's address and port; return the port. Idempotent."""
        if self._acceptor is None:
            self._acceptor = await asyncssh.create_server(
                lambda: _HostServer(self),
                self.address,
                self.port,
                server_host_keys=[self._host_key],
                process_factory=self._serve,
                sftp_factory=lambda chan: _HomeSFTPServer(chan, os.fsencode(self.home)),
                allow_scp=True,
                encoding=None,
                line_editor=False,
                agent_forwarding=False,
                x11_forwarding=False,
            )
            self.port = self._acceptor.get_port()
        return self.port

    async def stop(self, kill_processes: bool = False) -> None:
        """Stop listening and drop every connection; return once their sessions are cleaned up.

        A session's shell is killed if it is still running (its detached descendants are not:
        ``kill_processes`` is the lab's business, see :meth:`Lab.stop_host`). Idempotent.
        """
        del kill_processes  # handled by the lab, which knows every host's HOME
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        connections = list(self._connections)
        for conn in connections:
            conn.abort()
        await asyncio.gather(*(conn.wait_closed() for conn in connections))
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def _serve(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run one exec (or shell) request to completion; the channel's process_factory."""
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            command = process.command
            if command is not None:
                self.commands.append(command)
            argv = ["/bin/sh", "-c", command] if command is not None else ["/bin/sh"]
            await _run_child(process, argv, self.env, self.home)
        finally:
            self._sessions.discard(task)


class _HostServer(asyncssh.SSHServer):
    """Per-connection server: login as the lab user with the lab key, loopback forwarding."""

    def __init__(self, host: AsyncsshHost) -> None:
        self._host = host
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._host._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._host._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        # Only the lab user has authorized keys: any other name fails like an unknown user.
        if username == self._host.user and self._conn is not None:
            self._conn.set_authorized_keys(self._host.authorized_keys)
        return True

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        if not _is_loopback(dest_host):
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "lab hosts forward to loopback only",
            )
        self._host.tunnels.append((dest_host, dest_port))
        return True


class _HomeSFTPServer(asyncssh.SFTPServer):
    """SFTP (and SCP) with relative paths taken from the host's HOME, like sshd's."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], home: bytes) -> None:
        super().__init__(chan)
        self._home = home

    def map_path(self, path: bytes) -> bytes:
        return path if path.startswith(b"/") else posixpath.join(self._home, path)

    def reverse_map_path(self, path: bytes) -> bytes:
        return path


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _run_child(
    process: asyncssh.SSHServerProcess[bytes], argv: list[str], env: dict[str, str], cwd: Path
) -> None:
    """Run ``argv`` wired to ``process``'s channel and report how it ended.

    If the channel closes first (client gone, host stopped), the child is killed if it is still
    running and the pipes are closed, so grandchildren writing to them get EPIPE as under sshd.
    """
    loop = asyncio.get_running_loop()
    child = _Child(process)
    try:
        transport, _ = await loop.subprocess_exec(
            lambda: child,
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # sshd makes each session's shell a session leader too
        )
    except OSError as exc:
        process.stderr.write(f"lab: cannot run {argv[0]}: {exc}\n".encode())
        process.exit(127)
        return
    stdin_task = asyncio.create_task(child.pump_stdin())
    closed_task = asyncio.create_task(process.channel.wait_closed())
    try:
        waiters: set[asyncio.Future[Any]] = {child.finished, closed_task}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stdin_task.cancel()
        if not child.exited.done():
            # The channel closed first: the shell dies, its detached children do not. (os.kill,
            # not transport.kill(): Popen.poll() would reap behind asyncio's child watcher.)
            with contextlib.suppress(ProcessLookupError):
                os.kill(transport.get_pid(), signal.SIGKILL)
        await child.exited
        transport.close()  # closes our pipe ends: grandchildren still writing get EPIPE
        await asyncio.gather(stdin_task, return_exceptions=True)
    if child.finished.done() and not process.channel.is_closing():
        returncode = child.finished.result()
        if returncode >= 0:
            process.exit(returncode)
        else:
            process.exit_with_signal(signal.Signals(-returncode).name.removeprefix("SIG"))
    closed_task.cancel()
    await asyncio.gather(closed_task, return_exceptions=True)


class _Child(asyncio.SubprocessProtocol):
    """Moves bytes between a child's pipes and an SSH channel, with flow control both ways.

    ``exited`` resolves with the return code when the child has been reaped; ``finished`` when,
    in addition, its stdout and stderr have both reached EOF (the moment sshd sends exit-status).
    """

    def __init__(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        loop = asyncio.get_running_loop()
        self._process = process
        self._transport: asyncio.SubprocessTransport | None = None
        self._open_outputs = {1, 2}
        self._paused_outputs: set[int] = set()
        self._drains: set[asyncio.Task[None]] = set()  # strong refs: the loop only keeps weak ones
        self._stdin_open = True
        self._stdin_writable = asyncio.Event()
        self._stdin_writable.set()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.finished: asyncio.Future[int] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        if self._process.channel.is_closing():
            return  # nobody to deliver to; the child is about to be killed
        writer = self._process.stdout if fd == 1 else self._process.stderr
        writer.write(data)
        if (
            fd not in self._paused_outputs
            and self._process.channel.get_write_buffer_size() > _OUTPUT_HIGH_WATER
        ):
            pipe = self._output_pipe(fd)
            if pipe is not None:
                pipe.pause_reading()
                self._paused_outputs.add(fd)
                drain = asyncio.get_running_loop().create_task(self._resume_after_drain(fd, writer))
                self._drains.add(drain)
                drain.add_done_callback(self._drains.discard)

    async def _resume_after_drain(self, fd: int, writer: asyncssh.SSHWriter[bytes]) -> None:
        try:
            await writer.drain()
        except (OSError, asyncssh.Error):
            return  # channel gone: the child is being killed
        self._paused_outputs.discard(fd)
        pipe = self._output_pipe(fd)
        if pipe is not None and not pipe.is_closing():
            pipe.resume_reading()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 0:
            self._stdin_open = False
            self._stdin_writable.set()
        else:
            self._open_outputs.discard(fd)
            self._maybe_finished()

    def process_exited(self) -> None:
        assert self._transport is not None
        returncode = self._transport.get_returncode()
        assert returncode is not None
        self.exited.set_result(returncode)
        self._maybe_finished()

    def pause_writing(self) -> None:
        self._stdin_writable.clear()

    def resume_writing(self) -> None:
        self._stdin_writable.set()

    async def pump_stdin(self) -> None:
        """Copy the channel's stdin to the child until EOF, then close the child's stdin.

        Signals the client sends are delivered to the child's process group. If the child closed
        its stdin, further input is read and dropped so the client never blocks.
        """
        stdin = self._process.stdin
        try:
            while True:
                try:
                    data = await stdin.read(_READ_SIZE)
                except asyncssh.SignalReceived as exc:
                    self._signal(exc.signal)
                    continue
                except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                    continue
                if not data:
                    break
                await self._stdin_writable.wait()
                pipe = self._stdin_pipe()
                if self._stdin_open and pipe is not None and not pipe.is_closing():
                    pipe.write(data)
        except (OSError, asyncssh.Error):
            pass  # channel gone; the caller tears the child down
        finally:
            pipe = self._stdin_pipe()
            if pipe is not None:
                pipe.close()

    def _signal(self, name: str) -> None:
        number = getattr(signal, f"SIG{name}", None)
        if number is not None and not self.exited.done() and self._transport is not None:
            try:
                os.killpg(self._transport.get_pid(), number)
            except ProcessLookupError:
                pass

    def _output_pipe(self, fd: int) -> asyncio.ReadTransport | None:
        assert self._transport is not None
        pipe = self._transport.get_pipe_transport(fd)
        return pipe if isinstance(pipe, asyncio.ReadTransport) else None

    def _stdin_pipe(self) -> asyncio.WriteTransport | None:
        assert self._transport is not None
        pipe = self._transport.get_pipe_transport(0)
        return pipe if isinstance(pipe, asyncio.WriteTransport) else None

    def _maybe_finished(self) -> None:
        if self.exited.done() and not self._open_outputs and not self.finished.done():
            self.finished.set_result(self.exited.result())
