"""Fresh ``fleet`` processes without paying for Python's start-up each time.

Most of the suite's CPU went into starting interpreters: every ``fleet serve`` imported FastAPI,
SQLAlchemy and asyncssh again (~1.5 s), every CLI call ~0.5 s. A zygote is one process per test
worker that imports fleet once and then, on request, forks a child that *is* a fresh
``python -m fleet ARGS`` process from that point on: its own pid and session, the caller's
environment and working directory, stdin/stdout/stderr on the caller's files. The child runs the
real ``fleet.cli.main`` (so ``kill -9`` of a server, restarts, exit codes all mean what they mean
with a real process). The zygote is single-threaded and has started nothing (no event loop, no
thread, no connection), so forking it is safe.

Not for tests about the interpreter's start itself (import time, packaging, a broken
environment): those run ``python -m fleet`` as a subprocess.

Protocol (a Unix socket pair): the caller sends one JSON request with four file descriptors
(stdin, stdout, stderr, a pipe for the exit status); the zygote answers with the child's pid,
reaps the child when it ends and writes its exit status into that pipe.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent


# The CLI and the server with what they import, also on the way (migrations, the SSH backend,
# uvicorn); Ansible's inventory code comes in through _preload_ansible.
PRELOAD = ("fleet.cli.main", "fleet.controller", "fleet.migrations", "fleet.backends.agent",
           "fleet.backends.connection", "fleet.backends.ssh", "fleet.ansible", "alembic.command",
           "uvicorn", "uvicorn.protocols.http.h11_impl", "uvicorn.lifespan.on", "uvicorn.loops.asyncio",
           "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql")


def _preload_ansible() -> None:
    """Load a one-host inventory the way a server does (fleet.inventory, in-process Ansible),
    so children start with Ansible's inventory code imported and its plugin loader set up.

    Ansible reads its settings when it is imported, so the zygote's environment decides them
    for every child: the worker's, plus what fleet.inventory sets for the import (unparsed
    sources are errors). Inventory parsing, the only Ansible that runs inside a server, reads
    none of the settings tests give servers (ANSIBLE_HOME, ANSIBLE_LOCAL_TEMP, ANSIBLE_SSH_ARGS:
    those are for the ansible-playbook processes a server starts, which read their own)."""
    from fleet.inventory import load_inventory

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "hosts.ini"
        source.write_text("preload ansible_connection=local\n")
        load_inventory(str(source), Path(tmp) / "work")


def _preload_first_use() -> None:
    """What every server did again after the fork, on first use (a profile of the suite: ~40 s
    of its CPU): alembic's runtime and the migrations' modules (one upgrade of an in-memory
    database, disposed of before any fork), anyio's asyncio backend (the first worker-thread
    call), the backend plugins' modules (entry points), and the statistics a matrix verdict
    imports."""
    from sqlalchemy import create_engine

    from fleet.backends.registry import discover
    from fleet.migrations import upgrade

    engine = create_engine("sqlite://")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    import anyio._backends._asyncio  # noqa: F401

    for entry in discover().values():
        try:
            entry.load()
        except Exception:  # a broken plugin is the server's to report, as it would
            pass
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        pass


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become ``python -m fleet ARGS``, and end as that would."""
    if request.get("new_session"):
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [sys.executable + " -m fleet", *request["argv"]]
    sys.stdin = open(0, closefd=False)  # the process's own descriptors, as at interpreter start
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    from fleet.cli.main import main

    # End as the interpreter would (exit status, traceback, atexit handlers, flushed streams)
    # but without tearing down every module: that touches every object and so copies the
    # zygote's whole heap (~0.3 s per child).
    code = 0
    try:
        main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught error, as Python reports it
        import traceback

        traceback.print_exc()
        code = 1
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def serve(sock: socket.socket) -> None:
    """The zygote's loop: import fleet once, then fork a child per request and tell each
    child's exit status (as Popen's returncode: negative for a signal) through its status pipe."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    _preload_ansible()
    _preload_first_use()

    import gc

    gc.freeze()  # what was imported stays out of the children's collections (no copy-on-write)
    status: dict[int, int] = {}  # child pid -> the write end of its status pipe
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    sock.send(b"ready")
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            while status:
                try:
                    pid, how = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                fd = status.pop(pid, None)
                if fd is not None:
                    os.write(fd, str(os.waitstatus_to_exitcode(how)).encode())
                    os.close(fd)
        if sock not in ready:
            continue
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
        except OSError:
            return
        if not msg:
            return  # the worker went away
        request = json.loads(msg)
        pid = os.fork()
        if pid == 0:
            sock.close()
            for fd in (wake_r, wake_w, fds[3], *status.values()):
                os.close(fd)
            _child(request, fds[:3])
        for fd in fds[:3]:
            os.close(fd)
        status[pid] = fds[3]
        sock.send(str(pid).encode())


@dataclass
class Child:
    """A forked ``fleet`` process: ``pid``, and ``poll()``/``wait()`` like Popen's."""

    pid: int
    status_r: int
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self.status_r], [], [], 0)
            if ready:
                self._read()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            ready, _, _ = select.select([self.status_r], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(f"fleet (pid {self.pid})", timeout or 0)
            self._read()
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def _read(self) -> None:
        data = os.read(self.status_r, 16)
        os.close(self.status_r)
        self.returncode = int(data) if data else -9  # nothing: the zygote itself was killed


class Zygote:
    """The caller's side: ``spawn`` a child, or ``run`` one to its end like subprocess.run."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import socket, sys; from tests.zygote import serve; "
             "serve(socket.socket(fileno=int(sys.argv[1])))", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], cwd=REPO, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()
        if self.sock.recv(16) != b"ready":
            raise RuntimeError("the fleet zygote did not start")

    def spawn(self, argv: list[str], *, stdin: IO[Any] | int | None = None, stdout: IO[Any] | int,
              stderr: IO[Any] | int, env: dict[str, str] | None = None, cwd: str | Path | None = None,
              new_session: bool = False) -> Child:
        def fd(stream: IO[Any] | int | None, mode: int) -> tuple[int, bool]:
            if stream is None or stream == subprocess.DEVNULL:
                return os.open(os.devnull, mode), True
            return (stream if isinstance(stream, int) else stream.fileno()), False

        status_r, status_w = os.pipe()
        opened = [fd(stdin, os.O_RDONLY), fd(stdout, os.O_WRONLY), fd(stderr, os.O_WRONLY)]
        request = {"argv": argv, "env": dict(os.environ if env is None else env),
                   "cwd": str(cwd or os.getcwd()), "new_session": new_session}
        try:
            with self.lock:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [f for f, _ in opened] + [status_w])
                pid = int(self.sock.recv(32))
        finally:
            os.close(status_w)
            for f, mine in opened:
                if mine:
                    os.close(f)
        return Child(pid, status_r)

    def run(self, argv: list[str], *, input: str | None = None, env: dict[str, str] | None = None,
            cwd: str | Path | None = None, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Like ``subprocess.run([python, -m, fleet, *argv], capture_output=True, text=True)``."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                tempfile.TemporaryFile() as inp:
            if input is not None:
                inp.write(input.encode())
                inp.seek(0)
            child = self.spawn(argv, stdin=inp, stdout=out, stderr=err, env=env, cwd=cwd)
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGKILL)
                raise
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(["fleet", *argv], code, out.read().decode(errors="replace"),
                                               err.read().decode(errors="replace"))

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def spawn_server(cmd: list[str], log: IO[bytes]) -> Child:
    """``discovery.start_local``'s ``spawn``, through the zygote."""
    assert cmd[:3] == [sys.executable, "-m", "fleet"], cmd
    return zygote().spawn(cmd[3:], stdout=log, stderr=log, new_session=True)


_zygote: Zygote | None = None
_started = threading.Lock()


def zygote() -> Zygote:
    """This worker's zygote (started on first use; ends with the worker)."""
    global _zygote
    with _started:
        if _zygote is None or _zygote.proc.poll() is not None:
            began = time.monotonic()
            _zygote = Zygote()
            if os.environ.get("FLEET_ZYGOTE_DEBUG"):
                print(f"zygote ready in {time.monotonic() - began:.2f} s", file=sys.stderr)
        return _zygote
