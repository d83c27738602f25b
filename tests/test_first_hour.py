"""A newcomer's first hour (issue 10): every rough error path they hit, made clear."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from fleet.errors import InventoryError
from fleet.inventory import load_inventory
from fleet.scheduler.placement import Demand, HostView, dynamic_reason
from tests.helpers import eventually

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=timeout)


@pytest.mark.long
def test_a_failed_local_start_shows_this_starts_error_only(fleet_home, tmp_path):
    first, second = tmp_path / "first.ini", tmp_path / "second.ini"
    first.write_text("h1 fleet_arch=sparc\n")
    second.write_text("h2 fleet_slots=many\n")
    one = run("--inventory", str(first), "jobs")
    assert one.returncode == 1 and "variable fleet_arch is 'sparc'" in one.stderr
    two = run("--inventory", str(second), "jobs")
    assert two.returncode == 1 and "variable fleet_slots must be an integer" in two.stderr
    assert "sparc" not in two.stderr  # the earlier failure stays in the log, not in this error
    assert "Traceback" not in one.stderr + two.stderr


def test_spec_file_errors_exit_2_with_a_clear_line(fleet, tmp_path):
    fleet.start()
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n  \n")
    param = tmp_path / "param.yaml"
    param.write_text("name: p\nkind: benchmark\nrunner: onnxruntime\nparams: {warmups: 3, threads: many}\n"
                     f"inputs: {{model: {REPO / 'examples' / 'models' / 'tinycnn.onnx'}}}\n")
    cases = [
        (empty, "the file is empty"),
        (tmp_path / "missing.yaml", "no such file"),
        (tmp_path, "is a directory"),
        (param, "params.warmups: runner onnxruntime takes no param 'warmups' (it takes: batch,"),
        (param, "params.threads: must be int, not str"),
    ]
    for path, message in cases:
        out = fleet.cli("submit", str(path), check=False)
        assert out.returncode == 2 and message in out.stderr, (path, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_unknown_states_list_the_states(fleet):
    fleet.start()
    out = fleet.cli("jobs", "--state", "RUNNING,BOGUS", check=False)
    assert out.returncode == 2 and "unknown state 'BOGUS'" in out.stderr and "PENDING" in out.stderr
    assert len(out.stderr) < 500
    import httpx
    resp = httpx.get(f"{fleet.info.url}/jobs", params={"state": "bogus"},
                     headers={"Authorization": f"Bearer {fleet.info.token}"})
    detail = resp.json()["detail"]
    assert resp.status_code == 422 and "unknown state 'bogus'; one of PENDING" in detail and len(detail) < 400


def test_artifacts_by_prefix_and_a_bad_destination_is_one_line(fleet, tmp_path):
    client = fleet.start()
    job = client.submit({"name": "out", "run": "echo hi > x.txt", "outputs": ["x.txt"]})
    detail = client.wait(job.id, 60)
    assert detail.state == "SUCCEEDED"
    art = client.artifacts(job=job.id).items[0]
    assert art.id.startswith("f") and not detail.attempt_list[0].id.startswith("f")
    got = fleet.cli("artifacts", "get", art.id[:8], "-o", str(tmp_path / "x.txt"))
    assert (tmp_path / "x.txt").read_text() == "hi\n" and "x.txt" in got.stdout
    bad = fleet.cli("artifacts", "get", art.id[:8], "-o", "/nonexistent/dir/x", check=False)
    assert bad.returncode == 1 and bad.stderr.strip() == \
        "fleet: cannot write /nonexistent/dir/x: No such file or directory"


def test_logs_of_a_job_that_has_not_started_say_so(fleet):
    client = fleet.start()
    blocker = client.submit({"name": "blocker", "run": "sleep 30"})
    eventually(lambda: client.job(blocker.id).state == "RUNNING", what="the blocker to run")
    waiting = client.submit({"name": "waiting", "run": "true"})
    out = fleet.cli("logs", waiting.id)
    assert out.stdout == "" and f"job {waiting.id} has not started yet (PENDING)" in out.stderr
    client.cancel(blocker.id)


def test_ctrl_c_while_waiting_says_the_job_goes_on(fleet, tmp_path):
    client = fleet.start()
    spec = tmp_path / "long.yaml"
    spec.write_text("name: long\nrun: 'sleep 30'\n")
    # As from a terminal: SIGINT not ignored (a suite started in the background by a shell
    # without job control inherits it ignored, and so would the CLI: ^C would do nothing).
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "submit", str(spec), "--wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    submitted = proc.stderr.readline()  # written just before it starts waiting
    assert "submitted to queue" in submitted, submitted
    eventually(lambda: any(j.state == "RUNNING" for j in client.jobs().items), what="the job to run")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    job = client.jobs().items[0]
    assert proc.returncode == 130, (proc.returncode, out, submitted + err)
    assert f"stopped waiting; the job goes on (fleet logs -f {job.id} to follow" in err
    assert f"fleet cancel {job.id} to stop" in err and "Traceback" not in err
    assert client.job(job.id).state == "RUNNING"
    client.cancel(job.id)


def test_inventory_errors_name_types_and_yaml_problems_as_a_user_reads_them(tmp_path):
    ini = tmp_path / "labels.ini"
    ini.write_text("h1 ansible_connection=local fleet_labels=notamapping\n")
    with pytest.raises(InventoryError) as err:
        load_inventory(str(ini), tmp_path)
    assert "fleet_labels must be a mapping (e.g. {jetpack: '6.2'}), not the text 'notamapping'" in str(err.value)
    assert "Tagged" not in str(err.value)
    broken = tmp_path / "lab.yml"
    broken.write_text("all:\n  hosts:\n    h1: {fleet_arch: x86_64\n")
    with pytest.raises(InventoryError) as err:
        load_inventory(str(broken), tmp_path)
    assert "not valid YAML" in str(err.value) and "line 3" in str(err.value)
    assert "Invalid host pattern" not in str(err.value)


def test_one_word_for_a_drained_host_everywhere():
    from fleet.inventory import Host

    host = Host(name="h", pools=("p",), arch="x86_64", accelerator="cpu", slots=2)
    demand = Demand(pool=None, arch=None, accelerator=None, labels=(), slots=1, runner="shell")
    assert dynamic_reason(demand, HostView(host=host, drained=True, used_slots=1)) == "draining"
    assert dynamic_reason(demand, HostView(host=host, drained=True, used_slots=0)) == "drained"


def test_every_command_has_help_without_markup():
    from fleet.cli.main import cli

    def walk(command: click.Command, path: str) -> None:
        text = command.help or ""
        assert text.strip(), f"`{path}` has no help text"
        assert "``" not in text and ":class:" not in text, f"`{path}` help shows markup"
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{path} {name}")

    walk(cli, "fleet")
