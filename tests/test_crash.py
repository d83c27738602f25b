"""Controller crash and restart: kill -9 of ``fleet serve`` while jobs run, then a restart.

The proof is a side effect on the host: each job appends its id to a file when it starts, so a
job run twice leaves two lines. Logs are numbered lines printed over time, so a gap or a
duplicate after the reattach shows.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import eventually, pid_alive

LINES = 40


def _inventory(tmp_path: Path, slots: int) -> Path:
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"localhost ansible_connection=local fleet_slots={slots}\n")
    return inv


def _job(name: str, side: Path, code: int, gate: Path | None = None) -> dict:
    """Numbered lines over time; with ``gate``, the second half waits until that file exists
    (the test decides when the job may end, however slow the machine is)."""
    wait = f'if [ $i -eq {LINES // 2} ]; then while [ ! -e {gate} ]; do sleep 0.02; done; fi; ' if gate else ""
    script = (
        f'echo "$FLEET_JOB_ID" >> {side}; i=0; '
        f'while [ $i -lt {LINES} ]; do echo "line $i"; i=$((i+1)); {wait}sleep 0.05; done; exit {code}'
    )
    return {"name": name, "run": script}


def _wait_running(client, ids: list[str], min_log: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [client.job(j) for j in ids]
        if all(j.state == "RUNNING" for j in jobs) and all(
            len(b''.join(client.logs(j)).split(b'\n')) >= min_log for j in ids
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"jobs did not all run: {[(j, client.job(j).state) for j in ids]}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_controller_death_then_restart_reattaches_without_rerun_gap_or_duplicate(fleet, tmp_path, sig):
    """SIGKILL: nothing runs in the controller. SIGTERM: the graceful path, which must leave
    the attempts detached too. Either way the next controller finishes the story."""
    side, gate = tmp_path / "side-effects.txt", tmp_path / "gate"
    client = fleet.start(_inventory(tmp_path, slots=3))
    running = [client.submit(_job(f"r{i}", side, code, gate)).id for i, code in enumerate((0, 0, 7))]
    queued = [client.submit(_job(f"q{i}", side, 0, gate)).id for i in range(3)]
    _wait_running(client, running, min_log=LINES // 2)  # held at the gate: none can end yet
    assert all(client.job(j).state == "PENDING" for j in queued)

    pid = fleet.info.pid
    os.kill(pid, sig)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(pid)
    fleet.client.close()
    assert sorted(side.read_text().split()) == sorted(running)  # the queued jobs did not start on the way down
    gate.touch()
    time.sleep(0.8)  # the jobs keep printing (the failing one ends) while no controller listens

    client = fleet.start(_inventory(tmp_path, slots=3))
    for job_id in running + queued:
        assert client.wait(job_id, 60).state in {"SUCCEEDED", "FAILED"}, fleet.server_log()

    expected = "".join(f"line {i}\n" for i in range(LINES))
    for job_id in running + queued:
        job = client.job(job_id)
        assert b''.join(client.logs(job_id)).decode() == expected, job_id
        assert len(job.attempt_list) == 1, job.attempt_list
    states = {j: client.job(j) for j in running}
    assert [states[j].state for j in running] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert states[running[2]].attempt_list[0].exit_code == 7
    assert states[running[2]].reason == "exit_nonzero"
    # One line per job: nothing ran twice, everything ran once.
    lines = side.read_text().split()
    assert sorted(lines) == sorted(running + queued)
    assert "Traceback" not in fleet.server_log()


def test_a_job_out_of_touch_longer_than_its_lease_stops_itself_and_is_retried(fleet, tmp_path):
    """The attempt lease: a controller gone longer than ``attempt_lease`` must not find its job
    still running when a retry could already run elsewhere; the job stops itself."""
    side = tmp_path / "side-effects.txt"
    inv = _inventory(tmp_path, slots=1)
    client = fleet.start(inv, config={"attempt_lease": 1.5})
    job_id = client.submit({"name": "leased", "run": f'echo "$FLEET_ATTEMPT_ID" >> {side}; sleep 30'}).id
    _wait_running(client, [job_id], min_log=0)
    os.kill(fleet.info.pid, signal.SIGKILL)
    fleet.client.close()
    time.sleep(3.0)  # past the lease: the job's supervisor stops it
    client = fleet.start(inv, config={"attempt_lease": 1.5})
    job = eventually(lambda: (j := client.job(job_id)).attempt_list[0].state != "RUNNING" and j,
                     what="first attempt judged")
    first = job.attempt_list[0]
    assert (first.state, first.reason) == ("FAILED", "host_lost"), first
    assert "attempt lease" in first.message
    assert "no word from the controller" in b"".join(client.logs(job_id, attempt=1)).decode()
    # Retried (the first attempt is known to be stopped), and cancelled here to end the test.
    eventually(lambda: len(client.job(job_id).attempt_list) == 2, what="a second attempt")
    client.cancel(job_id)
    assert client.wait(job_id, 30).state == "CANCELLED"


def test_a_job_whose_attempt_directory_vanished_stops_itself(fleet, tmp_path):
    """The lease file gone (its attempt directory removed while the controller was away: a wiped
    workdir, a cleaned /tmp) is a lease nobody can renew any more: the job stops, it does not
    run on forever."""
    work = tmp_path / "work"
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"localhost ansible_connection=local fleet_workdir={work}\n")
    pidfile = tmp_path / "pid"
    client = fleet.start(inv, config={"attempt_lease": 1.5})
    job_id = client.submit({"name": "orphan", "run": f"echo $$ > {pidfile}; exec sleep 300"}).id
    _wait_running(client, [job_id], min_log=0)
    pid = int(eventually(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the job's pid"))
    os.kill(fleet.info.pid, signal.SIGKILL)
    fleet.client.close()

    def wiped() -> bool:  # the agent may still write a file or two there as it goes away
        shutil.rmtree(work, ignore_errors=True)
        return not work.exists()

    eventually(wiped, timeout=10, what="the workdir removed")
    eventually(lambda: not pid_alive(pid), timeout=20, what="the orphaned job stopped")
