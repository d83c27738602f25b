"""fleet hosts probe / provision: real ansible-playbook (through ansible-runner, run by the
server) against the device lab's pure-Python and OpenSSH hosts, which carry the stand-in tools
and, on Jetson hosts, an /etc/nv_tegra_release under their FLEET_HOST_ROOT."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from tests.lab import Lab, have_sshd


def start(fleet, lab: Lab, tmp_path, monkeypatch, extra=None, no_arch=()):
    for key, value in lab.ansible_env().items():
        if key.startswith("ANSIBLE_") or key == "PATH":
            monkeypatch.setenv(key, value)
    (fleet.home / "known_hosts").write_text(lab.known_hosts_text())
    inventory = lab.write_inventory(tmp_path / "inventory.ini", extra_host_vars=extra)
    lines = [re.sub(r" fleet_arch=\S+", "", line) if line.split(" ")[0] in no_arch else line
             for line in inventory.read_text().splitlines()]
    inventory.write_text("\n".join(lines) + "\n")
    return fleet.start(inventory)


@pytest.mark.long
def test_probe_reads_what_hosts_are_and_reports_mismatches(fleet, lab, tmp_path, monkeypatch):
    lab.add_hosts("rtx5060", 1)
    lab.add_hosts("jetson-orin-nano", 1, kind="openssh" if have_sshd() else "asyncssh")
    lab.add_hosts("hailo8", 1)
    gone = lab.add_hosts("rtx5060", 1)[0]
    client = start(fleet, lab, tmp_path, monkeypatch, extra={"hailo-1": {"fleet_accelerator": "hailo8l"}},
                   no_arch=("rtx-1",))
    assert {h.name: h.arch for h in client.hosts()}["rtx-1"] == "unknown"  # no fleet_arch given
    lab.stop_host(gone.name)
    out = fleet.cli("hosts", "probe", "--json", check=False, timeout=300)
    assert out.returncode == 1  # a mismatch and an unreachable host
    results = {r["host"]: r for r in json.loads(out.stdout)}
    rtx, jetson, hailo = results["rtx-1"], results["jetson-1"], results["hailo-1"]
    assert rtx["status"] == "ok" and rtx["facts"]["facts_source"] == "commands"
    assert rtx["facts"]["gpu"] == lab.tools("rtx-1")["gpu_name"] and rtx["facts"]["tensorrt"] == "10.2.0"
    assert rtx["facts"]["driver"] and rtx["facts"]["memory_mb"] > 0 and rtx["facts"]["arch"] == "x86_64"
    assert rtx["mismatches"] == []
    if shutil.which("podman"):  # the lab's hosts are this machine: its podman answers `podman info`
        assert rtx["facts"]["container_engine"] == "podman"
    assert jetson["facts"]["l4t"] == "36.3.0" and jetson["facts"]["jetpack"].startswith("6")
    assert jetson["facts"]["power_mode"] == lab.tool_state("jetson-1")["power_mode"]
    # The lab simulates a Jetson's arch with a `uname` stand-in only; its kernel is this x86
    # machine's, and the probe says so.
    assert any("arch: the inventory says aarch64, the kernel says x86_64" in m for m in jetson["mismatches"])
    assert hailo["facts"]["hailo_arch"] == "HAILO8" and hailo["facts"]["hailort"]
    assert hailo["mismatches"] == ["accelerator: the inventory says hailo8l, the device is HAILO8"]
    assert results[gone.name]["status"] == "unreachable"

    listed = {h.name: h for h in client.hosts()}
    assert listed["jetson-1"].facts["l4t"] == "36.3.0" and listed["jetson-1"].mismatches
    assert listed["rtx-1"].arch == "x86_64"  # filled in from the probe
    if shutil.which("podman"):  # and so is the engine: jobs with image: may go there
        assert listed["rtx-1"].container_engine == "podman"
    assert listed["jetson-1"].arch == "aarch64"  # what the inventory says stays (and is reported)
    assert "MISMATCH hailo-1" in fleet.cli("hosts").stderr

    # Probed facts can be required by jobs.
    ok = client.submit({"name": "jp6", "run": "echo ok", "resources": {"requires": ["jetpack>=6"]}})
    assert client.wait(ok.id, 60).host == "jetson-1"
    trt = client.submit({"name": "trt10", "run": "true", "resources": {"requires": ["tensorrt>=10"]}})
    assert client.wait(trt.id, 60).host == "rtx-1"
    spec = tmp_path / "trt11.yaml"
    spec.write_text("name: trt11\nrun: 'true'\nresources: {requires: ['tensorrt>=11']}\n")
    out = fleet.cli("submit", str(spec), check=False)
    assert out.returncode != 0 and "tensorrt 10.2.0 (needs >=11)" in out.stderr
    spec.write_text("name: bad\nrun: 'true'\nresources: {requires: ['tensorrt>>1']}\n")
    out = fleet.cli("submit", str(spec), check=False)
    assert out.returncode == 2 and "resources.requires" in out.stderr


def local_index(home: Path, wheels: Path) -> Path:
    """A package index on this machine for the pip of a lab host whose HOME is ``home``: wheels
    named onnxruntime and numpy (an empty package each, at the versions installed here, so a
    machine's pip constraints still hold), and the host's pip told to look nowhere else. Returns
    where ``pip install --user`` puts them."""
    wheels.mkdir()
    for name in ("onnxruntime", "numpy"):
        version = importlib.metadata.version(name)
        dist = f"{name}-{version}.dist-info"
        files = {f"{name}/__init__.py": b"",
                 f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
                 f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: fleet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
        record = "".join(f"{path},sha256={_digest(data)},{len(data)}\n" for path, data in files.items())
        with zipfile.ZipFile(wheels / f"{name}-{version}-py3-none-any.whl", "w") as whl:
            for path, data in files.items():
                whl.writestr(path, data)
            whl.writestr(f"{dist}/RECORD", record + f"{dist}/RECORD,,\n")
    conf = home / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"[global]\nno-index = true\nfind-links = {wheels}\ndisable-pip-version-check = true\n")
    return home / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.mark.timeout(400)  # four ansible-playbook runs against two hosts (~90 s, more under load)
@pytest.mark.long
def test_provision_is_idempotent_and_check_changes_nothing(fleet, lab, tmp_path, monkeypatch):
    jetson = lab.add_hosts("jetson-orin-nano", 1)[0]
    # Its python lacks ONNX Runtime: provision pip-installs it, from a package index on this
    # machine (tests touch loopback only; the real wheels cost seconds of CPU to unpack).
    site = local_index(jetson.home, tmp_path / "wheels")
    extra: dict = {"jetson-1": {"fleet_power_mode": 0, "fleet_lock_clocks": True}}
    if have_sshd():
        rtx = lab.add_hosts("rtx5060", 1, kind="openssh")[0]
        # A real sshd host in its own /etc: provision makes the accounts jobs run as there.
        # fleet_install_onnxruntime off: its python lacks ONNX Runtime, and the task would
        # pip-install it from PyPI (tests touch loopback only; it cost ~11 s of CPU a run).
        extra[rtx.name] = {"fleet_isolation": "user", "fleet_job_user": "fleet-shared",
                           "fleet_install_onnxruntime": False}
    start(fleet, lab, tmp_path, monkeypatch, extra=extra)
    fleet.cli("users", "add", "alice")
    fact = lab.host_root("jetson-1") / "etc" / "ansible" / "facts.d" / "fleet.fact"

    dry = json.loads(fleet.cli("hosts", "provision", "--check", "--json", timeout=300).stdout)
    assert all(r["check"] and r["status"] in ("ok", "changed") for r in dry)
    assert not fact.exists()  # check mode changed nothing
    assert lab.tool_state("jetson-1")["power_mode_id"] != 0

    first = {r["host"]: r for r in json.loads(fleet.cli("hosts", "provision", "--json", timeout=300).stdout)}
    assert all(r["status"] == "changed" and r["failed"] == 0 for r in first.values()), first
    assert fact.exists()
    state = lab.tool_state("jetson-1")
    assert state["power_mode_id"] == 0 and state["clocks_locked"] is True
    assert (site / "onnxruntime" / "__init__.py").exists()  # installed from the local index (numpy too, if missing)

    second = json.loads(fleet.cli("hosts", "provision", "--json", timeout=300).stdout)
    assert all(r["status"] == "ok" and r["changed"] == 0 for r in second), second
    if have_sshd():
        accounts = fleet.cli("ssh", rtx.name, "--", "getent", "passwd", "fleet-alice", "fleet-root",
                             "fleet-shared").stdout
        assert [line.split(":")[0] for line in accounts.splitlines()] == ["fleet-alice", "fleet-root", "fleet-shared"]
        assert all(line.endswith(":/nonexistent:/usr/sbin/nologin") for line in accounts.splitlines())

    # After provisioning, the probe reads fleet's custom fact instead of running commands.
    probed = json.loads(fleet.cli("hosts", "probe", "jetson-1", "--json", check=False, timeout=300).stdout)
    assert probed[0]["facts"]["facts_source"] == "facts.d"
    assert probed[0]["facts"]["power_mode"] == "15W" and probed[0]["facts"]["clocks_locked"] is True
