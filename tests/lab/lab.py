"""The device lab: N simulated SSH hosts on 127.0.0.x for end-to-end tests (DESIGN.md §6).

Everything a lab owns lives under its root directory::

    root/client_key[.pub]  authorized_keys  known_hosts  ssh_config
    root/hosts/<name>/home/             the host's HOME (fleet keeps ~/.fleet there)
    root/hosts/<name>/home/bin/         device tool stand-ins (first on the host's PATH)
    root/hosts/<name>/home/root/        the host's own files ($FLEET_HOST_ROOT)
    root/hosts/<name>/home/.lab/        stand-in config (tools.json) and state (state.json)
    root/hosts/<name>/ssh_host_ed25519_key[.pub]
    root/hosts/<name>/sshd_config  sshd.log  etc-upper/      (OpenSSH hosts)

Keys are generated once and reloaded, so a restarted host (or a new Lab on the same root) keeps
its identity. Every public method is synchronous, thread-safe and blocks until done.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import pwd
import shlex
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import asyncssh

from . import procs
from .asyncssh_hosts import AsyncsshHost
from .homes import host_env, host_root, lab_vars, prepare_home, read_state, read_tools, write_tools
from .keys import load_or_create_key, public_key_text
from .loop import LoopThread
from .openssh_hosts import SSHD, OpensshHost, namespaces_work
from .profiles import PROFILES, Profile

KINDS = ("asyncssh", "openssh")


class LabError(RuntimeError):
    """A lab request that cannot be met (unknown host, no sshd here, host not started...)."""


def have_sshd() -> bool:
    """Whether OpenSSH hosts can run here: /usr/sbin/sshd exists and we are root (sshd's
    privilege separation and the per-host mount namespace both need root)."""
    return SSHD.exists() and os.geteuid() == 0


@dataclass
class LabHost:
    """One simulated host. ``port`` is 0 until the host has first been started."""

    name: str
    address: str
    port: int
    profile: Profile
    home: Path
    kind: str  # "asyncssh" | "openssh"
    host_public_key: str  # "ssh-ed25519 AAAA..."
    slots: int | None = None

    @property
    def host_key_line(self) -> str:
        """The host's known_hosts line, ``[addr]:port ssh-ed25519 AAAA...``."""
        return f"[{self.address}]:{self.port} {self.host_public_key}"


class _Server(Protocol):
    port: int

    async def start(self) -> int: ...

    async def stop(self, kill_processes: bool = False) -> None: ...


class Lab:
    """A set of lab hosts sharing one client key, one event loop thread and one root directory.

    Hosts are added with :meth:`add_hosts` and served once the lab is started (hosts added to a
    running lab start before ``add_hosts`` returns). :meth:`stop` takes everything down and
    kills every process still running with a lab host's HOME, so nothing leaks.
    """

    def __init__(
        self, root: Path, *, python: Path | None = None, namespaces: bool | None = None
    ) -> None:
        """``python`` is the interpreter hosts offer as ``python3`` and in the inventory's
        ``ansible_python_interpreter``; by default the real interpreter behind this one.
        ``namespaces`` says whether OpenSSH hosts get a private mount namespace with their own
        /etc/passwd (None: if this machine permits it; False: the SetEnv HOME fallback)."""
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.user: str = pwd.getpwuid(os.geteuid()).pw_name
        self.python: Path = python or Path(os.path.realpath(sys.executable))
        self.hosts: list[LabHost] = []
        client_key = load_or_create_key(self.client_key_path, "fleet-lab-client")
        self._authorized_keys_path.write_text(public_key_text(client_key) + "\n")
        self._authorized_keys = asyncssh.import_authorized_keys(public_key_text(client_key))
        self._servers: dict[str, _Server] = {}
        self._started: set[str] = set()
        self._lock = threading.RLock()
        self._loop: LoopThread | None = None
        self._namespaces = namespaces

    # -- paths ---------------------------------------------------------------------------------

    @property
    def client_key_path(self) -> Path:
        """The ed25519 private key (OpenSSH format, mode 0600) every host accepts."""
        return self.root / "client_key"

    @property
    def known_hosts_path(self) -> Path:
        """A known_hosts file of every started host, rewritten whenever hosts start."""
        return self.root / "known_hosts"

    @property
    def ssh_config_path(self) -> Path:
        """An ssh_config for the OpenSSH client (``ssh -F``): lab key, lab known_hosts, strict
        host key checking, one control master per host kept 30 s (Ansible's tasks reuse it)."""
        return self.root / "ssh_config"

    @property
    def _authorized_keys_path(self) -> Path:
        return self.root / "authorized_keys"

    # -- lifecycle -----------------------------------------------------------------------------

    def add_hosts(
        self, profile: str, count: int, kind: str = "asyncssh", *, slots: int | None = None
    ) -> list[LabHost]:
        """Create ``count`` hosts of ``profile``, named ``<prefix>-<n>`` on fresh addresses.

        Raises KeyError for an unknown profile, ValueError for an unknown kind and LabError for
        OpenSSH hosts where :func:`have_sshd` is false.
        """
        spec = PROFILES[profile]
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if kind == "openssh" and not have_sshd():
            raise LabError(f"OpenSSH hosts need root and {SSHD}")
        with self._lock:
            added = [self._new_host(spec, kind, slots) for _ in range(count)]
            if self._loop is not None:
                self._start_hosts([host.name for host in added])
            return added

    def start(self) -> None:
        """Start every host not yet running; return when all listen. Idempotent."""
        with self._lock:
            if self._loop is None:
                self._loop = LoopThread(f"fleet-lab-{self.root.name}")
                atexit.register(self.stop)  # no sshd outlives a test run that forgot stop()
            self._start_hosts([host.name for host in self.hosts])

    def stop(self) -> None:
        """Stop every host, kill every process left on them, join the loop thread. Idempotent.

        The hosts keep their addresses, ports and keys: :meth:`start` brings them all back.
        """
        with self._lock:
            if self._loop is None:
                return
            loop, self._loop = self._loop, None
            atexit.unregister(self.stop)
            try:
                loop.run(self._stop_servers(list(self._servers), kill_processes=True))
            finally:
                procs.kill_homes([host.home for host in self.hosts])
                self._started.clear()
                loop.close()

    def start_host(self, name: str) -> None:
        """Bring a stopped host back on the same address, port and host key. Idempotent.

        Raises LabError if the lab itself is not running.
        """
        with self._lock:
            self.host(name)
            if self._loop is None:
                raise LabError("the lab is not running: call start() first")
            self._start_hosts([name])

    def stop_host(self, name: str, *, kill_processes: bool = False) -> None:
        """Take one host off the network: stop listening and drop its open connections.

        The commands of dropped sessions lose their channel: an asyncssh host kills them, under
        sshd they die of SIGPIPE when they next write. Processes they detached keep running,
        like jobs on a host that only lost its network; with ``kill_processes`` every process
        of the host is killed too, like a power cut. Idempotent.
        """
        with self._lock:
            host = self.host(name)
            if self._loop is None or name not in self._started:
                return
            self._loop.run(self._stop_servers([name], kill_processes=kill_processes))
            self._started.discard(name)
            if kill_processes:
                procs.kill_homes([host.home])

    def freeze_host(self, name: str) -> None:
        """Hang an OpenSSH host: SIGSTOP its sshd processes and every process of its own (jobs
        included). Its TCP port still accepts and its kernel still ACKs, but nothing answers,
        like a box that locked up. :meth:`thaw_host` resumes it."""
        self._signal_host(name, signal.SIGSTOP)

    def thaw_host(self, name: str) -> None:
        """Resume a host frozen by :meth:`freeze_host`."""
        self._signal_host(name, signal.SIGCONT)

    def _signal_host(self, name: str, sig: int) -> None:
        with self._lock:
            host = self.host(name)
            server = self._servers.get(name)
            if not isinstance(server, OpensshHost):
                raise LabError(f"{name}: only OpenSSH hosts can be frozen (processes of their own)")
            for pid in server.members() | set(procs.pids_with_home_in([host.home])):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- queries -------------------------------------------------------------------------------

    def host(self, name: str) -> LabHost:
        """The host called ``name``; raises LabError if there is none."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"no lab host named {name!r}")

    def tools(self, name: str) -> dict[str, Any]:
        """The stand-in tool configuration of host ``name`` (its ``~/.lab/tools.json``)."""
        return read_tools(self.host(name).home)

    def set_tools(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change what host ``name``'s device tools report; returns the new configuration.

        Keys are those of ``tests/lab/tools/_labtool.py``'s ``TOOL_DEFAULTS``, e.g.
        ``lab.set_tools("rtx-1", tensorrt="11.0.0")``, ``hailo_arch="HAILO8L"``,
        ``fail="trtexec"`` (that tool exits 1), ``power_mode_id=0``. Setting the power mode or
        ``clocks_locked`` also discards what ``nvpmodel -m`` / ``jetson_clocks`` changed.
        Takes effect on the next tool run; works whether or not the host is started.
        """
        return write_tools(self.host(name).home, changes)

    def tool_state(self, name: str) -> dict[str, Any]:
        """Host ``name``'s tool configuration with what its tools changed on top (power mode
        set by ``nvpmodel -m``, clocks locked by ``jetson_clocks`` or ``nvidia-smi -lgc``)."""
        return read_state(self.host(name).home)

    def host_root(self, name: str) -> Path:
        """Host ``name``'s root directory: its ``FLEET_HOST_ROOT``."""
        return host_root(self.host(name).home)

    def commands(self, name: str) -> list[str]:
        """Exec commands an asyncssh host has received, oldest first (a copy).

        Raises LabError for OpenSSH hosts, which do not record them.
        """
        return list(self._asyncssh_server(name).commands)

    def tunnel_requests(self, name: str) -> list[tuple[str, int]]:
        """(host, port) of each direct-tcpip request an asyncssh host accepted (a copy).

        Raises LabError for OpenSSH hosts, which do not record them.
        """
        return list(self._asyncssh_server(name).tunnels)

    def known_hosts_text(self, names: list[str] | None = None) -> str:
        """known_hosts lines for the named hosts (default: all). Raises LabError for a host
        that has never been started, since its port is not known yet."""
        hosts = self._select(names)
        unstarted = [host.name for host in hosts if host.port == 0]
        if unstarted:
            raise LabError(f"hosts not started yet: {unstarted}")
        return "".join(host.host_key_line + "\n" for host in hosts)

    def write_inventory(
        self,
        path: Path,
        *,
        names: list[str] | None = None,
        extra_host_vars: dict[str, dict[str, object]] | None = None,
    ) -> Path:
        """Write an Ansible INI inventory of the named hosts (default: all) and return ``path``.

        One group per profile pool. Asyncssh hosts also get ``ansible_remote_tmp`` inside their
        HOME (``~user`` there is the real user's home). ``extra_host_vars`` maps host names to variables that are
        added to (and override) the generated ones; dicts and lists are written as JSON, which
        Ansible reads back as such. Hosts must have been started (their ports are needed).
        """
        hosts = self._select(names)
        self.known_hosts_text([host.name for host in hosts])  # raises for unstarted hosts
        extra = extra_host_vars or {}
        groups: dict[str, list[str]] = {}
        for host in hosts:
            variables = {**self._inventory_vars(host), **extra.get(host.name, {})}
            fields = [f"{key}={_ini_value(value)}" for key, value in variables.items()]
            groups.setdefault(host.profile.pool, []).append(" ".join([host.name, *fields]))
        text = "\n".join(f"[{pool}]\n" + "\n".join(lines) + "\n" for pool, lines in groups.items())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def ansible_env(self) -> dict[str, str]:
        """An environment for running Ansible against the lab: this environment plus the
        interpreter's bin dir on PATH, and OpenSSH client options from :attr:`ssh_config_path`
        (lab known_hosts, strict checking, a control master per host)."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        env["ANSIBLE_SSH_ARGS"] = f"-F {self.ssh_config_path}"
        env["ANSIBLE_HOST_KEY_CHECKING"] = "True"
        env["ANSIBLE_HOME"] = str(self.root / "ansible")
        env["ANSIBLE_LOCAL_TEMP"] = str(self.root / "ansible" / "tmp")
        env["ANSIBLE_NOCOLOR"] = "1"
        return env

    # -- internals -----------------------------------------------------------------------------

    def _new_host(self, profile: Profile, kind: str, slots: int | None) -> LabHost:
        index = len(self.hosts)
        number = 1 + sum(
            1 for host in self.hosts if host.profile.host_prefix == profile.host_prefix
        )
        name = f"{profile.host_prefix}-{number}"
        directory = self.root / "hosts" / name
        home = directory / "home"
        prepare_home(home, profile, self.python)
        key_path = directory / "ssh_host_ed25519_key"
        host_key = load_or_create_key(key_path, f"{name}@fleet-lab")
        host = LabHost(
            name=name,
            address=_address(index),
            port=0,
            profile=profile,
            home=home,
            kind=kind,
            host_public_key=public_key_text(host_key),
            slots=slots,
        )
        server: _Server
        if kind == "asyncssh":
            server = AsyncsshHost(
                name=name,
                address=host.address,
                home=home,
                env=host_env(name, profile, home, self.python, self.user),
                host_key=host_key,
                user=self.user,
                authorized_keys=self._authorized_keys,
            )
        else:
            server = OpensshHost(
                address=host.address,
                directory=directory,
                home=home,
                user=self.user,
                host_key_path=key_path,
                authorized_keys_path=self._authorized_keys_path,
                env=lab_vars(name, profile, home, self.python),
                namespaces=self._namespaces_work(),
            )
        self.hosts.append(host)
        self._servers[name] = server
        return host

    def _start_hosts(self, names: list[str]) -> None:
        assert self._loop is not None
        pending = [name for name in names if name not in self._started]
        if not pending:
            return
        if any(self.host(name).kind == "openssh" for name in pending):
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privsep directory
        ports = self._loop.run(self._start_servers(pending))
        for name, port in zip(pending, ports, strict=True):
            self.host(name).port = port
            self._started.add(name)
        self._write_client_files()

    async def _start_servers(self, names: list[str]) -> list[int]:
        return list(await asyncio.gather(*(self._servers[name].start() for name in names)))

    async def _stop_servers(self, names: list[str], kill_processes: bool) -> None:
        await asyncio.gather(*(self._servers[name].stop(kill_processes) for name in names))

    def _write_client_files(self) -> None:
        started = [host.name for host in self.hosts if host.port]
        _write_atomic(self.known_hosts_path, self.known_hosts_text(started))
        _write_atomic(
            self.ssh_config_path,
            "Host *\n"
            f"  User {self.user}\n"
            f"  IdentityFile {self.client_key_path}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts_path}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  ControlMaster auto\n"
            "  ControlPersist 30s\n"
            "  ControlPath /tmp/fleet-lab-cm-%C\n"
            "  BatchMode yes\n"
            "  LogLevel ERROR\n",
        )

    def _inventory_vars(self, host: LabHost) -> dict[str, object]:
        variables: dict[str, object] = {
            "ansible_host": host.address,
            "ansible_port": host.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.client_key_path),
            "fleet_arch": host.profile.arch,
            "fleet_accelerator": host.profile.accelerator,
        }
        if host.slots is not None:
            variables["fleet_slots"] = host.slots
        variables["fleet_workdir"] = str(host.home / ".fleet")
        variables["ansible_python_interpreter"] = str(self.python)
        variables["fleet_env_keep"] = ["FLEET_LAB_*"]  # jobs see which lab host they are on
        if host.kind == "asyncssh":
            # Ansible finds its remote home with `echo ~user`, which on an asyncssh host is the
            # user's real home (the real /etc/passwd): keep its temp files in the host's HOME.
            variables["ansible_remote_tmp"] = str(host.home / ".ansible" / "tmp")
        return variables

    def _select(self, names: list[str] | None) -> list[LabHost]:
        return list(self.hosts) if names is None else [self.host(name) for name in names]

    def _asyncssh_server(self, name: str) -> AsyncsshHost:
        self.host(name)
        server = self._servers[name]
        if not isinstance(server, AsyncsshHost):
            raise LabError(f"{name} is an OpenSSH host: only asyncssh hosts record requests")
        return server

    def _namespaces_work(self) -> bool:
        if self._namespaces is None:
            self._namespaces = shutil.which("unshare") is not None and namespaces_work(
                self.root / "probe"
            )
        return self._namespaces


def _address(index: int) -> str:
    """The index-th host address: 127.0.0.2, 127.0.0.3, ... skipping .0/.255 octets."""
    number = index + 2
    per_block = 254  # usable last octets 1..254
    third, last = divmod(number - 1, per_block)
    second, third = divmod(third, 256)
    return f"127.{second}.{third}.{last + 1}"


def _ini_value(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return shlex.quote(text)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
