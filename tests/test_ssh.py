"""fleet ssh and fleet ssh-config: the real OpenSSH client reaches lab hosts (pure-Python and
real sshd) by their inventory names, jump hosts and keys included, with host keys checked."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.lab import have_sshd

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (ssh)")


def _options(lab, **extra):  # type: ignore[no-untyped-def]
    """SSH options for connecting to the lab's hosts from a test's own ConnectionPool."""
    from fleet.backends.connection import SSHOptions

    return SSHOptions(known_hosts_files=(lab.known_hosts_path,), fleet_known_hosts=lab.root / "fleet_kh", **extra)


def _host(lab, name: str, address: str, port: int):  # type: ignore[no-untyped-def]
    """An inventory host at ``address``:``port`` with the lab's client key."""
    from fleet.inventory import Host

    return Host(name=name, pools=("p",), arch="x86_64", accelerator="cpu", slots=1,
                address=address, port=port, key_file=str(lab.client_key_path))


def test_fleet_ssh_runs_commands_on_hosts_by_name_through_jump_hosts(fleet, lab, tmp_path):
    jump, behind = lab.add_hosts("rtx5060", 2)
    real = lab.add_hosts("jetson-orin-nano", 1, kind="openssh")[0] if have_sshd() else None
    proxy = f"-o ProxyJump={lab.user}@{jump.address}:{jump.port}"
    (fleet.home / "known_hosts").write_text(lab.known_hosts_text())
    fleet.start(lab.write_inventory(tmp_path / "inventory.ini",
                                    extra_host_vars={behind.name: {"ansible_ssh_common_args": proxy}}))

    out = fleet.cli("ssh", jump.name, "--", "echo", "home=$HOME", "&&", "uname", "-m")
    assert out.stdout.split() == [f"home={jump.home}", "x86_64"]
    out = fleet.cli("ssh", behind.name, "--", "echo", "$FLEET_LAB_HOST")
    assert out.stdout.strip() == behind.name
    assert (behind.address, behind.port) in lab.tunnel_requests(jump.name)  # it went via the jump host
    if real is not None:
        out = fleet.cli("ssh", real.name, "--", "uname", "-m")
        assert out.stdout.strip() == "aarch64"  # the Jetson host's simulated arch
    failed = fleet.cli("ssh", jump.name, "--", "exit", "3", check=False)
    assert failed.returncode == 3
    missing = fleet.cli("ssh", "nope", "--", "true", check=False)
    assert missing.returncode != 0 and "no host nope" in missing.stderr

    # The same blocks, included from an ssh config, make plain `ssh HOST` work.
    config = tmp_path / "ssh_config"
    config.write_text(fleet.cli("ssh-config").stdout)
    text = config.read_text()
    assert f"Host {behind.name}" in text and f"ProxyJump {jump.name}" in text
    assert "StrictHostKeyChecking yes" in text and str(fleet.home / "known_hosts") in text
    # stderr to a file: the ProxyJump helper (ssh -W) inherits it and, on a loaded machine, may
    # hold it open after ssh itself has exited; a pipe would then wait for the helper.
    err = tmp_path / "ssh.err"
    with err.open("w") as err_file:
        plain = subprocess.run(["ssh", "-F", str(config), behind.name, "echo $FLEET_LAB_HOST"],
                               stdout=subprocess.PIPE, stderr=err_file, text=True, timeout=60)
    assert plain.returncode == 0 and plain.stdout.strip() == behind.name, err.read_text()


def test_an_unknown_host_key_is_refused(fleet, lab, tmp_path):
    (host,) = lab.add_hosts("rtx5060", 1)
    (fleet.home / "known_hosts").write_text("")
    fleet.start(lab.write_inventory(tmp_path / "inventory.ini"))
    out = fleet.cli("ssh", host.name, "--", "echo", "reached", check=False)
    assert out.returncode != 0 and "reached" not in out.stdout
    assert "Host key verification failed" in out.stderr


def test_ssh_to_a_local_host_runs_here(fleet):
    fleet.start()
    out = fleet.cli("ssh", "localhost", "--", "echo", "local $((1+1))")
    assert out.stdout.strip() == "local 2"


def test_known_hosts_are_parsed_once_and_again_when_a_file_changes(tmp_path):
    """A connect does not re-read the known_hosts files (issue 16): they are parsed once, and
    again when one of them changes (an entry added by trust on first use, an edit)."""
    import asyncssh

    from fleet.backends.connection import KnownHosts

    keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(3)]
    user, ours, broken = tmp_path / "user_known_hosts", tmp_path / "fleet_known_hosts", tmp_path / "broken"
    lines = [f"[10.0.{i // 250}.{i % 250}]:2222 {keys[0].export_public_key().decode().strip()}"
             for i in range(2000)]
    user.write_text("\n".join(lines) + "\n")
    known = KnownHosts((user, ours, tmp_path / "missing"))
    for _ in range(50):
        assert len(known.keys_for("10.0.3.7", "10.0.3.7", 2222)) == 1
    assert known.keys_for("10.0.9.9", "10.0.9.9", 2222) == []
    assert known.reads == 1
    ours.write_text(f"[10.0.9.9]:2222 {keys[1].export_public_key().decode().strip()}\n")
    assert [k.get_fingerprint() for k in known.keys_for("10.0.9.9", "10.0.9.9", 2222)] == \
        [keys[1].get_fingerprint()]
    assert known.reads == 2
    broken.write_text("@cert-authority\n")  # not a valid line: the file is left out, not the rest
    known = KnownHosts((user, broken))
    assert len(known.keys_for("10.0.3.7", "10.0.3.7", 2222)) == 1


def test_an_address_of_a_family_this_machine_lacks_is_passed_over(lab):
    """A name may resolve to addresses of several families (IPv6 first, then IPv4); on a
    machine without one of them, making its socket fails (EAFNOSUPPORT). That address is
    passed over for the next, as ssh does; it ended the connect. And when no address answers,
    the error told is a connect's (refused), not the missing family's. The name's answer is
    given here (the lab's sshd listens on 127.0.0.1 only): a family Linux has no stream
    sockets for, and the host's own address."""
    import asyncio
    import socket

    from fleet.backends.base import HostLost
    from fleet.backends.connection import ConnectionPool

    live = lab.add_hosts("rtx5060", 1)[0]
    lab.start()

    with socket.socket() as closed:  # a port nothing listens on: refused
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]

    async def run() -> str:
        loop = asyncio.get_running_loop()
        asked: list[str] = []

        async def getaddrinfo(name, port, **_kw):  # the resolver's answer for the name
            asked.append(name)
            lacking = (socket.AF_APPLETALK, socket.SOCK_STREAM, 0, "", ("ignored", port))
            if name == "refused-then-lacking.lab.test":  # the error told is the connect's
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", refused)), lacking]
            return [lacking, (socket.AF_INET, socket.SOCK_STREAM, 6, "", (live.address, port))]

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        options = _options(lab, connect_timeout=5.0)
        pool = ConnectionPool(options, lambda name: None)
        try:
            transport = await pool.get(_host(lab, live.name, "two-families.lab.test", live.port))
            out: list[bytes] = []
            status = await transport.exec("echo reached", on_stdout=out.append)
            with pytest.raises(HostLost, match="connection refused"):
                await pool.get(_host(lab, "other", "refused-then-lacking.lab.test", refused))
        finally:
            await pool.close()
        assert asked == ["two-families.lab.test", "refused-then-lacking.lab.test"] and status == 0
        return b"".join(out).decode()

    assert asyncio.run(run()).strip() == "reached"


def _silent_listener():
    """A port on 127.0.0.1 that never completes a TCP connect: a listener whose accept queue
    one connection fills (backlog 0, never accepted), so the kernel drops every SYN after it,
    as a broken route or a firewall does. Returns (listener, filler, port)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    return listener, filler, listener.getsockname()[1]


def test_a_silent_address_of_a_name_does_not_take_the_whole_connect_timeout(lab):
    """A name whose first address never answers (IPv6 with a broken route, say) and whose
    second does: the second is tried STAGGER s after the first, which goes on trying, and the
    one that connects wins (RFC 8305). Before, the silent address took the whole
    connect_timeout and the host was reported lost although the name's other address answered
    (and ssh, which gives each address its own timeout, reached it). Every socket of the
    attempts that did not win is closed. With every address silent, the error says so."""
    import asyncio
    import os
    import socket

    from fleet.backends.base import HostLost
    from fleet.backends.connection import ConnectionPool

    live = lab.add_hosts("rtx5060", 1)[0]
    lab.start()
    listener, filler, silent = _silent_listener()

    async def run() -> str:
        loop = asyncio.get_running_loop()

        async def getaddrinfo(name, port, **_kw):  # the resolver's answer for the name
            first = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", silent))
            if name == "all-silent.lab.test":
                return [first, first]
            return [first, (socket.AF_INET, socket.SOCK_STREAM, 6, "", (live.address, port))]

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        options = _options(lab, connect_timeout=3.0)
        pool = ConnectionPool(options, lambda name: None)

        def fds() -> int:
            return len(os.listdir("/proc/self/fd"))

        try:
            # What one connection to a plain address holds open here, to compare with
            began = fds()
            await (await pool.get(_host(lab, "plain", live.address, live.port))
                   ).exec("true")
            one = fds() - began
            transport = await pool.get(_host(lab, live.name, "silent-then-live.lab.test", live.port))
            out: list[bytes] = []
            status = await transport.exec("echo reached", on_stdout=out.append)
            assert status == 0
            assert fds() == began + 2 * one  # the silent address's socket is closed
            with pytest.raises(HostLost, match=r"no answer in 3 s \(connect_timeout\)"):
                await pool.get(_host(lab, "other", "all-silent.lab.test", silent))
            assert fds() == began + 2 * one
        finally:
            await pool.close()
        return b"".join(out).decode()

    try:
        assert asyncio.run(run()).strip() == "reached"
    finally:
        filler.close()
        listener.close()


def test_a_controller_out_of_file_descriptors_says_so_in_the_hosts_error(lab, tmp_path):
    """socket() failing with EMFILE is the controller's limit, not the host's fault: the error
    (which the host's health and the attempt carry) says which and how to raise it; before, it
    read "Too many open files" as if the host were at fault. Run in a process of its own whose
    open-file limit is what it has open already."""
    import subprocess
    import sys

    live = lab.add_hosts("rtx5060", 1)[0]
    lab.start()
    script = tmp_path / "emfile.py"
    script.write_text(f"""
import asyncio, os, resource
from pathlib import Path
from fleet.backends.base import HostLost
from fleet.backends.connection import ConnectionPool, SSHOptions
from fleet.inventory import Host

async def main():
    options = SSHOptions(known_hosts_files=(Path({str(lab.known_hosts_path)!r}),), fleet_known_hosts=Path({str(tmp_path / "kh")!r}),
                         connect_timeout=3.0)
    pool = ConnectionPool(options, lambda name: None)
    spare = [os.open("/dev/null", os.O_RDONLY) for _ in range(64)]  # what the loop still needs
    used = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (used, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    for fd in spare:  # free: the loop may take these; then fill them again
        os.close(fd)
    held = []
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            break
    try:
        await pool.get(Host(name="h", pools=("p",), arch="x86_64", accelerator="cpu", slots=1,
                            address="127.0.0.1", port={live.port}, key_file={str(lab.client_key_path)!r}))
        print("connected")
    except HostLost as exc:
        print(exc)

asyncio.run(main())
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "the controller is short of file descriptors (EMFILE" in out.stdout, out.stdout
    assert "not a fault of this host" in out.stdout and "ulimit -n" in out.stdout


def test_handshakes_take_turns_and_a_host_that_never_answers_gives_its_turn_back(lab):
    """A new leader connecting to a whole lab at once does not start every SSH handshake
    together (issue 16: its requests waited behind them): at most ``handshakes`` at a time. The
    TCP connect comes first, outside the turns, so a host that refuses fails at once; one that
    accepts and never answers holds its turn ``handshake_turn`` seconds, not ``connect_timeout``."""
    import asyncio
    import socket
    import time

    from fleet.backends.base import HostLost
    from fleet.backends.connection import ConnectionPool
    from fleet.inventory import Host

    live = lab.add_hosts("rtx5060", 1)[0]
    lab.start()

    async def run() -> None:
        greeted: dict[int, float] = {}  # hung host's port -> when the client's version line came

        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            port = writer.get_extra_info("sockname")[1]
            if await reader.readline():
                greeted[port] = time.monotonic()
            await reader.read()  # never answers; the client gives up
            writer.close()

        hung = [await asyncio.start_server(hang, "127.0.0.1", 0) for _ in range(3)]
        ports = [server.sockets[0].getsockname()[1] for server in hung]
        with socket.socket() as closed:  # a port nothing listens on: refused
            closed.bind(("127.0.0.1", 0))
            refused = closed.getsockname()[1]

        def host(name: str, port: int) -> Host:
            return _host(lab, name, "127.0.0.1", port)

        options = _options(lab, connect_timeout=4.0)
        pool = ConnectionPool(options, lambda name: None, handshakes=2, handshake_turn=1.0)

        async def connect(h: Host) -> tuple[str, float, str]:
            began = time.monotonic()
            try:
                transport = await pool.get(h)
                return h.name, time.monotonic() - began, "ok" if not transport.closed else "closed"
            except HostLost as exc:
                return h.name, time.monotonic() - began, str(exc)

        began = time.monotonic()
        hanging = [asyncio.ensure_future(connect(host(f"hung-{i}", port))) for i, port in enumerate(ports)]
        while len(greeted) < 2 and time.monotonic() - began < 5:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        # two handshakes at a time: the third hung host waits for a turn
        assert len(greeted) == 2 and pool.handshakes.waited == 1, greeted
        others = [connect(host("closed", refused)), connect(_host(lab, live.name, live.address, live.port))]
        results = {name: (took, what) for name, took, what in await asyncio.gather(*others, *hanging)}
        await pool.close()
        for server in hung:
            server.close()

        # the refused host fails at once, without waiting for a turn
        took, what = results["closed"]
        assert f"cannot connect to 127.0.0.1:{refused}: connection refused" in what and took < 1.0, results
        # the hung hosts give up after connect_timeout, and say so
        for i in range(3):
            took, what = results[f"hung-{i}"]
            assert "no answer in 4 s (connect_timeout)" in what, results
        # their turns were given back 1 s after they began, though the hung handshakes went on:
        # the third hung host and the live one had theirs then, not after connect_timeout (the
        # bounds leave a loaded machine room: the lab's sshd shares this process)
        assert pool.handshakes.waited == 2
        third = max(greeted.values()) - began
        assert 0.95 <= third < 4.0, sorted(t - began for t in greeted.values())
        took, what = results[live.name]
        assert what == "ok" and took < 4.0, results

    asyncio.run(run())


def test_renewals_answered_by_the_agents_keep_the_ssh_keepalives_quiet(lab, caplog):
    """The attempt leases of every host are renewed together (``agent.Renewer``) and each
    agent answers; what a connection receives restarts asyncssh's keepalive timer, so no
    keepalive request goes out while renewals flow (at 1,000 hosts the keepalives and the
    renewals, each on its own timer, were most of a resting controller's CPU: bench/scale.py
    "steady"). The control: the same connections without renewals send keepalives. Real
    sshd, the real agent."""
    import asyncio
    import logging
    import sys

    from fleet.backends.agent import AgentChannel, Renewer, renew_period
    from fleet.backends.connection import ConnectionPool
    from tests.agent_driver import WRAPPER

    hosts = lab.add_hosts("rtx5060", 2)
    lab.start()
    keepalive = 1.0
    assert renew_period(attempt_lease=8.0, keepalive_interval=keepalive) == pytest.approx(0.9)  # not 8 / 4
    assert renew_period(attempt_lease=8.0, keepalive_interval=0) == 2.0  # keepalives off
    every = 0.3  # well within the keepalive interval: an answer late on a loaded machine still counts

    async def sent_keepalives(renew: bool) -> int:
        options = _options(lab, keepalive_interval=keepalive, keepalive_count_max=100)
        pool = ConnectionPool(options, lambda name: None)
        renewer = Renewer(every)
        agents = []
        try:
            for live in hosts:
                transport = await pool.get(_host(lab, live.name, live.address, live.port))
                agents.append(AgentChannel(live.name, await transport.open_channel(
                    f"exec {sys.executable} -S -B {WRAPPER} agent")))
                if renew:
                    renewer.add(agents[-1])
            await asyncio.sleep(2 * every)  # the first renewals come within one period
            caplog.clear()
            await asyncio.sleep(4 * keepalive)
            sent = sum("Sending keepalive request" in r.getMessage() for r in caplog.records)
            assert all(agent.alive for agent in agents), [agent.dead for agent in agents]
            assert set(renewer.agents) == ({h.name for h in hosts} if renew else set())
            return sent
        finally:
            renewer.close()
            for agent in agents:
                agent.close()
            await pool.close()

    with caplog.at_level(logging.DEBUG, logger="asyncssh"):
        renewed = asyncio.run(sent_keepalives(True))
        quiet = asyncio.run(sent_keepalives(False))
    assert renewed == 0 and quiet >= 2, (renewed, quiet)
