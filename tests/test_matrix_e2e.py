"""Benchmark matrices end to end (embedded default host, real server, real CLI): a team's own
benchmark script reports through $FLEET_RESULT, a matrix runs it per point with repeats, and
when one point's stand-in tool becomes 10% slower from one night on, the report flags exactly
that point, from that night, and nothing else (JSON, JUnit, exit status)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
import yaml

from tests.helpers import eventually

# A benchmark script of the team's own: latency = base x the model's slowdown factor (a file the
# test changes between nights), 1% noise; it declares a custom metric's direction.
BENCH = r"""
import json, os, random
model = os.environ["FLEET_MATRIX_MODEL"]
factor = float(open(os.environ["FACTORS"] + "/" + model).read())
base = {"a": 4.0, "b": 9.0}[model]
lat = base * factor * (1 + random.gauss(0, 0.01))
json.dump({"tool": {"name": "mybench", "version": "1.2.0"},
           "model": {"name": model},
           "metrics": {"latency_ms": {"median": lat, "mean": lat},
                       "frames_dropped": {"mean": 0.0, "direction": "lower"},
                       "widgets": 3.0}},
          open(os.environ["FLEET_RESULT"], "w"))
"""


class Hook:
    """A local HTTP server that records the bodies POSTed to it (a Slack-like webhook)."""

    def __init__(self) -> None:
        import http.server
        import threading

        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.long
def test_a_matrix_flags_exactly_the_point_that_got_slower_from_that_night(fleet, tmp_path):
    fleet.start(config={"webhook_allow_private": True})  # the test's webhook is on loopback
    hook = Hook()
    factors = tmp_path / "factors"
    factors.mkdir()
    for model in ("a", "b"):
        (factors / model).write_text("1.0")
    (tmp_path / "bench.py").write_text(BENCH)
    matrix = {"name": "nightly", "axes": {"model": ["a", "b"]}, "repeat": 5,
              "job": {"run": f"FACTORS={factors} python3 {tmp_path / 'bench.py'}",
                      "resources": {"accelerator": "cpu"}},
              "notify": {"webhook": hook.url}}
    mfile = tmp_path / "nightly.yml"
    mfile.write_text(yaml.safe_dump(matrix))

    runs = []
    for night in range(4):
        if night == 3:
            (factors / "b").write_text("1.10")  # the stand-in tool of point b: 10% slower
        proc = fleet.cli("matrix", "run", str(mfile), "--wait", "--json", check=False, timeout=300)
        report = json.loads(proc.stdout)
        runs.append(report["id"])
        assert report["progress"]["done"] == 2, report
        if night < 3:
            assert proc.returncode == 0, proc.stdout[-3000:]
        else:
            assert proc.returncode == 1, proc.stdout[-3000:]  # a regression
    first = report  # the last night's report
    verdicts = {p["values"]["model"]: p for p in first["points"]}
    assert verdicts["b"]["verdict"] == "regression", verdicts["b"]
    assert verdicts["a"]["verdict"] == "unchanged", verdicts["a"]
    lat = verdicts["b"]["metrics"]["latency_ms"]
    assert lat["status"] == "regression" and lat["first_run"] == runs[3]
    assert 7 < lat["change_pct"] < 13 and lat["baseline_runs"] == runs[:3]
    assert first["summary"] == {"regression": 1, "improvement": 0, "invalid": 0, "missing": 0,
                                "not_enough_samples": 0, "unchanged": 1}
    # a declared custom metric is judged; one of unknown direction is skipped, saying why
    assert verdicts["a"]["metrics"]["frames_dropped"]["direction"] == "lower"
    assert "direction unknown" in verdicts["a"]["metrics"]["widgets"]["reason"]

    # the first night: not enough history to judge, said so; the series is new
    night1 = json.loads(fleet.cli("matrix", "report", runs[0], "--format", "json").stdout)
    assert night1["summary"]["not_enough_samples"] == 2
    assert any("new series" in n for p in night1["points"] for n in p["notes"])

    junit = fleet.cli("matrix", "report", runs[3], "--format", "junit", "-o", str(tmp_path / "r.xml"))
    assert "wrote" in junit.stderr
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["model=b"]

    page = tmp_path / "report.html"
    fleet.cli("matrix", "report", runs[3], "--format", "html", "-o", str(page))
    text = page.read_text()
    assert text.startswith("<!doctype html>") and text.count("<svg") == 4  # 2 points x 2 judged metrics
    assert 'id="p1"' in text and "model=b" in text and "regression from here" in text
    # self-contained: nothing fetched (an SVG's xmlns is a name, not a request)
    assert re.findall(r'(?:src|href)\s*=\s*"(?!#)', text) == [] and "<script" not in text
    listed = fleet.cli_json("matrix", "list")
    assert [r["id"] for r in listed] == runs[::-1] and all(r["state"] == "DONE" for r in listed)
    status = fleet.cli_json("matrix", "status", runs[3])
    assert status["progress"] == {"done": 2, "failed": 0, "running": 0, "waiting": 0, "total": 2}
    assert all(len(p["jobs"]) == 5 for p in status["points"])
    # the jobs ran at the matrix's priority, below a plain job's
    job = fleet.client.job(status["points"][0]["jobs"][0])
    assert json.loads(json.dumps(job.model_dump()))["priority"] == 300
    # the webhook heard of the regression night only, with the regression in its body
    assert len(hook.bodies) == 1 and "1 regression" in hook.bodies[0]["text"]
    assert "model=b: latency_ms" in json.dumps(hook.bodies[0]["blocks"])

    open_ = fleet.cli_json("regressions")
    assert [(r["point"], r["metric"], r["first_run"]) for r in open_] == [({"model": "b"}, "latency_ms", runs[3])]
    assert 7 < open_[0]["change_pct"] < 13 and open_[0]["ci_pct"][0] > 0
    # the next night b is as slow: the change was reported, it is the new baseline, not news
    fifth = json.loads(fleet.cli("matrix", "run", str(mfile), "--wait", "--json").stdout)
    v5 = {p["values"]["model"]: p for p in fifth["points"]}
    assert v5["b"]["metrics"]["latency_ms"]["status"] in ("unchanged", "not_enough_samples")
    assert v5["b"]["metrics"]["latency_ms"]["baseline_runs"] in ([runs[3]], [])
    assert fleet.cli_json("regressions")[0]["first_run"] == runs[3]
    # fixed: the night after, an improvement closes it
    (factors / "b").write_text("1.0")
    fleet.cli("matrix", "run", str(mfile), "--wait", "--json", check=False)
    assert fleet.cli_json("regressions") == []
    assert len(hook.bodies) == 1


def test_a_bad_matrix_file_names_the_field_and_nothing_is_queued(fleet, tmp_path):
    fleet.start()
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"name": "m", "axes": {"model": ["a"]},
                                   "job": {"run": "echo ${{ matrix.precision }}"}}))
    proc = fleet.cli("matrix", "run", str(bad), check=False)
    assert proc.returncode != 0
    assert "bad.yml" in proc.stderr and "job.run" in proc.stderr and "precision" in proc.stderr
    # a template the server refuses (a job field) is named by its point
    worse = tmp_path / "worse.yml"
    worse.write_text(yaml.safe_dump({"name": "m", "axes": {"model": ["a", "b"]},
                                     "job": {"run": "true", "priority": "${{ matrix.model }}"}}))
    proc = fleet.cli("matrix", "run", str(worse), check=False)
    assert proc.returncode != 0 and "points[0] (model=a).priority" in proc.stderr, proc.stderr
    assert fleet.cli_json("matrix", "list") == []
    assert fleet.client.jobs().items == []


def test_a_users_matrix_runs_and_their_history_are_theirs(fleet, tmp_path, shared_local):
    """The attacks: bob reads alice's run (status, report), lists it, names her uploaded model
    in his matrix's uploads, and runs a matrix of the same name to get her numbers as his
    baseline."""
    from fleet.client import calls
    from fleet.errors import ApiError, NotFound
    from tests.conftest import add_user

    fleet.start(shared_local)
    _, alice = add_user(fleet, "alice")
    _, bob = add_user(fleet, "bob")
    model = tmp_path / "model.bin"
    model.write_bytes(b"alice's model\n")
    sha, size = alice.upload(model)
    ref = {"kind": "file", "filename": "model.bin", "files": {"model.bin": {"sha256": sha, "size": size}}}
    m = {"name": "nightly", "axes": {"model": ["m"]}, "repeat": 3,
         "job": {"run": 'python3 -c \'import json,os; json.dump({"metrics": {"latency_ms": {"median": 5.0}}}, '
                        'open(os.environ["FLEET_RESULT"], "w"))\'',
                 "inputs": {"model": "model.bin"}}}
    run = alice.call(calls.matrix_run(m, {"model.bin": ref}, "a.yml"))
    alice.wait_all([j for p in alice.call(calls.matrix_status(run["id"]))["points"] for j in p["jobs"]])
    theirs = json.loads(alice.call(calls.matrix_report(run["id"])))["points"][0]
    assert theirs["metrics"]["latency_ms"]["samples"] == [5.0] * 3, theirs
    for c in (calls.matrix_status(run["id"]), calls.matrix_report(run["id"])):
        with pytest.raises(NotFound):
            bob.call(c)
    assert bob.call(calls.matrix_runs()) == []
    with pytest.raises(ApiError) as err:
        bob.call(calls.matrix_run(m, {"model.bin": ref}, "b.yml"))
    assert err.value.status == 422 and "inputs.model" in str(err.value) and "not uploaded" in str(err.value)
    # bob's own run of a matrix with the same name and points: none of alice's results is his
    m["job"]["inputs"] = {}
    mine = bob.call(calls.matrix_run(m, {}, "b.yml"))
    bob.wait_all([j for p in bob.call(calls.matrix_status(mine["id"]))["points"] for j in p["jobs"]])
    report = json.loads(bob.call(calls.matrix_report(mine["id"])))
    lat = report["points"][0]["metrics"]["latency_ms"]
    assert lat["samples"] == [5.0] * 3 and lat["status"] == "not_enough_samples"
    assert any(n.startswith("new series") for n in report["points"][0]["notes"])  # not alice's
    # schedule names are each user's: bob's "nightly" neither sees, takes nor removes alice's
    m["schedule"] = "0 2 * * *"
    alice.call(calls.matrix_schedule(m, {}, "a.yml"))
    bob.call(calls.matrix_schedule(m, {}, "b.yml"))
    assert [(r["user"], r["name"]) for r in bob.call(calls.matrix_schedules())] == [("bob", "nightly")]
    bob.call(calls.matrix_unschedule("nightly"))
    with pytest.raises(NotFound):
        bob.call(calls.matrix_unschedule("nightly"))
    assert [(r["user"], r["name"]) for r in alice.call(calls.matrix_schedules())] == [("alice", "nightly")]
    # a schedule keeps only the uploads its jobs use: naming alice's blob pins nothing
    bob.call(calls.matrix_schedule(m, {"unused.bin": ref}, "b.yml"))
    import sqlite3

    (kept,) = sqlite3.connect(fleet.home / "fleet.db").execute(
        "SELECT uploads_json FROM matrix_schedules WHERE user = 'bob'").fetchone()
    assert sha not in kept and json.loads(kept) == {}
    rows = fleet.cli_json("matrix", "schedules")  # the admin sees both
    assert sorted(r["user"] for r in rows) == ["alice", "bob"]
    for c in (alice, bob):
        c.close()


def test_a_schedule_runs_a_missed_night_once_and_unschedule_stops_it(fleet, tmp_path):
    import sqlite3
    import time

    fleet.start(config={"matrix_interval": 0.2})
    m = {"name": "sched", "axes": {"model": ["a"]}, "repeat": 2, "schedule": "0 2 * * *",
         "job": {"run": "true"}}
    mfile = tmp_path / "sched.yml"
    mfile.write_text(yaml.safe_dump(m))
    out = fleet.cli_json("matrix", "schedule", str(mfile))
    assert out["name"] == "sched" and out["cron"] == "0 2 * * *" and out["next"]
    time.sleep(0.5)  # a few of the keeper's looks: a schedule made now waits for its next time
    assert fleet.cli_json("matrix", "list") == []
    # the controller was down for three nights: last fired four days ago
    db = sqlite3.connect(fleet.home / "fleet.db")
    db.execute("UPDATE matrix_schedules SET last_fired = ?", (time.time() - 4 * 86400,))
    db.commit()
    runs = eventually(what="the scheduled run", timeout=60, predicate=lambda: fleet.cli_json("matrix", "list"))
    assert len(runs) == 1 and runs[0]["trigger"] == "schedule"
    eventually(what="its end", timeout=60, predicate=lambda: fleet.cli_json("matrix", "status", runs[0]["id"])["state"] == "DONE")
    assert len(fleet.cli_json("matrix", "list")) == 1  # once, not three times
    (row,) = fleet.cli_json("matrix", "schedules")
    assert row["last_run"] == runs[0]["id"] and row["last_error"] is None
    fleet.cli("matrix", "unschedule", "sched")
    assert fleet.cli_json("matrix", "schedules") == []
    proc = fleet.cli("matrix", "unschedule", "sched", check=False)
    assert proc.returncode != 0 and "no matrix schedule named 'sched'" in proc.stderr
    # a matrix without schedule: is refused by schedule, naming the key
    del m["schedule"]
    mfile.write_text(yaml.safe_dump(m))
    proc = fleet.cli("matrix", "schedule", str(mfile), check=False)
    assert proc.returncode != 0 and "schedule: is required" in proc.stderr


def test_a_spent_time_budget_cancels_what_still_waits(fleet, tmp_path):
    client = fleet.start(config={"matrix_interval": 0.2})
    # The prep must start inside the budget however slow the machine: the host checked first
    # (an unchecked host takes nothing), and 5 s of budget.
    eventually(lambda: next(h for h in client.hosts() if h.name == "localhost").health == "good",
               what="localhost checked")
    gate = tmp_path / "gate"
    m = {"name": "budget", "axes": {"model": ["a"]}, "repeat": 2, "budget": "5s", "steps": [
        {"name": "prep", "run": f"while [ ! -e {gate} ]; do sleep 0.05; done"},
        {"name": "bench", "run": "true"}]}
    mfile = tmp_path / "budget.yml"
    mfile.write_text(yaml.safe_dump(m))
    run_id = fleet.cli("matrix", "run", str(mfile)).stdout.strip()
    # the benches never start: one is cancelled, the chain then stops the other (the step it
    # belongs with did not run); the prep that runs goes on
    status = eventually(what="the benches ended", timeout=60, predicate=lambda: (
        s := fleet.cli_json("matrix", "status", run_id))["points"][0]["job_states"].get("PENDING") is None and s)
    assert status["points"][0]["job_states"] in ({"CANCELLED": 2, "RUNNING": 1},
                                                 {"CANCELLED": 1, "FAILED": 1, "RUNNING": 1})
    gate.touch()
    eventually(what="the run judged", timeout=60, predicate=lambda: fleet.cli_json("matrix", "status", run_id)["state"] == "DONE")
    report = json.loads(fleet.cli("matrix", "report", run_id).stdout)
    assert report["summary"]["missing"] == 1 and report["points"][0]["verdict"] == "missing"
    assert "CANCELLED" in report["points"][0]["notes"][0]


def test_a_cancelled_run_ends_its_jobs_and_is_not_judged(fleet, tmp_path):
    fleet.start(config={"matrix_interval": 0.2})
    gate = tmp_path / "gate"
    m = {"name": "stop", "axes": {"model": ["a"]}, "repeat": 3,
         "job": {"run": f"while [ ! -e {gate} ]; do sleep 0.05; done"}}
    mfile = tmp_path / "stop.yml"
    mfile.write_text(yaml.safe_dump(m))
    run_id = fleet.cli("matrix", "run", str(mfile)).stdout.strip()
    eventually(what="a job running", timeout=60, predicate=lambda: fleet.cli_json(
        "matrix", "status", run_id)["points"][0]["job_states"].get("RUNNING"))
    assert fleet.cli_json("matrix", "cancel", run_id)["state"] == "CANCELLED"
    status = eventually(what="every job ended", timeout=60, predicate=lambda: (
        s := fleet.cli_json("matrix", "status", run_id))["points"][0]["job_states"] == {"CANCELLED": 3} and s)
    assert status["state"] == "CANCELLED"
    assert fleet.cli_json("matrix", "cancel", run_id)["state"] == "CANCELLED"  # again: the same
    report = json.loads(fleet.cli("matrix", "report", run_id).stdout)
    assert report["state"] == "CANCELLED" and report["summary"]["missing"] == 1
    assert fleet.cli_json("regressions") == []


def test_a_job_that_lies_in_its_result_fails_naming_the_field_and_records_nothing(fleet, tmp_path):
    """The attacks: a negative latency, a latency that is not a number, a 5 MiB record, an
    invalid_reasons that is not a list of strings, and a matrix_run_id of another run."""
    client = fleet.start()
    write = 'python3 -c \'import json,os; json.dump({body}, open(os.environ["FLEET_RESULT"], "w"))\''
    cases = {
        "negative": ('{"metrics": {"latency_ms": {"median": -1.0}}}', "latency_ms"),
        "text": ('{"metrics": {"fps": "fast"}}', "metrics.fps"),
        "huge": ('{"metrics": {}, "environment": {"x": "y" * (5 << 20)}}', "over the limit"),
        "reasons": ('{"invalid_reasons": "no"}', "invalid_reasons"),
    }
    jobs = {name: client.submit({"name": name, "run": write.format(body=body)}).id
            for name, (body, _) in cases.items()}
    for name, (_body, words) in cases.items():
        detail = client.wait(jobs[name], timeout=120)
        assert (detail.state, detail.reason) == ("FAILED", "runner_error"), (name, detail.message)
        assert words in (detail.message or ""), (name, detail.message)
    assert client.results().items == []
    # the run id a job claims is not believed: the controller's is recorded (none here)
    job = client.submit({"name": "claims", "run": write.format(
        body='{"matrix_run_id": "m-someone-elses", "metrics": {"latency_ms": {"median": 1.0}}}')}).id
    assert client.wait(job, timeout=120).state == "SUCCEEDED"
    (rec,) = client.results().items
    assert rec.record["matrix_run_id"] is None


def test_a_new_tool_major_version_starts_a_new_series_and_the_report_says_what_changed(fleet, tmp_path):
    fleet.start()
    version = tmp_path / "version"
    version.write_text("8.6.1")
    script = ('python3 -c \'import json,os; json.dump({"tool": {"name": "trtexec", "version": '
              f'open("{version}").read()}}, "metrics": {{"latency_ms": {{"median": 2.0}}}}}}, '
              'open(os.environ["FLEET_RESULT"], "w"))\'')
    mfile = tmp_path / "keys.yml"
    mfile.write_text(yaml.safe_dump({"name": "keys", "axes": {"model": ["m"]}, "repeat": 2,
                                     "job": {"run": script}}))
    first = json.loads(fleet.cli("matrix", "run", str(mfile), "--wait", "--json").stdout)
    version.write_text("10.2.0")
    second = json.loads(fleet.cli("matrix", "run", str(mfile), "--wait", "--json").stdout)
    (point,) = second["points"]
    assert point["comparison_key"] != first["points"][0]["comparison_key"]
    assert any(f"the key changed since run {first['id']}: tool_major 8 -> 10 (never compared across)" in n
               for n in point["notes"]), point["notes"]
    assert point["metrics"]["latency_ms"]["status"] == "not_enough_samples"  # not compared across
    # a patch release keeps the series
    version.write_text("10.2.1")
    third = json.loads(fleet.cli("matrix", "run", str(mfile), "--wait", "--json").stdout)
    assert third["points"][0]["comparison_key"] == point["comparison_key"]
    assert not any("new series" in n for n in third["points"][0]["notes"])


def test_a_webhook_inside_the_network_is_refused_and_a_slow_one_cannot_hold_the_keeper(monkeypatch):
    """In-process: a user's webhook may not make the controller call loopback (or any private
    address) unless the operator allows it, and a server that answers slowly is given up."""
    import asyncio
    import http.server
    import threading
    import time

    from fleet import matrix

    hook = Hook()
    report = {"id": "m1", "name": "n", "summary": {"regression": 1, "invalid": 0, "missing": 0},
              "points": [{"values": {"model": "b"}, "metrics": {"latency_ms": {
                  "status": "regression", "before": 1.0, "after": 1.1, "change_pct": 10.0, "first_run": "m1"}}}]}
    spec = {"notify": {"webhook": hook.url}}
    asyncio.run(matrix.notify(spec, report, allow_private=False))
    assert hook.bodies == []  # 127.0.0.1 is not a public address
    asyncio.run(matrix.notify(spec, report, allow_private=True))
    assert len(hook.bodies) == 1 and "model=b: latency_ms 1 -> 1.1 (+10.0%" in json.dumps(hook.bodies)

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            time.sleep(3)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    monkeypatch.setattr(matrix, "WEBHOOK_DEADLINE", 0.3)
    started = time.monotonic()
    asyncio.run(matrix.notify({"notify": {"webhook": f"http://127.0.0.1:{slow.server_address[1]}/"}},
                              report, allow_private=True))
    assert time.monotonic() - started < 2.0
    slow.shutdown()


def test_a_non_admin_is_refused_clearly_for_a_path_as_a_hash_and_oversized_matrices(fleet, tmp_path, shared_local):
    """The attacks, as a user who is not an admin: an upload ref whose sha256 is a path, a
    body over the request limit, a matrix whose axes multiply past the point limit, and one
    that stays small on the wire but would write gigabytes of job specs. Each is refused with
    the field named, and nothing is queued."""
    from fleet.client import calls
    from fleet.errors import ApiError
    from tests.conftest import add_user

    fleet.start(shared_local, config={"max_request_bytes": 4 << 20})
    _, bob = add_user(fleet, "bob")
    job = {"run": "true", "inputs": {"model": "m.bin"}}
    m = {"name": "evil", "axes": {"model": ["a"]}, "repeat": 1, "job": job}

    bad_ref = {"kind": "file", "filename": "m.bin", "files": {"m.bin": {"sha256": "../../etc/passwd", "size": 1}}}
    with pytest.raises(ApiError) as err:
        bob.call(calls.matrix_run(m, {"m.bin": bad_ref}, "evil.yml"))
    assert err.value.status == 422 and "points[0] (model=a).inputs.model" in str(err.value)
    assert "sha256" in str(err.value)

    with pytest.raises(ApiError) as err:
        bob.call(calls.matrix_run(dict(m, job={"run": "x" * (5 << 20)}), {}, "big.yml"))
    assert err.value.status == 413 and "max_request_bytes" in str(err.value)

    wide = dict(m, axes={f"a{i}": list(range(10)) for i in range(6)}, job={"run": "true"})
    with pytest.raises(ApiError) as err:
        bob.call(calls.matrix_run(wide, {}, "wide.yml"))
    assert err.value.status == 422 and "1000000 combinations" in str(err.value)

    # 0.9 MB on the wire, 80 points x 10 repeats of a 900 KB env value: 720 MB of job specs
    heavy = {"name": "heavy", "axes": {"model": list(range(80))}, "repeat": 10,
             "job": {"run": "true", "envs": {"BLOB": "y" * 900_000}}}
    with pytest.raises(ApiError) as err:
        bob.call(calls.matrix_run(heavy, {}, "heavy.yml"))
    assert err.value.status == 422 and "bytes of spec, at most 67108864" in str(err.value)

    assert bob.call(calls.matrix_runs()) == [] and bob.jobs().items == []
    bob.close()
