"""Backends are plugins (DESIGN.md §5.8): a backend that lives outside fleet, as its own small
distribution (tests/plugins/fleet-procpool, installed by the README's test command), registered
only by its ``fleet.backends`` entry point, runs jobs end to end beside the ssh backend, survives
a controller ``kill -9`` with nothing run twice, and shows in ``fleet hosts`` and ``fleet why``.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from fleet.backends.registry import GROUP, load_backends
from fleet.config import Settings
from fleet.errors import ConfigError
from tests.helpers import eventually, kill_server

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "procpool"


def _installed() -> bool:
    return any(ep.name == PLUGIN for ep in entry_points(group=GROUP))


pytestmark = pytest.mark.skipif(not _installed(), reason="the procpool test plugin is not installed "
                                "(pip install -e tests/plugins/fleet-procpool)")


def _inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "hosts.ini"
    inv.write_text("localhost ansible_connection=local fleet_slots=1\n")
    return inv


def _wait_state(client, job_id: str, states: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.job(job_id).state in states:
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_id} stayed {client.job(job_id).state}, wanted {states}")


def test_fleet_names_no_plugin():
    """Nothing in fleet's own code knows this backend: it comes in by its entry point alone."""
    found = subprocess.run(["grep", "-rli", PLUGIN, str(REPO / "fleet")], capture_output=True, text=True)
    assert found.stdout == "", found.stdout


def test_plugin_runs_jobs_beside_ssh_and_shows_in_hosts_and_why(fleet, tmp_path):
    client = fleet.start(_inventory(tmp_path), config={"backends": {PLUGIN: {"limit": 2}}})
    hosts = {h["name"]: h for h in fleet.cli_json("hosts")}
    assert hosts[PLUGIN]["backend"] == PLUGIN and hosts[PLUGIN]["elastic"] is True
    assert hosts[PLUGIN]["slots"] == 2 and "elastic" in hosts[PLUGIN]["target"]
    assert hosts["localhost"]["backend"] == "ssh" and hosts["localhost"]["elastic"] is False

    # The fixed host is free (once checked: an unchecked host takes nothing) and a burst job
    # goes there first (an elastic pool ranks below it).
    eventually(lambda: next(h for h in client.hosts() if h.name == "localhost").health == "good",
               what="localhost checked")
    gate = tmp_path / "gate"  # the fixed host stays busy until the test has seen the rest
    first = client.submit({"name": "fixed-first", "burst": True,
                           "run": f"while [ ! -e {gate} ]; do sleep 0.05; done"}).id
    _wait_state(client, first, {"RUNNING"})
    assert client.job(first).attempt_list[0].host == "localhost"
    # The lab is full: a job that may not burst waits, and says why.
    stays = client.submit({"name": "no-burst", "run": "true"}).id
    why = fleet.cli_json("why", stays)
    assert why["reasons"].get("busy") == 1, why
    assert any("the job has burst: never" in r for r in why["reasons"]), why
    # Jobs that may burst run in the plugin's pool, with their logs and exit status.
    side = tmp_path / "ran.txt"
    burst = [client.submit({"name": f"b{i}", "burst": True,
                            "run": f'echo "$FLEET_JOB_ID" >> {side}; echo hello from $FLEET_HOST; exit {i}'}).id
             for i in range(2)]
    ended = [client.wait(j, 60) for j in burst]
    assert [j.state for j in ended] == ["SUCCEEDED", "FAILED"], fleet.server_log()
    for job in ended:
        attempt = job.attempt_list[0]
        assert (attempt.host, attempt.backend) == (PLUGIN, PLUGIN)
        assert b"".join(client.logs(job.id)) == f"hello from {PLUGIN}\n".encode()
    assert ended[1].attempt_list[0].exit_code == 1 and ended[1].reason == "exit_nonzero"
    assert sorted(side.read_text().split()) == sorted(burst)
    gate.touch()
    assert client.wait(first, 60).state == "SUCCEEDED"
    assert client.wait(stays, 60).attempt_list[0].host == "localhost"

    # What the plugin cannot do it says: it declares no output collection.
    outputs = client.submit({"name": "wants-files", "burst": True, "resources": {"pool": PLUGIN},
                             "run": "echo x > out.txt", "outputs": ["out.txt"]}).id
    job = client.wait(outputs, 60)
    assert job.state == "FAILED" and job.reason == "setup_failed", job
    assert f"backend {PLUGIN} cannot fetch" in job.message


def test_the_burst_policy_holds_a_queue_back_until_it_has_waited_and_only_jobs_skip_the_lab(fleet, tmp_path):
    """``burst: {wait: 6}``: with the lab full a burstable job waits for the lab first, says
    how long it has waited of how long, then bursts by itself (a timed pass, no new event);
    ``burst: only`` goes to the elastic pool even with the lab free; a bad policy stops the start."""
    client = fleet.start(_inventory(tmp_path), config={"backends": {PLUGIN: {"limit": 2}},
                                                       "burst": {"wait": 6}})
    eventually(lambda: next(h for h in client.hosts() if h.name == "localhost").health == "good",
               what="localhost checked")
    only = client.wait(client.submit({"name": "only", "burst": "only", "run": "true"}).id, 60)
    assert only.state == "SUCCEEDED" and only.attempt_list[0].host == PLUGIN
    assert only.spec["burst"] == "only"

    blocker = client.submit({"name": "blocker", "run": "sleep 30"}).id
    _wait_state(client, blocker, {"RUNNING"})
    submitted = time.monotonic()
    waiter = client.submit({"name": "waiter", "burst": "allowed", "run": "true"}).id
    why = fleet.cli_json("why", waiter)
    assert why["reasons"].get("busy") == 1, why
    assert any(r.startswith("may burst, not yet: the oldest job has waited") and r.endswith("of 6s")
               for r in why["reasons"]), why
    job = client.wait(waiter, 60)
    assert job.state == "SUCCEEDED" and job.attempt_list[0].host == PLUGIN
    waited = datetime.fromisoformat(job.attempt_list[0].started_at) - datetime.fromisoformat(job.created_at)
    assert waited.total_seconds() >= 5.9, waited  # it waited for the lab first
    assert time.monotonic() - submitted < 40
    client.cancel(blocker)


def test_plugin_attempts_survive_controller_kill_9_and_run_once(fleet, tmp_path):
    config = {"backends": {PLUGIN: {"limit": 3}}}
    client = fleet.start(_inventory(tmp_path), config=config)
    side = tmp_path / "ran.txt"
    script = (f'echo "$FLEET_JOB_ID" >> {side}; i=0; '
              'while [ $i -lt 30 ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done')
    ids = [client.submit({"name": f"k{i}", "burst": True, "resources": {"pool": PLUGIN},
                          "run": script}).id for i in range(3)]
    for job_id in ids:
        _wait_state(client, job_id, {"RUNNING"})
    kill_server(fleet)

    client = fleet.start(_inventory(tmp_path), config=config)
    expected = "".join(f"line {i}\n" for i in range(30))
    for job_id in ids:
        job = client.wait(job_id, 60)
        assert job.state == "SUCCEEDED", (job, fleet.server_log())
        assert len(job.attempt_list) == 1 and job.attempt_list[0].backend == PLUGIN
        assert b"".join(client.logs(job_id)).decode() == expected
    assert sorted(side.read_text().split()) == sorted(ids)  # each ran exactly once


@pytest.mark.parametrize(("backends", "says"), [
    ({PLUGIN: {"limit": 0}}, f"backends.{PLUGIN}.limit"),
    ({PLUGIN: {"limt": 2}}, f"backends.{PLUGIN}.limt"),
    ({"nosuch": {}}, "no backend plugin named 'nosuch' is installed"),
    ({"ssh": {"port": 22}}, "backends.ssh: this backend takes no settings"),
    ("burst", "burst.rules.0.depth"),
], ids=["bad-value", "unknown-key", "not-installed", "ssh-takes-none", "bad-burst-policy"])
def test_bad_backend_settings_stop_the_start_naming_the_key(fleet, tmp_path, backends, says):
    config = ({"burst": {"rules": [{"pool": "x", "depth": -1}]}} if backends == "burst"
              else {"backends": backends})
    with pytest.raises(Exception) as info:
        fleet.start(_inventory(tmp_path), config=config)
    assert says in str(info.value)


def test_a_plugin_that_fails_to_import_disables_only_itself(tmp_path):
    settings = Settings(home=tmp_path, backends={"broken": {}})
    available = {ep.name: ep for ep in entry_points(group=GROUP)}
    available["broken"] = EntryPoint(name="broken", value="fleet_no_such_module:Backend", group=GROUP)
    loaded = load_backends(settings, [], lambda sha: tmp_path / sha, available)
    assert set(loaded.backends) == {"ssh"}
    assert "ModuleNotFoundError" in loaded.disabled["broken"]
    with pytest.raises(ConfigError, match="backends.procpool.pool"):
        load_backends(Settings(home=tmp_path, backends={PLUGIN: {"pool": "Bad Name"}}), [],
                      lambda sha: tmp_path / sha, available)
