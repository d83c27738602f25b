"""Host loss, hangs, health checks, drain and maintenance, queue timeouts — on the device lab.

A host that dies (its SSH server and every process gone) or hangs (every process of it
SIGSTOPped) mid-job is detected within the keepalive window; the attempt ends ``host_lost`` and
the job is retried on another host of its class. Health checks bring a host back, or quarantine
it after repeated failures; a host that comes back never finishes the attempt it was given up on.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers import eventually
from tests.lab import procs
from tests.lab.fixtures import requires_sshd
from tests.test_e2e_lab import start_fleet

# keepalive 1 s x 2: a silent host is dropped after ~2-3 s.
FAST = {"keepalive_interval": 1, "keepalive_count_max": 2, "connect_timeout": 2, "attempt_lease": 3,
        "health_check_timeout": 2, "health_bad_after": 2, "health_recheck_interval": 1}
WINDOW = FAST["keepalive_interval"] * (FAST["keepalive_count_max"] + 1) + FAST["connect_timeout"]


def _long_job(side, steps: int = 40, *, retry_steps: int | None = None, first=None, gate=None) -> dict:
    """Writes 'start HOST' at once and 'end HOST' after ``steps`` x 0.2 s of running time (only
    the first attempt, the one that creates directory ``first``, when ``retry_steps`` is given:
    later ones run ``retry_steps``). With ``gate``, the running time begins once that file
    exists (the test decides when, however slow the machine)."""
    n = str(steps) if retry_steps is None else "$n"
    pick = "" if retry_steps is None else \
        f"if mkdir {first} 2>/dev/null; then n={steps}; else n={retry_steps}; fi; "
    wait = "" if gate is None else f"while [ ! -e {gate} ]; do sleep 0.05; done; "
    return {
        "name": "long",
        "resources": {"pool": "rtx"},
        "run": (f'{pick}echo "start $FLEET_HOST" >> {side}; {wait}i=0; while [ $i -lt {n} ]; do '
                f'echo "tick $i"; i=$((i+1)); sleep 0.2; done; echo "end $FLEET_HOST" >> {side}'),
    }


def _running_host(client, job_id: str) -> str:
    job = eventually(lambda: (j := client.job(job_id)).state == "RUNNING" and j, what="RUNNING")
    return job.attempt_list[-1].host


def _health(client, name: str) -> str:
    return next(h for h in client.hosts() if h.name == name).health


def _assert_retried_after_loss(client, job_id: str, lost: str, t_lost: float) -> None:
    job = client.wait(job_id, 90)
    assert job.state == "SUCCEEDED", job
    first, second = job.attempt_list
    assert (first.host, first.state, first.reason) == (lost, "FAILED", "host_lost")
    assert second.host != lost and second.state == "SUCCEEDED"
    # Detected within the keepalive window (plus scheduling slack), not at the job's end.
    ended = _ts(first.ended_at)
    assert ended - t_lost < WINDOW + 2, (ended - t_lost, WINDOW)


def _ts(iso: str | None) -> float:
    from datetime import datetime

    assert iso is not None
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.long
def test_host_dies_mid_job_retry_elsewhere_then_health_bad_then_good(fleet, lab, tmp_path):
    lab.add_hosts("rtx5060", 2, slots=1)
    lab.start()
    side = tmp_path / "side.txt"
    client = start_fleet(fleet, lab, tmp_path, config=FAST)
    # The first attempt runs 10 s (it must still run when its host dies, however slow the
    # machine), the retry 1 s.
    job_id = client.submit(_long_job(side, 50, retry_steps=5, first=tmp_path / "first")).id
    lost = _running_host(client, job_id)
    t_lost = time.time()
    lab.stop_host(lost, kill_processes=True)  # power cut: sshd and every process gone
    _assert_retried_after_loss(client, job_id, lost, t_lost)

    status = fleet.cli("status", job_id).stdout
    assert "host_lost" in status and lost in status and "ENDED" in status

    # Health: unknown at once, bad after two failed checks while it stays down.
    assert eventually(lambda: _health(client, lost) == "bad", timeout=30, what=f"{lost} bad")
    host = next(h for h in client.hosts() if h.name == lost)
    assert host.state == "offline" and "unreachable" in (host.health_message or "")
    # Back on the network: the periodic check finds it and it takes jobs again.
    lab.start_host(lost)
    assert eventually(lambda: _health(client, lost) == "good", timeout=30, what=f"{lost} good")
    check = fleet.cli_json("hosts", "check", lost)
    assert check[0]["ok"] is True and check[0]["health"] == "good"
    lines = side.read_text().splitlines()
    assert lines.count(f"start {lost}") == 1 and f"end {lost}" not in lines
    assert sum(line.startswith("end ") for line in lines) == 1


@requires_sshd
@pytest.mark.long
def test_hung_host_is_given_up_and_its_attempt_never_finishes_later(fleet, lab, tmp_path):
    lab.add_hosts("rtx5060", 2, kind="openssh", slots=1)
    lab.start()
    side = tmp_path / "side.txt"
    client = start_fleet(fleet, lab, tmp_path, config=FAST)
    # The first attempt runs 8 s (left hanging, then thawed, it would still have seconds to go);
    # the retry elsewhere only 0.6 s.
    job_id = client.submit(_long_job(side, 40, retry_steps=3, first=tmp_path / "first")).id
    hung = _running_host(client, job_id)
    eventually(lambda: side.exists() and f"start {hung}" in side.read_text(), what="job started")
    first_attempt = client.job(job_id).attempt_list[-1].id
    assert procs.pids_with_env("FLEET_ATTEMPT_ID", first_attempt)  # the check below can see it
    t_hung = time.time()
    lab.freeze_host(hung)
    try:
        _assert_retried_after_loss(client, job_id, hung, t_hung)
        assert _health(client, hung) in {"unknown", "bad"}
    finally:
        lab.thaw_host(hung)
    # Thawed, the old attempt would finish its loop within 7 s; the health check (or its own
    # lapsed lease) must stop it first: every process of it is gone while "end" is unwritten.
    assert eventually(lambda: _health(client, hung) == "good", timeout=30, what=f"{hung} good")
    eventually(lambda: not procs.pids_with_env("FLEET_ATTEMPT_ID", first_attempt), timeout=5,
               what=f"the given-up attempt's processes on {hung} gone")
    lines = side.read_text().splitlines()
    assert f"end {hung}" not in lines, lines
    assert sum(line.startswith("end ") for line in lines) == 1


def test_drain_maintenance_and_queue_timeout(fleet, lab, tmp_path):
    a, b = lab.add_hosts("rtx5060", 2, slots=1)
    lab.start()
    client = start_fleet(fleet, lab, tmp_path, config=FAST)
    # A running job on a host being drained finishes there; new jobs go elsewhere.
    gate = tmp_path / "gate"  # runs until the test opens the gate: still running when drained
    first = client.submit({"name": "long", "resources": {"pool": "rtx"},
                           "run": f"while [ ! -e {gate} ]; do sleep 0.05; done"}).id
    busy = _running_host(client, first)
    other = b.name if busy == a.name else a.name
    drained = fleet.cli_json("hosts", "drain", busy)
    assert drained[0]["state"] == "draining"
    later = [client.submit({"name": f"n{i}", "resources": {"pool": "rtx"}, "run": "echo $FLEET_HOST"}).id
             for i in range(3)]
    for job_id in later:
        assert client.wait(job_id, 60).host == other
    assert client.job(first).state == "RUNNING"
    gate.touch()
    assert client.wait(first, 60).state == "SUCCEEDED" and client.job(first).host == busy
    assert next(h for h in client.hosts() if h.name == busy).state == "drained"

    # Maintenance on the other: no host can take the job; queue_timeout ends it with the why.
    fleet.cli("hosts", "maintenance", other)
    waiting = client.submit({"name": "w", "resources": {"pool": "rtx"}, "run": "true",
                             "queue_timeout": "2s"}).id
    job = client.wait(waiting, 30)
    assert (job.state, job.reason) == ("FAILED", "no_capacity"), job
    assert "waited 2 s" in job.message and "1 drained" in job.message and "1 in maintenance" in job.message
    assert job.attempt_list == []

    # Out of maintenance (a check decides) and undrained: both take jobs again.
    fleet.cli("hosts", "maintenance", "--off", other)
    fleet.cli("hosts", "undrain", busy)
    assert eventually(lambda: {_health(client, a.name), _health(client, b.name)} == {"good"},
                      what="both good")
    hosts_seen = {client.wait(client.submit({"name": f"m{i}", "resources": {"pool": "rtx"},
                                             "run": "sleep 0.5"}).id, 60).host for i in range(4)}
    assert hosts_seen == {a.name, b.name}


def test_a_job_that_finished_while_its_host_was_unreachable_keeps_its_result(fleet, lab, tmp_path):
    """The network drops (processes keep running) and the job finishes meanwhile. Once the
    attempt lease has run out and the host is back, fleet asks how the lost attempt ended and
    takes that result instead of running the job again."""
    (host,) = lab.add_hosts("rtx5060", 1, slots=1)
    lab.start()
    side = tmp_path / "side.txt"
    client = start_fleet(fleet, lab, tmp_path, config=FAST)
    gate = tmp_path / "gate"  # the job ends only once its host is off the network
    job_id = client.submit(_long_job(side, steps=5, gate=gate)).id
    _running_host(client, job_id)
    lab.stop_host(host.name)  # off the network only: the job goes on and ends
    gate.touch()
    eventually(lambda: f"end {host.name}" in side.read_text(), what="job ended on the host")
    eventually(lambda: client.job(job_id).state == "RETRYING", what="attempt given up on")
    lab.start_host(host.name)
    job = client.wait(job_id, 60)
    assert job.state == "SUCCEEDED", job
    (attempt,) = job.attempt_list
    assert attempt.state == "SUCCEEDED" and "came back" in attempt.message
    assert side.read_text().splitlines() == [f"start {host.name}", f"end {host.name}"]
    assert "tick 4" in b"".join(client.logs(job_id)).decode()


@pytest.mark.parametrize("kind", ["asyncssh", pytest.param("openssh", marks=requires_sshd)])
def test_a_host_never_reached_takes_no_job_until_a_check_reaches_it(fleet, lab, tmp_path, kind):
    """A new inventory whose host does not answer: before, every host showed idle/good and the
    first job spent its retries there and ended no_capacity. Now the host is unknown until a
    check (run at start, ahead of the queue) reaches it; `fleet hosts` and `fleet why` say so;
    the job waits and runs once the host answers. A gateway (fleet_jobs=false) is shown as one."""
    (down,) = lab.add_hosts("rtx5060", 1, kind=kind)
    (gateway,) = lab.add_hosts("hailo8", 1)
    lab.stop_host(down.name)
    client = start_fleet(fleet, lab, tmp_path, config=FAST, extra={gateway.name: {"fleet_jobs": False}})
    job = client.submit({"name": "first", "resources": {"pool": "rtx"}, "run": "echo ran"}).id
    hosts = eventually(lambda: {h.name: h for h in client.hosts()
                                if "unreachable" in (h.health_message or "")} or None, what="the check")
    assert hosts[down.name].state == "offline" and hosts[down.name].health in ("unknown", "bad")
    assert "cannot connect" in hosts[down.name].health_message
    listed = {h.name: h for h in client.hosts()}
    assert listed[gateway.name].state == "gateway" and listed[gateway.name].health == "-"
    assert "hailo8" not in {p.name for p in client.pools()}  # a gateway adds no slots
    table = fleet.cli("hosts").stdout
    assert "unreachable: host" in table and "runs no jobs (fleet_jobs=false)" in table
    detail = client.job(job)
    assert detail.state == "PENDING" and detail.attempts == 0  # no retries spent on it
    assert "1 unreachable" in client.why(job).summary
    lab.start_host(down.name)
    done = client.wait(job, 60)
    assert done.state == "SUCCEEDED" and done.host == down.name and len(done.attempt_list) == 1


def test_hosts_are_not_checked_yet_until_the_leader_reaches_them(tmp_path):
    """The words of a host never reached, as `fleet why` counts them (pure placement)."""
    from fleet.inventory import Host
    from fleet.models.enums import Health
    from fleet.scheduler.placement import Demand, HostView, dynamic_reason

    host = Host(name="h", pools=("p",), arch="x86_64", accelerator="cpu", slots=1)
    demand = Demand(pool=None, arch=None, accelerator=None, labels=(), slots=1, runner="shell")
    assert dynamic_reason(demand, HostView(host=host, health=Health.UNKNOWN, unchecked=True)) == "not checked yet"
    assert dynamic_reason(demand, HostView(host=host, health=Health.UNKNOWN)).startswith("unreachable")
