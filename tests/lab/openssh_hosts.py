"""Real OpenSSH lab hosts: one ``sshd -D -e`` per host, supervised from the lab's event loop.

Each sshd runs in a private mount namespace with an overlay on /etc, so the host has its own
/etc/passwd: the login user's shell is /bin/sh (no .bashrc, no pyenv init) and its home is the
host's HOME, without touching the real /etc. Where namespaces or overlay mounts are not
permitted, sshd runs in the root namespace with ``SetEnv HOME=...`` instead: commands then run
under the user's real login shell and start in the user's real home directory.

Startup waits on sshd's own "Server listening" log line, not on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
import subprocess
from pathlib import Path

from . import procs

SSHD = Path("/usr/sbin/sshd")
_START_TIMEOUT = 10.0
_SSHD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class SshdError(RuntimeError):
    """sshd did not come up; the message holds the end of its log."""


def namespaces_work(scratch: Path) -> bool:
    """Whether this process may run a command in a new mount namespace with /etc overlaid.

    Blocks for one short subprocess (~20 ms); ``scratch`` is a directory it may use.
    """
    upper, work = scratch / "probe-upper", scratch / "probe-work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            _mount_etc(upper, work),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0


class OpensshHost:
    """The server side of one OpenSSH lab host; state lives in ``directory``.

    :meth:`start` picks a free port the first time and keeps it; :meth:`stop` kills the listener
    and every per-connection sshd (dropping open connections), and with ``kill_processes`` every
    other process in the host's namespace too.
    """

    def __init__(
        self,
        *,
        address: str,
        directory: Path,
        home: Path,
        user: str,
        host_key_path: Path,
        authorized_keys_path: Path,
        env: dict[str, str],
        namespaces: bool,
    ) -> None:
        self.address = address
        self.port = 0
        self.directory = directory
        self.home = home
        self.user = user
        self.host_key_path = host_key_path
        self.authorized_keys_path = authorized_keys_path
        self.env = env
        self.namespaces = namespaces
        self._process: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._namespace: str | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    async def start(self) -> int:
        """Start sshd and return its port once it listens. Idempotent.

        Raises SshdError if sshd exits or does not listen within 10 s. A port chosen here that
        turns out to be taken is replaced (up to 3 tries); a port kept from before is not.
        """
        if self._process is not None:
            return self.port
        tries = 3 if self.port == 0 else 1
        for attempt in range(tries):
            if self.port == 0 or attempt > 0:
                self.port = _free_port(self.address)
            try:
                await self._start_once()
                return self.port
            except SshdError as exc:
                if "Address already in use" not in str(exc) or attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def members(self) -> set[int]:
        """Every process of this host: its sshd listener, the per-connection sshds and all
        they started (namespace members, or descendants without namespaces)."""
        if self._process is None:
            return set()
        if self._namespace is not None:
            return set(procs.namespace_members(self._namespace)) | {self._process.pid}
        return set(procs.descendants(self._process.pid))

    async def stop(self, kill_processes: bool = False) -> None:
        """Kill this host's sshd processes (all of its processes with ``kill_processes``) and
        reap the listener. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if self._namespace is not None:
            members = procs.namespace_members(self._namespace)
        else:
            members = procs.descendants(process.pid)
        if not kill_processes:
            members = [pid for pid in members if procs.executable(pid) == str(SSHD)]
        procs.kill_all(set(members) | {process.pid})
        await process.wait()
        if self._log_task is not None:
            await self._log_task

    async def _start_once(self) -> None:
        self._write_config()
        if self.namespaces:
            self._write_etc_overlay()
            upper, work = self._etc_dirs()
            script = f"{_mount_etc(upper, work)} && exec {SSHD} -D -e -f {shlex.quote(str(self.config_path))}"
            argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]
        else:
            argv = [str(SSHD), "-D", "-e", "-f", str(self.config_path)]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_SSHD_ENV,
            start_new_session=True,
        )
        listening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert process.stderr is not None
        log_task = asyncio.create_task(self._follow_log(process.stderr, listening))
        try:
            await asyncio.wait_for(asyncio.shield(listening), _START_TIMEOUT)
        except (SshdError, TimeoutError) as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            await log_task
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise SshdError(f"sshd for {self.address}:{self.port} did not start: {tail}") from exc
        self._process, self._log_task = process, log_task
        self._namespace = procs.mount_namespace(process.pid) if self.namespaces else None

    async def _follow_log(
        self, stream: asyncio.StreamReader, listening: asyncio.Future[None]
    ) -> None:
        """Append sshd's stderr to sshd.log; resolve ``listening`` when it says so."""
        with self.log_path.open("ab", buffering=0) as log:
            while line := await stream.readline():
                log.write(line)
                if not listening.done() and b"Server listening on" in line:
                    listening.set_result(None)
        if not listening.done():
            listening.set_exception(SshdError("sshd exited"))

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = dict(self.env)
        if not self.namespaces:
            env["HOME"] = str(self.home)
        set_env = " ".join(f'"{name}={value}"' for name, value in env.items())
        lines = [
            f"ListenAddress {self.address}:{self.port}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            f"AllowUsers {self.user}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "MaxSessions 1000",
            "MaxStartups 200:30:400",
            "Subsystem sftp internal-sftp",
            "AllowTcpForwarding yes",
            "AllowAgentForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "LogLevel INFO",
            f"SetEnv {set_env}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _etc_dirs(self) -> tuple[Path, Path]:
        return self.directory / "etc-upper", self.directory / "etc-work"

    def _write_etc_overlay(self) -> None:
        """The host's own /etc files: a passwd giving the user /bin/sh and the host's HOME."""
        upper, work = self._etc_dirs()
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        entries = []
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 7 and fields[0] == self.user:
                fields[5], fields[6] = str(self.home), "/bin/sh"
            entries.append(":".join(fields))
        (upper / "passwd").write_text("\n".join(entries) + "\n")


def _mount_etc(upper: Path, work: Path) -> str:
    options = f"lowerdir=/etc,upperdir={upper},workdir={work}"
    return f"mount -t overlay overlay -o {shlex.quote(options)} /etc"


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])
