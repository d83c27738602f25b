"""End to end on the device lab: simulated SSH hosts with device profiles (pure-Python asyncssh
hosts, and real OpenSSH hosts where sshd exists), a real ``fleet serve``, the API."""

from __future__ import annotations

import re
import sys
from collections import defaultdict

from tests.helpers import eventually, pid_alive
from tests.lab import Lab, have_sshd
from tests.lab.fixtures import requires_sshd

ACTIVE = {"PENDING", "STARTING", "RUNNING", "RETRYING", "CANCELLING"}


def start_fleet(fleet, lab: Lab, tmp_path, *, known=None, extra=None, config=None):
    (fleet.home / "known_hosts").write_text(lab.known_hosts_text(known))
    inventory = lab.write_inventory(tmp_path / "inventory.ini", extra_host_vars=extra)
    return fleet.start(inventory, config)


def log_of(client, job_id: str) -> str:
    return b"".join(client.logs(job_id)).decode()


def test_jobs_run_on_the_right_pool_and_arch(fleet, lab, tmp_path):
    lab.add_hosts("rtx5060", 2)
    lab.add_hosts("jetson-orin-nano", 2)
    lab.add_hosts("hailo8", 1)
    extra = {}
    if have_sshd():
        # Labelled, so that a job of each pool is sent there: placement alone may fill the
        # asyncssh hosts first (CI once saw no job reach an OpenSSH host).
        for host in (*lab.add_hosts("rtx5060", 1, kind="openssh"),
                     *lab.add_hosts("jetson-orin-nano", 1, kind="openssh")):
            extra[host.name] = {"fleet_labels": {"sshd": "openssh"}}
    client = start_fleet(fleet, lab, tmp_path, extra=extra)
    pools = {p.name: p.hosts for p in client.pools()}
    assert pools == {"rtx": 3 if have_sshd() else 2, "jetson": 3 if have_sshd() else 2, "hailo8": 1}
    probe = 'echo "host=$FLEET_HOST arch=$(uname -m) profile=$FLEET_LAB_PROFILE home=$HOME"'
    jobs = {}
    for pool in ("rtx", "jetson", "hailo8"):
        for i in range(4):
            jobs[client.submit({"name": f"{pool}{i}", "run": probe, "resources": {"pool": pool}}).id] = pool
        if have_sshd() and pool != "hailo8":
            on_openssh = {"pool": pool, "labels": {"sshd": "openssh"}}
            jobs[client.submit({"name": f"{pool}-sshd", "run": probe, "resources": on_openssh}).id] = pool
    by_arch = client.submit({"name": "arm", "run": probe, "resources": {"arch": "aarch64"}}).id
    hosts = {h.name: h for h in client.hosts()}
    seen_kinds = set()
    for job_id, pool in jobs.items():
        detail = client.wait(job_id, timeout=60)
        assert detail.state == "SUCCEEDED", detail
        fields = dict(kv.split("=", 1) for kv in log_of(client, job_id).split())
        host = hosts[fields["host"]]
        assert pool in host.pools and detail.host == host.name
        assert fields["arch"] == host.arch == ("aarch64" if pool == "jetson" else "x86_64")
        assert fields["profile"] == host.accelerator
        assert fields["home"].endswith(f"/{host.name}/home")  # it really ran on that host
        seen_kinds.add(lab.host(host.name).kind)
    assert client.wait(by_arch, 60).host.startswith("jetson")
    if have_sshd():
        assert seen_kinds == {"asyncssh", "openssh"}


def test_slots_are_never_exceeded(fleet, lab, tmp_path):
    """100 jobs on 5 hosts (slots 1, 1, 2, 2, 3): each job counts the jobs running beside it
    on its host, from the host's own file system."""
    slots = [1, 1, 2, 2, 3]
    for n in slots:
        lab.add_hosts("rtx5060", 1, slots=n)
    client = start_fleet(fleet, lab, tmp_path)
    run = (
        'mkdir -p "$HOME/running" && touch "$HOME/running/$FLEET_ATTEMPT_ID" && '
        'echo "concurrent=$(ls "$HOME/running" | wc -l)"; sleep 0.2; rm "$HOME/running/$FLEET_ATTEMPT_ID"'
    )
    ids = [j.id for j in client.submit_many([{"name": f"s{i}", "run": run} for i in range(100)])]
    peak: dict[str, int] = defaultdict(int)
    for job_id in ids:
        detail = client.wait(job_id, timeout=120)
        assert detail.state == "SUCCEEDED", detail
        count = int(re.search(r"concurrent=(\d+)", log_of(client, job_id)).group(1))
        peak[detail.host] = max(peak[detail.host], count)
    limits = {h.name: h.slots for h in client.hosts()}
    for host, seen in peak.items():
        assert seen <= limits[host], f"{host} ran {seen} jobs at once with {limits[host]} slots"
    assert max(peak.values()) > 1, "no host ever ran two jobs at once: the test proved nothing"
    assert len(peak) == 5  # every host got work


def test_onnxruntime_benchmark_over_ssh_and_missing_onnxruntime(fleet, lab, tmp_path, request):
    with_ort, without = lab.add_hosts("rtx5060", 2)
    extra = {with_ort.name: {"ansible_python_interpreter": sys.executable, "fleet_labels": {"ort": "yes"}},
             without.name: {"fleet_labels": {"ort": "no"}}}
    client = start_fleet(fleet, lab, tmp_path, extra=extra)
    model = request.config.rootpath / "examples" / "models" / "tinycnn.onnx"
    sha, size = client.upload(model)
    inputs = {"model": {"kind": "file", "filename": "tinycnn.onnx", "files": {"tinycnn.onnx": {"sha256": sha, "size": size}}}}
    spec = {"name": "ort", "kind": "benchmark", "runner": "onnxruntime", "inputs": inputs,
            "params": {"warmup": 5, "iterations": 50}}
    ok = client.submit({**spec, "resources": {"labels": {"ort": "yes"}}}).id
    bad = client.submit({**spec, "resources": {"labels": {"ort": "no"}}}).id
    detail = client.wait(ok, timeout=120)
    assert detail.state == "SUCCEEDED", (detail, log_of(client, ok))
    lat = detail.result["metrics"]["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] if "p50" in lat else 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert detail.result["target"]["host"] == with_ort.name
    assert detail.result["model"]["sha256"] == sha
    failed = client.wait(bad, timeout=60)
    assert failed.state == "FAILED" and failed.reason == "setup_failed", failed
    assert "onnxruntime" in (failed.message or "")
    assert failed.attempts == 1  # the job's fault, not the host's: no retry


def test_jump_host_is_used(fleet, lab, tmp_path):
    (gw,) = lab.add_hosts("rtx5060", 1)
    (jet,) = lab.add_hosts("jetson-orin-nano", 1)
    extra = {jet.name: {"ansible_ssh_common_args": f"-o ProxyJump={gw.name}"}}
    client = start_fleet(fleet, lab, tmp_path, extra=extra)
    job = client.submit({"name": "via", "run": "echo $FLEET_HOST", "resources": {"pool": "jetson"}}).id
    detail = client.wait(job, timeout=60)
    assert detail.state == "SUCCEEDED", detail
    assert log_of(client, job).strip() == jet.name
    assert (jet.address, jet.port) in lab.tunnel_requests(gw.name)
    assert [h.target for h in client.hosts() if h.name == jet.name][0].endswith(f"via {gw.name}")


def test_unknown_host_key_is_refused(fleet, lab, tmp_path):
    known, unknown = lab.add_hosts("rtx5060", 2)
    extra = {unknown.name: {"fleet_labels": {"pin": "me"}}}
    client = start_fleet(fleet, lab, tmp_path, known=[known.name], extra=extra)
    job = client.submit({"name": "pinned", "run": "echo ran", "resources": {"labels": {"pin": "me"}},
                         "retries": 0}).id
    # The host was never reached (its key is refused): it takes no job, the job waits and says
    # why, instead of spending its retries there.
    hosts = eventually(lambda: {h.name: h for h in client.hosts() if h.health_message
                                and "unreachable" in h.health_message} or None, what="the check to fail")
    assert unknown.name in hosts and "unknown" in hosts[unknown.name].health_message
    assert unknown.address in hosts[unknown.name].health_message
    assert hosts[unknown.name].state == "offline"
    assert client.job(job).state == "PENDING" and client.job(job).attempts == 0
    why = client.why(job)
    assert "1 unreachable" in why.summary or "unreachable" in str(why), why
    assert lab.commands(unknown.name) == []  # nothing ever ran there
    eventually(lambda: {h.name: h.health for h in client.hosts()}[known.name] == "good",
               what="the known host's check to pass")
    assert {h.name: h.health for h in client.hosts()}[unknown.name] in ("unknown", "bad")
    client.cancel(job)


def test_trust_on_first_use_records_the_key(fleet, lab, tmp_path):
    (host,) = lab.add_hosts("hailo8", 1)
    client = start_fleet(fleet, lab, tmp_path, known=[], config={"trust_on_first_use": True})
    job = client.submit({"name": "tofu", "run": "true"}).id
    assert client.wait(job, 60).state == "SUCCEEDED"
    recorded = (fleet.home / "known_hosts").read_text()
    assert f"[{host.address}]:{host.port}" in recorded


@requires_sshd
def test_cancel_and_timeout_on_a_real_sshd_host(fleet, lab, tmp_path):
    (host,) = lab.add_hosts("rtx5060", 1, kind="openssh", slots=2)
    client = start_fleet(fleet, lab, tmp_path)
    marker = host.home / "child.pid"
    slow = client.submit({"name": "slow", "run": f"sleep 300 & echo $! > {marker}; wait"}).id
    timed = client.submit({"name": "timed", "run": "sleep 300", "timeout": 1}).id
    for _ in range(600):
        if marker.exists() and marker.read_text().strip():
            break
        client.wait(slow, timeout=0.1)
    assert client.cancel(slow).state == "CANCELLING"
    assert client.wait(slow, 60).state == "CANCELLED"
    assert client.wait(timed, 60).state == "TIMED_OUT"
    assert not pid_alive(int(marker.read_text())), "the job's child survived the cancel"
