"""Artifacts and pipelines end to end (embedded default host, real server, real CLI): outputs
are collected into the controller's store by content, a job takes another job's artifact as
input, a chain runs its steps in order and stops at a failed step with the reason, and
``fleet artifacts list|get|rm`` work."""

from __future__ import annotations

import hashlib
import json

import yaml

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def test_outputs_become_artifacts_that_can_be_listed_fetched_and_removed(fleet, submit, tmp_path):
    client = fleet.start()
    job = submit({"name": "make", "outputs": ["out/*.bin", "report.txt"],
                  "run": "mkdir -p out && head -c 300000 /dev/urandom > out/model.bin && "
                         "cp out/model.bin out/copy.bin && echo done > report.txt"})
    detail = client.wait(job, timeout=60)
    assert detail.state == "SUCCEEDED", detail
    arts = {a.name: a for a in detail.artifacts}
    assert set(arts) == {"out/model.bin", "out/copy.bin", "report.txt"}
    assert arts["out/model.bin"].sha256 == arts["out/copy.bin"].sha256  # stored once by content
    assert arts["out/model.bin"].size == 300000

    listed = fleet.cli_json("artifacts", "list", "--job", job, "--json")
    assert {a["name"] for a in listed["items"]} == set(arts)
    got = fleet.cli("artifacts", "get", arts["out/model.bin"].id, "-o", str(tmp_path / "m.bin"))
    assert "m.bin" in got.stdout
    data = (tmp_path / "m.bin").read_bytes()
    assert hashlib.sha256(data).hexdigest() == arts["out/model.bin"].sha256

    fleet.cli("artifacts", "rm", arts["out/copy.bin"].id)
    left = fleet.cli_json("artifacts", "--job", job, "--json")
    assert {a["name"] for a in left["items"]} == {"out/model.bin", "report.txt"}
    # the content is still there for the other artifact that has it
    fleet.cli("artifacts", "get", arts["out/model.bin"].id, "-o", str(tmp_path / "again.bin"))
    assert (tmp_path / "again.bin").read_bytes() == data


def test_an_output_that_matches_nothing_fails_the_job_saying_which(fleet, submit):
    client = fleet.start()
    job = submit({"name": "forgot", "outputs": ["engine.plan"], "run": "echo no engine"})
    detail = client.wait(job, timeout=60)
    assert (detail.state, detail.reason) == ("FAILED", "output_missing")
    assert "engine.plan" in (detail.message or "")


def test_a_chain_runs_its_steps_in_order_passing_artifacts(fleet, tmp_path):
    fleet.start()
    model = tmp_path / "model.onnx"
    model.write_bytes(b"pretend onnx " * 100)
    chain = {
        "name": "pipe",
        "inputs": {"model": str(model)},
        "steps": [
            {"name": "compile", "outputs": ["engine.plan"],
             "run": 'sha256sum "$FLEET_INPUT_MODEL" | cut -c1-16 > engine.plan; echo compiled'},
            {"name": "bench", "inputs": {"engine": {"step": "compile"}},
             "run": 'echo "engine: $(cat "$FLEET_INPUT_ENGINE")"'},
        ],
    }
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(chain))
    out = fleet.cli("submit", str(spec), "--wait", "--json")
    details = json.loads(out.stdout)
    assert [d["step"] for d in details] == ["compile", "bench"]
    assert all(d["state"] == "SUCCEEDED" for d in details), details
    compile_id, bench_id = details[0]["id"], details[1]["id"]
    assert details[1]["after"] == compile_id and details[1]["chain"] == compile_id
    expected = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    assert fleet.cli("logs", bench_id).stdout.strip() == f"engine: {expected}"
    status = fleet.cli("status", bench_id).stdout
    assert "chain:" in status and "compile" in status and "bench" in status


def test_a_failed_step_stops_the_chain_with_the_reason(fleet, tmp_path):
    fleet.start()
    chain = {"name": "broken", "steps": [
        {"name": "compile", "outputs": ["x"], "run": "echo 'cannot parse the model' >&2; exit 3"},
        {"name": "bench", "inputs": {"e": {"step": "compile"}}, "run": "echo never"},
        {"name": "report", "run": "echo never either"},
    ]}
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(chain))
    out = fleet.cli("submit", str(spec), "--wait", "--json", check=False)
    assert out.returncode == 1
    compile_, bench, report = json.loads(out.stdout)
    assert (compile_["state"], compile_["reason"]) == ("FAILED", "exit_nonzero")
    assert (bench["state"], bench["reason"]) == ("FAILED", "dependency_failed")
    assert f"step compile (job {compile_['id']}) ended FAILED (exit_nonzero)" in bench["message"]
    assert (report["state"], report["reason"]) == ("FAILED", "dependency_failed")
    assert "step bench" in report["message"]
    assert bench["attempts"] == 0 and report["attempts"] == 0  # never ran


def test_a_job_waits_for_another_jobs_artifact_and_cancel_while_waiting(fleet, submit, tmp_path):
    client = fleet.start()
    gate = tmp_path / "gate"
    first = submit({"name": "slow", "outputs": ["a.txt"],
                    "run": f"while [ ! -e {gate} ]; do sleep 0.05; done; echo payload > a.txt"})
    second = submit({"name": "user", "inputs": {"a": {"job": first, "artifact": "a.txt"}},
                     "run": 'cat "$FLEET_INPUT_A"'})
    third = submit({"name": "dropped", "inputs": {"a": {"job": first}}, "run": "true"})
    detail = client.job(second)
    assert detail.state == "PENDING" and detail.after == first
    assert f"waiting for job {first}" in (detail.message or "")
    client.cancel(third)
    assert client.job(third).state == "CANCELLED"
    gate.touch()
    assert client.wait(second, timeout=60).state == "SUCCEEDED"
    assert fleet.cli("logs", second).stdout == "payload\n"


def test_chain_and_artifact_input_errors_name_the_field(fleet, submit, tmp_path):
    fleet.start()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "c", "steps": [
        {"name": "a", "run": "true"},
        {"name": "b", "inputs": {"x": {"step": "nope"}}, "run": "true"},
        {"run": "true"},
    ]}))
    out = fleet.cli("submit", str(bad), check=False)
    assert out.returncode == 2
    assert "steps[1].inputs: no earlier step named 'nope'" in out.stderr
    assert "steps[2].name: required" in out.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"name": "m", "inputs": {"x": {"job": "jnosuchjob000"}},
                                       "run": "true"}))
    out = fleet.cli("submit", str(missing), check=False)
    assert out.returncode != 0 and "no job jnosuchjob000" in out.stderr


def test_artifact_retention_removes_old_artifacts_and_their_content(tmp_path):
    """The leader's retention pass (fleet.controller.expire_artifacts) on a real store: old
    artifacts go, content shared with a newer one stays, one a waiting job needs stays."""
    import time

    from fleet.blobs import BlobStore
    from fleet.controller import expire_artifacts
    from fleet.db import Database
    from fleet.models.spec import JobSpec
    from fleet.store import Store

    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    store = Store(db)
    blobs = BlobStore(tmp_path / "blobs")

    def blob(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        blobs.path(sha).parent.mkdir(parents=True, exist_ok=True)
        blobs.path(sha).write_bytes(data)
        return sha

    maker, needed, fresh = store.create_jobs(
        [(JobSpec(name=n, run="true"), "*/*/*") for n in ("old", "needed", "fresh")], "u")
    waiter, = store.create_jobs([(JobSpec(name="w", run="true"), "*/*/*")], "u",
                                [{"after_id": needed.id}])
    old_sha, shared_sha, kept_sha = blob(b"old"), blob(b"shared"), blob(b"kept")
    long_ago = time.time() - 100 * 86400
    rows = [("a0old", maker.id, old_sha, long_ago), ("a1shared-old", maker.id, shared_sha, long_ago),
            ("a2shared-new", fresh.id, shared_sha, time.time()), ("a3needed", needed.id, kept_sha, long_ago)]
    from sqlalchemy import insert

    from fleet.models.tables import Artifact
    with db.write() as conn:
        conn.execute(insert(Artifact), [dict(id=i, name=i, kind="file", sha256=s, size=1, job_id=j,
                                             attempt_id="a", user="u", host="h", device_class="c",
                                             created_at=at) for i, j, s, at in rows])

    class Sched:  # what expire_artifacts uses of the scheduler
        pass
    sched = Sched()
    sched.store, sched.blobs = store, blobs
    assert expire_artifacts(sched, time.time() - 90 * 86400) == 2  # type: ignore[arg-type]
    left = {a.id for a in store.list_artifacts(None, limit=10)}
    assert left == {"a2shared-new", "a3needed"}
    assert not blobs.has(old_sha) and blobs.has(shared_sha) and blobs.has(kept_sha)
    assert waiter.after == needed.id
    db.dispose()
