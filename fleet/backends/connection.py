"""Pooled connections to hosts: one asyncssh connection per host (with keepalive), or local
processes for ``ansible_connection=local`` hosts. Both offer ``exec``: run one shell command,
feed it stdin, hand its stdout/stderr to callbacks as bytes arrive, return its exit status.

Host keys are checked against the user's ``~/.ssh/known_hosts`` and fleet's own file. An
unknown key is refused unless trust-on-first-use is on, in which case it is recorded in fleet's
file; a key that differs from a recorded one is always refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import ipaddress
import logging
import socket
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from fleet.backends.base import HostKeyRefused, HostLost
from fleet.inventory import Host, Jump

log = logging.getLogger(__name__)

OutputCallback = Callable[[bytes], None]


# SSH handshakes in flight at once. Each costs the controller a few ms of CPU in its event loop
# (key exchange, host key and user authentication); a new leader reattaching 1,000 hosts, or a
# first start checking them, began them all together and every request waited behind hundreds
# of them (bench/scale.py's takeover: GET /health 485 ms at most without turns, 130-146 ms with
# 16 or 32; all 2,000 attempts followed again in 7.4-7.9 s without, 9.2 s with 32, 9.3-12 s
# with 16). The TCP connect comes first and outside the turns, so hosts that are down
# (refused, unreachable, silent) never hold one; a host that accepts and then never answers
# gives its turn back after HANDSHAKE_TURN seconds (its handshake goes on, outside the limit,
# until the TCP connect and the handshake together took ``connect_timeout``; the wait for a
# turn is not counted).
HANDSHAKES = 32
HANDSHAKE_TURN = 2.0
# socket() errors that say this machine has no such address family (an IPv6 address on a host
# without IPv6): that address is passed over for the name's next one.
NO_SUCH_FAMILY = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT)
# A name with several addresses: the next is tried when the one before has not connected
# within STAGGER seconds (RFC 8305's connection attempt delay), while that one goes on trying.
STAGGER = 0.25
# Errors that are the controller's, not the host's: it is out of file descriptors or memory.
CONTROLLER_SHORT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

# AES-GCM first: every packet fleet sends or receives (log frames, lease renewals, keepalives)
# costs asyncssh about half the CPU with it than with its default ChaCha20-Poly1305 (which
# builds a cipher object per packet): ~85 vs ~170 us per small write, both ends counted
# (bench/ssh_cipher.py). Equally strong; a host without it gets the rest of the defaults.
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes256-ctr", "aes192-ctr", "aes128-ctr"]


@dataclass(frozen=True)
class SSHOptions:
    """Connection options shared by every host; host vars override address, user and key."""

    known_hosts_files: tuple[Path, ...]
    fleet_known_hosts: Path
    trust_on_first_use: bool = False
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    connect_timeout: float = 15.0
    command_timeout: float = 120.0  # fleet's own commands (install, cache check, upload)
    attempt_lease: float = 60.0  # a job stops itself after this long without the controller


class Transport:
    """Runs shell commands on one host."""

    async def exec(
        self,
        command: str,
        stdin: bytes | AsyncIterable[bytes] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> int:
        """Run ``command`` with ``/bin/sh -c``; returns its exit status (-signal if killed).
        ``stdin``: bytes, or chunks sent as they come with flow control (a large stream).

        Raises HostLost if the host cannot be reached or the channel is lost.
        """
        raise NotImplementedError

    async def open_channel(self, command: str) -> Channel:
        """Start ``command`` as a long-lived process with binary stdin/stdout pipes.

        Raises HostLost if the host cannot be reached.
        """
        raise NotImplementedError

    async def close(self) -> None:
        return None

    @property
    def closed(self) -> bool:
        return False


class Channel:
    """A long-lived command on a host: write to its stdin, read its stdout."""

    def __init__(self, writer: Callable[[bytes], None], stdout: Any, stderr: Any,
                 closer: Callable[[], None], waiter: Callable[[], Awaitable[Any]]) -> None:
        self._writer, self.stdout, self.stderr = writer, stdout, stderr
        self._closer, self._waiter = closer, waiter

    def write(self, data: bytes) -> None:
        self._writer(data)

    async def readline(self) -> bytes:
        return bytes(await self.stdout.readline())

    async def readexactly(self, n: int) -> bytes:
        return bytes(await self.stdout.readexactly(n))

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes as soon as some are there; b"" at EOF."""
        return bytes(await self.stdout.read(n))

    def close(self) -> None:
        self._closer()

    async def wait(self) -> Any:
        return await self._waiter()


# What of the server's environment a local host's commands (and so its agent and jobs) get:
# the basics of a login, never the server's own settings (FLEET_TOKEN, FLEET_HOME, ...).
LOCAL_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM")


def local_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in LOCAL_ENV or k.startswith("LC_")}


class LocalTransport(Transport):
    """``ansible_connection=local``: commands run as local processes, with a login's basic
    environment rather than the server's (DESIGN.md §7)."""

    async def open_channel(self, command: str) -> Channel:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=1 << 20,
            env=local_env(),
        )
        assert proc.stdin is not None

        def close() -> None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()

        return Channel(proc.stdin.write, proc.stdout, proc.stderr, close, proc.wait)

    async def exec(self, command, stdin=None, on_stdout=None, on_stderr=None):  # type: ignore[no-untyped-def]
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=local_env(),
        )
        failed: list[BaseException] = []

        async def feed() -> None:
            if stdin is None:
                return
            assert proc.stdin is not None
            try:
                async for chunk in _chunks(stdin):
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return  # the command exited without reading all of its input; its status tells
            except Exception as exc:  # noqa: BLE001 - the stream's source failed: the command sees a short input
                failed.append(exc)
            proc.stdin.close()

        await asyncio.gather(
            feed(), _pump(proc.stdout, on_stdout), _pump(proc.stderr, on_stderr)  # type: ignore[arg-type]
        )
        code = await proc.wait()
        if failed:
            raise failed[0]
        return code


async def _chunks(stdin: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(stdin, bytes | bytearray | memoryview):
        yield bytes(stdin)
    else:
        async for chunk in stdin:
            yield chunk


async def _pump(stream: asyncio.StreamReader | asyncssh.SSHReader[bytes], callback: OutputCallback | None) -> None:
    while True:
        data = await stream.read(65536)
        if not data:
            return
        if callback is not None:
            callback(data)


class SSHTransport(Transport):
    def __init__(self, host: Host, conn: asyncssh.SSHClientConnection) -> None:
        self.host = host
        self.conn = conn
        self._closed = False
        conn_closed = conn.wait_closed()
        self._watch = asyncio.ensure_future(conn_closed)
        self._watch.add_done_callback(lambda _f: setattr(self, "_closed", True))

    @property
    def closed(self) -> bool:
        return self._closed

    async def open_channel(self, command: str) -> Channel:
        try:
            proc = await self.conn.create_process(command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            self._closed = True
            raise HostLost(f"host {self.host.name}: cannot open a channel: {_describe(exc)}") from None

        def close() -> None:
            proc.stdin.write_eof()

        return Channel(proc.stdin.write, proc.stdout, proc.stderr, close, proc.wait)

    async def exec(self, command, stdin=None, on_stdout=None, on_stderr=None):  # type: ignore[no-untyped-def]
        try:
            proc = await self.conn.create_process(command, encoding=None)

            failed: list[BaseException] = []

            async def feed() -> None:
                try:
                    if stdin is not None:
                        async for chunk in _chunks(stdin):
                            proc.stdin.write(chunk)
                            await proc.stdin.drain()
                except BrokenPipeError:
                    return  # the command exited without reading all of its input; its status tells
                except Exception as exc:  # noqa: BLE001 - the stream's source failed: the command sees a short input
                    failed.append(exc)
                proc.stdin.write_eof()

            await asyncio.gather(feed(), _pump(proc.stdout, on_stdout), _pump(proc.stderr, on_stderr))
            if failed:
                await proc.wait(check=False)
                raise failed[0]
            done = await proc.wait(check=False)
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
            self._closed = True
            raise HostLost(f"host {self.host.name}: connection lost: {_describe(exc)}") from None
        if done.exit_status is None and done.exit_signal is None:
            self._closed = True
            raise HostLost(f"host {self.host.name}: channel closed before the command ended")
        if done.exit_signal:
            return -1
        return int(done.exit_status or 0)

    async def close(self) -> None:
        self._closed = True
        self.conn.close()
        try:
            await asyncio.wait_for(self.conn.wait_closed(), 5)
        except TimeoutError:
            pass


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.strip()


def _describe_connect(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer in {timeout:g} s (connect_timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is sshd running, on that port?)"
    if isinstance(exc, OSError) and exc.errno in CONTROLLER_SHORT:
        memory = exc.errno in (errno.ENOBUFS, errno.ENOMEM)
        return (f"the controller is short of {'memory' if memory else 'file descriptors'} "
                f"({errno.errorcode[exc.errno]}: {exc.strerror}), not a fault of this host: "
                + ("give fleet serve's machine more memory" if memory else
                   "raise the limit of fleet serve's process (ulimit -n, systemd's LimitNOFILE)"))
    return _describe(exc)


async def _connect_one(family: int, addr: Any) -> socket.socket:
    """A TCP connection to one address (a non-blocking socket); the socket is closed on any
    failure or cancel."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _race(targets: list[tuple[int, Any]]) -> socket.socket:
    """The first of ``targets`` to connect, each begun ``STAGGER`` s after the one before, or
    at once when one begun has failed. Raises the last connect's error (as ssh tells it),
    else a missing family's. Whatever else connected, or still tries, is closed."""
    tries: list[asyncio.Task[socket.socket]] = []
    left = list(targets)
    error: OSError | None = None
    won: asyncio.Task[socket.socket] | None = None
    try:
        while True:
            if left:  # the first, or the next after STAGGER or after a failure
                tries.append(asyncio.ensure_future(_connect_one(*left.pop(0))))
            trying = {t for t in tries if not t.done()}
            if not trying:
                raise error or OSError("no address to connect to")
            done, _ = await asyncio.wait(trying, timeout=STAGGER if left else None,
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is None:
                    won = t
                    return t.result()
                if not isinstance(exc, OSError):
                    raise exc
                if exc.errno not in NO_SUCH_FAMILY or error is None:
                    error = exc
    finally:
        others = [t for t in tries if t is not won]
        for t in others:
            t.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        for t in others:  # connected in the same moment as the winner
            if not t.cancelled() and t.exception() is None:
                t.result().close()


class KnownHosts:
    """The known_hosts files, parsed once and again only when one of them changed (its size,
    mtime or inode): a connect does not re-read thousands of entries (issue 16: 16.9 ms per
    connect at 2,000). Files that do not exist are skipped until they do."""

    def __init__(self, files: tuple[Path, ...]) -> None:
        self.files = files
        self._stamp: tuple[tuple[str, int, int, int], ...] | None = None
        self._parsed: asyncssh.SSHKnownHosts | None = None
        self.reads = 0  # how often the files were parsed (tests)

    def _now(self) -> tuple[tuple[str, int, int, int], ...]:
        stamp = []
        for path in self.files:
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                stamp.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    def current(self) -> asyncssh.SSHKnownHosts | None:
        """The parsed entries of every file (None: no file); a file that cannot be read or
        parsed is left out, as ssh does."""
        stamp = self._now()
        if stamp != self._stamp:
            names = [name for name, *_ in stamp]
            try:
                parsed = asyncssh.read_known_hosts(names) if names else None
            except (OSError, ValueError):  # leave out the files that are broken
                good = [name for name in names if _parses(name)]
                parsed = asyncssh.read_known_hosts(good) if good else None
            self._stamp, self._parsed = stamp, parsed
            self.reads += 1
        return self._parsed

    def keys_for(self, host: str, addr: str, port: int) -> list[asyncssh.SSHKey]:
        known = self.current()
        if known is None:
            return []
        unique: dict[bytes, asyncssh.SSHKey] = {}
        for key in known.match(host, addr, port if port != 22 else None)[0]:
            unique.setdefault(key.public_data, key)
        return list(unique.values())


def _parses(name: str) -> bool:
    try:
        asyncssh.read_known_hosts(name)
        return True
    except (OSError, ValueError):
        return False


class _TofuClient(asyncssh.SSHClient):
    """Called only for keys not in known_hosts: accept and record them if TOFU is on and
    nothing at all is known for the host (a changed key is never accepted)."""

    def __init__(self, options: SSHOptions, host: Host, address: str, port: int, known: KnownHosts) -> None:
        self.options, self.host, self.address, self.port = options, host, address, port
        self.known = known
        self.refusal: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        if self.known.keys_for(self.address, addr, self.port):
            self.refusal = (
                f"host {self.host.name}: host key for {self.address}:{self.port} has CHANGED "
                f"(offered {key.get_fingerprint()}); refusing to connect. If the host was "
                f"reinstalled, remove its old entry from known_hosts."
            )
            return False
        if not self.options.trust_on_first_use:
            self.refusal = (
                f"host {self.host.name}: host key for {self.address}:{self.port} is unknown "
                f"({key.get_fingerprint()}); add it to ~/.ssh/known_hosts or "
                f"{self.options.fleet_known_hosts} (ssh-keyscan -p {self.port} {self.address}), "
                f"or set trust_on_first_use: true"
            )
            return False
        entry = f"[{self.address}]:{self.port}" if self.port != 22 else self.address
        line = f"{entry} {key.export_public_key().decode().strip()}\n"
        path = self.options.fleet_known_hosts
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(line)
        log.warning("trusting new host key of %s on first use: %s", self.host.name, key.get_fingerprint())
        return True


class Turns:
    """At most ``size`` holders at once. A turn held longer than ``hold`` seconds is given back
    by itself and its holder goes on outside the limit: one that is stuck slows the others by
    ``hold`` at most."""

    def __init__(self, size: int, hold: float) -> None:
        self._free = asyncio.Semaphore(size)
        self.hold = hold
        self.waited = 0  # how many had to wait for a turn (tests, bench)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._free.locked():
            self.waited += 1
        await self._free.acquire()
        given = False

        def give() -> None:
            nonlocal given
            if not given:
                given = True
                self._free.release()

        timer = asyncio.get_running_loop().call_later(self.hold, give)
        try:
            yield
        finally:
            timer.cancel()
            give()


class ConnectionPool:
    """One live transport per host, created on first use and replaced when it dies."""

    def __init__(self, options: SSHOptions, hosts_by_name: Callable[[str], Host | None], *,
                 handshakes: int = HANDSHAKES, handshake_turn: float = HANDSHAKE_TURN) -> None:
        self.options = options
        self._lookup = hosts_by_name
        self.known_hosts = KnownHosts(options.known_hosts_files + (options.fleet_known_hosts,))
        self._conns: dict[str, Transport] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._local = LocalTransport()
        self.handshakes = Turns(handshakes, handshake_turn)

    async def get(self, host: Host) -> Transport:
        """The host's transport, connecting if needed. Raises HostLost / HostKeyRefused."""
        if host.connection == "local":
            return self._local
        conn = self._conns.get(host.name)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(host.name, asyncio.Lock())
        async with lock:
            conn = self._conns.get(host.name)
            if conn is None or conn.closed:
                conn = await self._connect(host)
                self._conns[host.name] = conn
            return conn

    def drop(self, host_name: str) -> None:
        """Forget a host's connection (after a failure); the next ``get`` reconnects."""
        conn = self._conns.pop(host_name, None)
        if conn is not None:
            asyncio.ensure_future(conn.close())

    async def _connect(self, host: Host) -> SSHTransport:
        tunnel: asyncssh.SSHClientConnection | None = None
        for jump in host.jumps:
            tunnel = await self._open(self._jump_host(host, jump), tunnel, via=host)
        conn = await self._open(host, tunnel, via=None)
        return SSHTransport(host, conn)

    def _jump_host(self, target: Host, jump: Jump) -> Host:
        known = self._lookup(jump.host)
        if known is not None:
            return Host(
                name=known.name, pools=known.pools, arch=known.arch, accelerator=known.accelerator,
                slots=known.slots, address=known.address, port=jump.port or known.port,
                user=jump.user or known.user, key_file=known.key_file or target.key_file,
            )
        return Host(
            name=jump.host, pools=(), arch="unknown", accelerator="cpu", slots=1,
            address=jump.host, port=jump.port or 22, user=jump.user or target.user,
            key_file=target.key_file,
        )

    async def _open(
        self, host: Host, tunnel: asyncssh.SSHClientConnection | None, via: Host | None
    ) -> asyncssh.SSHClientConnection:
        opts = self.options
        known = self.known_hosts.current()
        client = _TofuClient(opts, host, host.address, host.port, self.known_hosts)
        role = f" (jump host for {via.name})" if via is not None else ""
        conn: asyncssh.SSHClientConnection | None = None
        # One connect_timeout for the TCP connect and the handshake together (``left``: what
        # the connect left); the wait for a turn is not the host's and is not counted.
        began = time.monotonic()
        try:
            # Through a jump host the TCP connection is a channel of the tunnel: no socket here.
            sock = await self._tcp(host) if tunnel is None else None
            left = max(0.1, opts.connect_timeout - (time.monotonic() - began))
        except (OSError, TimeoutError) as exc:
            raise HostLost(f"host {host.name}{role}: cannot connect to {host.address}:{host.port}: "
                           f"{_describe_connect(exc, opts.connect_timeout)}") from None
        try:
            async with self.handshakes.turn():
                conn, _ = await asyncio.wait_for(
                    asyncssh.create_connection(
                        lambda: client,
                        host.address,
                        port=host.port,
                        tunnel=tunnel,
                        sock=sock,
                        # Like ssh: no ansible_user means the local user (asyncssh fails on None).
                        username=host.user or getpass.getuser(),
                        client_keys=[host.key_file] if host.key_file else (),
                        known_hosts=known if known is not None else [],
                        keepalive_interval=opts.keepalive_interval,
                        keepalive_count_max=opts.keepalive_count_max,
                        connect_timeout=left,
                        encryption_algs=ENCRYPTION_ALGS,
                        config=None,
                    ),
                    timeout=left + 5,
                )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyRefused(client.refusal or f"host {host.name}{role}: {exc}") from None
        except asyncssh.PermissionDenied as exc:
            raise HostLost(
                f"host {host.name}{role}: authentication as {host.user or 'default user'} "
                f"failed ({exc.reason}); check ansible_user and ansible_ssh_private_key_file"
            ) from None
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise HostLost(
                f"host {host.name}{role}: cannot connect to {host.address}:{host.port}: "
                f"{_describe_connect(exc, opts.connect_timeout)}"
            ) from None
        finally:  # asyncssh owns the socket once it has it; closing it again is harmless
            if sock is not None and conn is None:
                sock.close()
        assert conn is not None
        return conn

    async def _tcp(self, host: Host) -> socket.socket:
        """A TCP connection to the host; raises OSError or TimeoutError (after
        ``connect_timeout``) as asyncssh's own connect would. A name's addresses are tried as
        "happy eyeballs" do (RFC 8305): the next one ``STAGGER`` s after the one before if that
        has not connected yet (at once if it failed), the first to connect wins and the others
        are closed. One silent address (a broken IPv6 route) no longer takes the whole
        ``connect_timeout`` before the address that answers is tried."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.options.connect_timeout):
            targets: list[tuple[int, Any]]
            try:  # an address needs no lookup (getaddrinfo would take a thread of the pool)
                ip = ipaddress.ip_address(host.address)
                targets = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host.address, host.port))]
            except ValueError:
                infos = await loop.getaddrinfo(host.address, host.port, type=socket.SOCK_STREAM)
                targets = [(info[0], info[4]) for info in infos]
            if len(targets) == 1:
                return await _connect_one(*targets[0])
            return await _race(targets)

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
