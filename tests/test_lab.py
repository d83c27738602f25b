"""Tests of the device lab itself: real SSH servers, real clients (asyncssh, ssh, ansible)."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest

from tests.lab import PROFILES, Lab, LabError, LabHost, have_sshd
from tests.lab.fixtures import requires_sshd  # the `lab` fixture comes from conftest.py

REPO = Path(__file__).resolve().parents[1]
KINDS = ["asyncssh", pytest.param("openssh", marks=requires_sshd)]


@asynccontextmanager
async def connect(
    lab: Lab, host: LabHost, known_hosts: Path | None = None
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """An asyncssh client connection to ``host`` that verifies its key against the lab's."""
    async with asyncssh.connect(
        host.address,
        host.port,
        username=lab.user,
        client_keys=[str(lab.client_key_path)],
        known_hosts=str(known_hosts or lab.known_hosts_path),
    ) as conn:
        yield conn


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("kind", KINDS)
async def test_host_runs_commands_in_its_own_environment(
    lab: Lab, tmp_path: Path, kind: str
) -> None:
    rtx, jetson = lab.add_hosts("rtx5060", 1, kind) + lab.add_hosts("jetson-orin-nano", 1, kind)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(lab.known_hosts_text())
    for host, arch in [(rtx, "x86_64"), (jetson, "aarch64")]:
        async with connect(lab, host, known_hosts) as conn:
            result = await conn.run(
                'echo "$HOME"; echo "$FLEET_LAB_HOST"; echo "$FLEET_LAB_PROFILE"; uname -m; pwd;'
                " command -v python3; echo $SHELL; env",
                check=True,
            )
        home, name, profile, machine, cwd, python3, shell, *env = str(result.stdout).splitlines()
        assert (home, cwd, name, profile) == (
            str(host.home),
            str(host.home),
            host.name,
            host.profile.name,
        )
        assert machine == arch
        assert python3 == f"{host.home}/bin/python3"
        assert shell == "/bin/sh"
        assert not [line for line in env if line.startswith(("VIRTUAL_ENV=", "PYENV"))]
    assert rtx.address != jetson.address
    if kind == "asyncssh":
        assert any("uname -m" in command for command in lab.commands(rtx.name))


@pytest.mark.parametrize("kind", KINDS)
async def test_stdin_round_trip_exit_status_and_signals(lab: Lab, kind: str) -> None:
    (host,) = lab.add_hosts("rtx5060", 1, kind)
    payload = bytes(range(256)) * 8192  # 2 MiB: more than any window or pipe buffer
    async with connect(lab, host) as conn:
        echoed = await conn.run("cat; echo done >&2; exit 3", input=payload, encoding=None)
        assert echoed.stdout == payload
        assert (echoed.stderr, echoed.exit_status) == (b"done\n", 3)

        killed = await conn.run("kill -TERM $$")
        assert killed.exit_signal is not None and killed.exit_signal[0] == "TERM"

        if kind == "openssh":
            return  # sshd ignores a client's signals for root logins (no post-auth privsep)
        trapping = await conn.create_process("trap 'echo caught; exit 7' TERM; echo ready; read x")
        assert await trapping.stdout.readline() == "ready\n"
        trapping.send_signal("TERM")
        finished = await trapping.wait()
        assert (finished.stdout, finished.exit_status) == ("caught\n", 7)


async def test_other_hosts_key_and_other_users_are_refused(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.add_hosts("hailo8", 2)
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[{a.address}]:{a.port} {b.host_public_key}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connect(lab, a, wrong):
            pass
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            a.address,
            a.port,
            username="nobody",
            client_keys=[str(lab.client_key_path)],
            known_hosts=str(lab.known_hosts_path),
        )


@pytest.mark.parametrize("jump_kind", KINDS)
async def test_proxy_jump_through_a_host(lab: Lab, jump_kind: str) -> None:
    (jump,) = lab.add_hosts("rtx5060", 1, jump_kind)
    (target,) = lab.add_hosts("jetson-orin-nano", 1)
    async with connect(lab, jump) as jump_conn:
        async with jump_conn.connect_ssh(
            target.address,
            target.port,
            username=lab.user,
            client_keys=[str(lab.client_key_path)],
            known_hosts=str(lab.known_hosts_path),
        ) as conn:
            result = await conn.run("echo $FLEET_LAB_HOST", check=True)
        assert result.stdout == "jetson-1\n"
        if jump_kind == "asyncssh":
            with pytest.raises(asyncssh.ChannelOpenError):
                await jump_conn.open_connection("192.0.2.1", 22)  # lab hosts reach loopback only
            assert lab.tunnel_requests(jump.name) == [(target.address, target.port)]
        else:
            with pytest.raises(LabError):
                lab.tunnel_requests(jump.name)


@pytest.mark.parametrize("kind", KINDS)
async def test_sftp_paths_start_at_home(lab: Lab, kind: str) -> None:
    (host,) = lab.add_hosts("hailo8", 1, kind)
    async with connect(lab, host) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.realpath(".") == str(host.home)
        async with sftp.open("model.onnx", "wb") as remote:
            await remote.write(b"\x00onnx")
    assert (host.home / "model.onnx").read_bytes() == b"\x00onnx"


@pytest.mark.parametrize("kind", KINDS)
async def test_stop_host_drops_it_and_start_host_brings_it_back(lab: Lab, kind: str) -> None:
    (host,) = lab.add_hosts("jetson-orin-nano", 1, kind)
    port = host.port
    async with connect(lab, host) as conn:
        session = await conn.create_process("echo $$; exec sleep 60")
        shell_pid = int(await session.stdout.readline())
        lab.stop_host(host.name)
        await asyncio.wait_for(conn.wait_closed(), 10)
    if kind == "asyncssh":
        assert not alive(shell_pid)  # a dropped session's command is killed
    with pytest.raises(OSError):
        async with connect(lab, host):
            pass
    lab.start_host(host.name)
    assert host.port == port
    async with connect(lab, host) as conn:  # same key: the old known_hosts still verifies
        assert (await conn.run("echo back", check=True)).stdout == "back\n"


def test_detached_processes_survive_stop_host_but_not_the_lab(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    kinds = ["asyncssh", "openssh"] if have_sshd() else ["asyncssh"]
    pids = []

    async def start_detached(lab: Lab, host: LabHost) -> int:
        async with connect(lab, host) as conn:
            started = await conn.run("setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!")
        return int(str(started.stdout))

    with Lab(tmp_path / "lab") as lab:
        for kind in kinds:
            (host,) = lab.add_hosts("rtx5060", 1, kind)
            pid = asyncio.run(start_detached(lab, host))
            lab.stop_host(host.name)
            assert alive(pid)  # a host that only lost its network keeps its jobs
            pids.append(pid)
    assert not [pid for pid in pids if alive(pid)]
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(5)  # asyncio's waitpid helper threads end once their child is reaped
        assert not thread.is_alive(), thread


@requires_sshd
def test_openssh_host_has_its_own_passwd_and_works_with_ssh(lab: Lab) -> None:
    (host,) = lab.add_hosts("jetson-orin-nano", 1, "openssh")
    result = subprocess.run(
        ["ssh", "-F", str(lab.ssh_config_path), "-p", str(host.port), host.address,
         "echo $HOME; uname -m; grep ^root: /etc/passwd"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert result.stdout.splitlines() == [
        str(host.home),
        "aarch64",
        f"root:x:0:0:root:{host.home}:/bin/sh",
    ]
    assert f":{host.home}:" not in Path("/etc/passwd").read_text()  # the real /etc is untouched


def test_ansible_pings_asyncssh_and_openssh_hosts(lab: Lab, tmp_path: Path) -> None:
    jump, behind = lab.add_hosts("rtx5060", 2)
    hosts = [jump, behind]
    if have_sshd():
        hosts += lab.add_hosts("jetson-orin-nano", 1, "openssh")
    proxy = f"-o ProxyJump={lab.user}@{jump.address}:{jump.port}"
    inventory = lab.write_inventory(
        tmp_path / "inventory.ini",
        extra_host_vars={behind.name: {"ansible_ssh_common_args": proxy}},
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "-i", str(inventory), "all", "-m", "ping"],
        env=lab.ansible_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for host in hosts:
        assert f"{host.name} | SUCCESS" in result.stdout
    assert (behind.address, behind.port) in lab.tunnel_requests(jump.name)


def test_inventory_reads_back_through_ansible(lab: Lab, tmp_path: Path) -> None:
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    lab.add_hosts("rtx5060", 1, slots=2)
    lab.add_hosts("hailo8", 1)
    path = lab.write_inventory(
        tmp_path / "inventory.ini", extra_host_vars={"hailo-1": {"fleet_labels": {"room": "b1"}}}
    )
    inventory = InventoryManager(loader=DataLoader(), sources=[str(path)])
    assert [host.name for host in inventory.groups["rtx"].get_hosts()] == ["rtx-1"]
    rtx = inventory.get_host("rtx-1").vars
    assert (rtx["ansible_port"], rtx["fleet_slots"]) == (lab.host("rtx-1").port, 2)
    assert rtx["fleet_workdir"] == str(lab.host("rtx-1").home / ".fleet")
    assert rtx["ansible_python_interpreter"] == str(lab.python)
    hailo = inventory.get_host("hailo-1").vars
    assert hailo["fleet_labels"] == {"room": "b1"}
    assert hailo["fleet_accelerator"] == PROFILES["hailo8"].accelerator
    assert "fleet_slots" not in hailo


async def test_fifty_hosts_answer(lab: Lab) -> None:
    hosts = lab.add_hosts("hailo8", 50)
    assert len({host.address for host in hosts}) == 50

    async def name_of(host: LabHost) -> str:
        async with connect(lab, host) as conn:
            return str((await conn.run("echo $FLEET_LAB_HOST", check=True)).stdout).strip()

    assert await asyncio.gather(*(name_of(host) for host in hosts)) == [h.name for h in hosts]


async def test_serve_runs_a_lab_in_another_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.lab", "serve", "--hosts", "3",
        "--profile", "jetson-orin-nano", "--out", str(out),
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), 30) == b"ready\n"
        assert (out / "ready").read_text() == f"{server.pid}\n"
        assert "[jetson]" in (out / "inventory.ini").read_text()
        address_port, _ = (out / "known_hosts").read_text().splitlines()[0].split(" ", 1)
        address, port = address_port.removeprefix("[").split("]:")
        async with asyncssh.connect(
            address,
            int(port),
            username=pwd.getpwuid(os.geteuid()).pw_name,
            client_keys=[str(out / "lab" / "client_key")],
            known_hosts=str(out / "known_hosts"),
        ) as conn:
            assert (await conn.run("uname -m", check=True)).stdout == "aarch64\n"
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 10) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
