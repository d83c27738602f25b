"""The CLI in front of an unreachable server, and a job log that tries to drive the terminal."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import pid_alive


def test_an_unreachable_server_is_one_clear_line(fleet_home):
    proc = subprocess.run([sys.executable, "-m", "fleet", "jobs"], capture_output=True, text=True,
                          env={**os.environ, "FLEET_SERVER": "http://127.0.0.1:1", "FLEET_TOKEN": "x"},
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("fleet: cannot reach the fleet server at http://127.0.0.1:1")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_logs_show_terminal_control_sequences_instead_of_obeying_them(fleet, tmp_path):
    """The attack: a job prints OSC 52 (write the reader's clipboard), a screen clear and a
    line hidden behind a carriage return. `fleet logs` shows them as ^[...; --raw keeps them."""
    fleet.start()
    spec = tmp_path / "evil.yaml"
    spec.write_text("name: evil\nrun: printf 'a\\033]52;c;ZXZpbA==\\007b\\033[2Jc\\rhidden\\r\\nd\\tz\\n'\n")
    out = fleet.cli("submit", str(spec), "--follow")
    assert "\x1b" not in out.stdout and "^[]52;c;ZXZpbA==^Gb^[[2Jc^Mhidden\nd\tz" in out.stdout
    job_id = fleet.cli_json("jobs")["items"][0]["id"]
    shown = fleet.cli("logs", job_id).stdout
    assert shown == "a^[]52;c;ZXZpbA==^Gb^[[2Jc^Mhidden\nd\tz\n"
    raw = subprocess.run([sys.executable, "-m", "fleet", "logs", job_id, "--raw"], capture_output=True,
                         env=os.environ.copy(), timeout=60).stdout
    assert raw == b"a\x1b]52;c;ZXZpbA==\x07b\x1b[2Jc\rhidden\r\nd\tz\n"


def test_processes_that_left_the_jobs_process_group_end_with_it(fleet, tmp_path):
    """The attack: `setsid` puts a process in a session of its own, out of the job's process
    group, so TERM/KILL to the group never reached it and it outlived the job. The supervisor
    is a child subreaper: such processes are reparented to it and stopped with the job."""
    client = fleet.start()
    pidfile = tmp_path / "escaped.pid"
    job = client.submit({"name": "escape", "run": (
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' </dev/null >/dev/null 2>&1 & "
        f"while [ ! -s {pidfile} ]; do sleep 0.05; done; echo started")})
    detail = client.wait(job.id, 60)
    while detail.state not in ("SUCCEEDED", "FAILED"):
        detail = client.wait(job.id, 60)
    assert detail.state == "SUCCEEDED"
    pid = int(pidfile.read_text())
    assert not pid_alive(pid), f"process {pid} outlived its job"
