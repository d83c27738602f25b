"""End to end on the embedded default (this machine as the only host), through the real
server process, the API and the ``fleet`` command."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fleet.client.sync import Client
from fleet.errors import NotFound
from tests.helpers import pid_alive

REPO = Path(__file__).resolve().parent.parent


def wait_for_file(path: Path, client: Client, job_id: str) -> None:
    """Block until the job created ``path`` (it is a side effect of the job itself)."""
    for _ in range(600):
        if path.exists():
            return
        detail = client.wait(job_id, timeout=0.1)
        assert detail.state not in {"FAILED", "SUCCEEDED", "TIMED_OUT", "CANCELLED"}, detail
    raise AssertionError(f"{path} never appeared")


def test_shell_job_sees_its_ids_and_logs_follow(fleet, tmp_path):
    fleet.start()
    spec = tmp_path / "hello.yaml"
    spec.write_text(
        "name: hello\nrun: |\n  echo job=$FLEET_JOB_ID attempt=$FLEET_ATTEMPT_ID host=$FLEET_HOST\n"
        "  echo to-stderr >&2\n  exit 0\n"
    )
    out = fleet.cli("submit", str(spec), "--follow")
    first = out.stdout.splitlines()[0]
    assert first.startswith("job=j") and "host=localhost" in first and "attempt=a" in first
    assert "to-stderr" in out.stdout
    job_id = first.split()[0].split("=", 1)[1]
    detail = fleet.cli_json("status", job_id)
    assert detail["id"] == job_id and detail["state"] == "SUCCEEDED" and detail["reason"] == "succeeded"
    assert detail["attempt_list"][0]["id"] == first.split()[1].split("=", 1)[1]
    assert detail["host"] == "localhost" and detail["user"]
    logs = fleet.cli("logs", job_id).stdout
    assert logs.startswith(f"job={job_id}")


def test_failed_job_exit_code_and_reason(fleet, tmp_path):
    fleet.start()
    spec = tmp_path / "fail.yaml"
    spec.write_text("name: fail\nrun: echo boom; exit 7\n")
    proc = fleet.cli("submit", str(spec), "--wait", "--json", check=False)
    assert proc.returncode == 1
    detail = json.loads(proc.stdout)
    assert detail["state"] == "FAILED" and detail["reason"] == "exit_nonzero"
    assert detail["attempt_list"][0]["exit_code"] == 7 and detail["attempts"] == 1  # no retry


def test_timeout_kills_the_whole_process_group(fleet, submit, tmp_path):
    client = fleet.start()
    pidfile = tmp_path / "child.pid"
    job = submit({"name": "slow", "run": f"sleep 300 & echo $! > {pidfile}; wait", "timeout": 1})
    detail = client.wait(job, timeout=60)
    assert detail.state == "TIMED_OUT" and detail.reason == "timed_out"
    child = int(pidfile.read_text())
    assert not pid_alive(child), "the job's background child survived the timeout"
    assert "timeout reached" in b"".join(client.logs(job)).decode()


def test_cancel_running_job_and_queued_job(fleet, submit, tmp_path):
    client = fleet.start()
    pidfile = tmp_path / "child.pid"
    running = submit({"name": "busy", "run": f"sleep 300 & echo $! > {pidfile}; wait"})
    queued = submit({"name": "behind", "run": "echo never"})
    wait_for_file(pidfile, client, running)
    why = fleet.cli("why", queued).stdout
    assert "1 host in the inventory: 1 busy" in why and "localhost: busy" in why
    out = fleet.cli_json("cancel", queued, running)
    assert {r["id"]: r["state"] for r in out} == {queued: "CANCELLED", running: "CANCELLING"}
    detail = client.wait(running, timeout=60)
    assert detail.state == "CANCELLED" and detail.reason == "cancelled_by_user"
    assert not pid_alive(int(pidfile.read_text()))
    assert client.job(queued).attempts == 0


def test_logs_stream_while_the_job_runs(fleet, submit, tmp_path):
    client = fleet.start()
    gate = tmp_path / "gate"
    job = submit({"name": "stream", "run": f"echo first; while [ ! -f {gate} ]; do sleep 0.02; done; echo second"})
    stream = client.logs(job, follow=True)
    received = b""
    for chunk in stream:
        received += chunk
        if b"first\n" in received:
            break
    assert b"second" not in received  # the job is still waiting on the gate
    gate.touch()
    for chunk in stream:
        received += chunk
    assert received == b"first\nsecond\n"
    assert client.job(job).state == "SUCCEEDED"


def test_quickstart_benchmark_with_real_onnxruntime(fleet):
    fleet.start()
    proc = fleet.cli("submit", str(REPO / "examples" / "quickstart.yaml"), "--wait", "--json")
    detail = json.loads(proc.stdout)
    assert detail["state"] == "SUCCEEDED", detail
    record = detail["result"]
    lat = record["metrics"]["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p99"] <= lat["max"]
    assert record["metrics"]["throughput_per_s"] > 0
    assert "CPUExecutionProvider" in record["environment"]["providers_applied"]
    assert record["target"]["host"] == "localhost" and record["job_id"] == detail["id"]
    assert len(record["comparison_key"]) == 16
    results = fleet.cli_json("results")
    assert results["items"][0]["job_id"] == detail["id"]


def test_users_see_only_their_own_jobs(fleet, submit, shared_local):
    admin = fleet.start(shared_local)
    bob_token = fleet.cli_json("users", "add", "bob")["token"]
    bob = Client(fleet.info.url, bob_token)
    mine = submit({"name": "admins", "run": "true"})
    bobs = submit({"name": "bobs", "run": "true"}, client=bob)
    assert [j.id for j in bob.jobs().items] == [bobs]
    with pytest.raises(NotFound):
        bob.job(mine)
    with pytest.raises(NotFound):
        bob.cancel(mine)
    with pytest.raises(NotFound):
        list(bob.logs(mine))
    assert {j.id for j in admin.jobs().items} >= {mine, bobs}
    assert admin.job(bobs).user == "bob"
    bob.close()


def test_api_needs_a_token_and_stores_only_hashes(fleet):
    client = fleet.start()
    import httpx
    assert httpx.get(f"{fleet.info.url}/health").status_code == 200
    assert httpx.get(f"{fleet.info.url}/jobs").status_code == 401
    assert httpx.get(f"{fleet.info.url}/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    token_file = fleet.settings.token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    db = (fleet.home / "fleet.db").read_bytes() + (fleet.home / "fleet.db-wal").read_bytes() if (fleet.home / "fleet.db-wal").exists() else (fleet.home / "fleet.db").read_bytes()
    assert token.encode() not in db
    schema = httpx.get(f"{fleet.info.url}/openapi.json").json()
    assert "/jobs" in schema["paths"] and "/jobs/{job_id}/why" in schema["paths"]
    assert client.whoami().admin


def test_bad_specs_are_clear_errors(fleet, tmp_path):
    fleet.start()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrun: true\nresourcez: {}\n")
    proc = fleet.cli("submit", str(bad), check=False)
    assert proc.returncode == 2 and "resourcez: unknown field" in proc.stderr and str(bad) in proc.stderr
    bad.write_text("name: x\nrun: \"true\"\nresources: {pool: jetsn}\n")
    proc = fleet.cli("submit", str(bad), check=False)
    assert proc.returncode == 2 and "no pool named 'jetsn'" in proc.stderr and "local" in proc.stderr
    bad.write_text("name: x\nrunner: onnxruntime\nkind: benchmark\ninputs: {model: missing.onnx}\n")
    proc = fleet.cli("submit", str(bad), check=False)
    assert proc.returncode == 2 and "inputs.model" in proc.stderr and "missing.onnx" in proc.stderr


def test_server_status_start_stop(fleet):
    fleet.start()
    status = fleet.cli_json("server", "status")
    assert status["running"] and status["pid"] == fleet.info.pid and status["url"] == fleet.info.url
    hosts = fleet.cli_json("hosts")
    assert [h["name"] for h in hosts] == ["localhost"]
    assert hosts[0]["accelerator"] == "cpu" and hosts[0]["target"] == "local"
    pools = fleet.cli_json("pools")
    assert pools[0]["name"] == "local" and pools[0]["hosts"] == 1
    stopped = fleet.cli_json("server", "stop")
    assert stopped["stopped"] and not pid_alive(fleet.info.pid)
    assert fleet.cli("server", "status", check=False).returncode == 3


def test_restart_keeps_history_and_reuses_the_installed_agent(fleet):
    client = fleet.start()
    first = client.submit({"name": "one", "run": "echo one"}).id
    assert client.wait(first, 60).state == "SUCCEEDED"
    fleet.stop()
    assert not fleet.settings.server_file.exists()  # SIGTERM ran the graceful shutdown
    client = fleet.start()
    second = client.submit({"name": "two", "run": "echo two"}).id
    assert client.wait(second, 60).state == "SUCCEEDED", fleet.server_log()
    assert [j.id for j in client.jobs().items] == [second, first]
    assert "Traceback" not in fleet.server_log()
