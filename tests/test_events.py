"""``GET /events``: typed, numbered, filtered to what the caller may see, resumable, and the CLI's
waiting (``fleet status --wait``, ``fleet submit --wait``, ``fleet jobs --watch``) rides on it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from fleet.client.sync import Client
from tests.conftest import REPO, add_user


def _inventory(tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text("localhost ansible_connection=local fleet_slots=2\n")
    return inv


def _collect(client: Client, until, **kw) -> list[dict]:
    """Events from the stream until ``until(events)`` holds."""
    out: list[dict] = []
    for event in client.events(**kw):
        out.append(event)
        if until(out):
            break
    return out


def _ended(job_id):
    return lambda evs: any(e.get("job") == job_id and e["type"] == "job.state"
                           and e["state"] in {"SUCCEEDED", "FAILED"} for e in evs)


def test_a_job_tells_its_story_in_order_and_a_resumed_stream_misses_nothing(fleet, tmp_path):
    client = fleet.start(_inventory(tmp_path))
    ready = next(client.events())
    assert ready["type"] == "ready"
    start = ready["id"]
    job = client.submit({"name": "story", "run": "echo hi"}).id
    events = _collect(client, _ended(job), after=start, jobs=[job])
    assert events[0]["type"] == "ready" and events[0]["id"] == start
    story = [(e["type"], e.get("state")) for e in events[1:]]
    assert story == [("job.state", "PENDING"), ("attempt.started", "STARTING"), ("job.state", "STARTING"),
                     ("attempt.running", "RUNNING"), ("job.state", "RUNNING"),
                     ("attempt.ended", "SUCCEEDED"), ("job.state", "SUCCEEDED")], story
    ids = [e["id"] for e in events[1:]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    started = next(e for e in events if e["type"] == "attempt.started")
    assert started["host"] == "localhost" and started["backend"] == "ssh" and started["number"] == 1
    assert events[-1]["user"] == "root" or events[-1]["user"]  # the owner is named
    # Resume from the middle (Last-Event-ID): exactly the rest, nothing repeated.
    middle = ids[2]
    rest = _collect(client, _ended(job), after=middle, jobs=[job])
    assert [e["id"] for e in rest[1:]] == ids[3:]
    # The raw protocol: SSE frames with id/event/data, Last-Event-ID as a header.
    with httpx.stream("GET", f"{fleet.info.url}/events", params={"job": job},
                      headers={"Authorization": f"Bearer {fleet.info.token}",
                               "Last-Event-ID": str(ids[-2])}, timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in resp.iter_lines():
            lines.append(line)
            if line.startswith("data:") and "SUCCEEDED" in line:
                break
    assert lines[:3] == [f"id: {ids[-2]}", "event: ready", lines[2]]
    assert f"id: {ids[-1]}" in lines and "event: job.state" in lines


def test_users_see_only_their_own_jobs_events_and_the_labs(fleet, tmp_path, shared_local):
    client = fleet.start(shared_local)
    _token, alice = add_user(fleet, "alice")
    _token, bob = add_user(fleet, "bob")
    start = next(client.events())["id"]
    a = alice.submit({"name": "alice-job", "run": "true"}).id
    b = bob.submit({"name": "bob-job", "run": "true"}).id
    client.wait_all([a, b])
    admin_sees = _collect(client, lambda evs: _ended(a)(evs) and _ended(b)(evs), after=start)
    assert {e.get("job") for e in admin_sees} >= {a, b}
    alice_sees = _collect(alice, _ended(a), after=start)
    assert all(e.get("job") in (None, a) for e in alice_sees), alice_sees
    assert not any(e.get("user") == "bob" for e in alice_sees)
    # Asking for someone else's job by id shows nothing of it either.
    sneaky = _collect(alice, lambda evs: True, after=start, jobs=[b])
    assert [e["type"] for e in sneaky] == ["ready"]
    with pytest.raises(Exception, match="query.type.0: Input should be 'job.state'"):
        next(alice.events(types=["job.secret"]))


def test_host_health_drain_and_queue_depth_events(fleet, tmp_path):
    client = fleet.start(_inventory(tmp_path))
    start = next(client.events())["id"]
    fleet.cli("hosts", "drain", "localhost")
    waiting = [client.submit({"name": f"w{i}", "run": "true"}).id for i in range(3)]
    evs = _collect(client, lambda evs: any(e["type"] == "queue.depth" and e["waiting"] == 3 for e in evs),
                   after=start, types=["host.drain", "queue.depth"])
    assert any(e["type"] == "host.drain" and e["host"] == "localhost" and e["state"] == "drained" for e in evs)
    fleet.cli("hosts", "undrain", "localhost")
    client.wait_all(waiting)
    evs = _collect(client, lambda evs: any(e["type"] == "queue.depth" and e["waiting"] == 0 for e in evs),
                   after=start, types=["queue.depth"])
    assert all(isinstance(v, int) for e in evs[1:] for v in e["queues"].values())


def test_cli_waits_and_watches_on_events(fleet, tmp_path):
    client = fleet.start(_inventory(tmp_path))
    gate = tmp_path / "gate"
    job = client.submit({"name": "gated", "run": f"while [ ! -e {gate} ]; do sleep 0.05; done; echo done"}).id
    watch = subprocess.Popen([sys.executable, "-m", "fleet", "jobs", "--watch", "--json"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiter = subprocess.Popen([sys.executable, "-m", "fleet", "status", job, "--wait", "--json"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[dict] = []

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            seen.append(json.loads(line))
            if seen[-1].get("state") == "SUCCEEDED" and seen[-1].get("job") == job:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:  # the first line: ready (subscribed)
        time.sleep(0.02)
    assert seen and seen[0]["type"] == "ready", seen
    deadline = time.monotonic() + 30
    while client.job(job).state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiter.poll() is None  # still waiting: the job runs until the gate opens
    gate.touch()
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert json.loads(out)["state"] == "SUCCEEDED"
    reader.join(60)
    watch.terminate()
    watch.wait(10)
    assert [e["state"] for e in seen if e.get("job") == job][-1] == "SUCCEEDED"
    assert all(e["type"] == "job.state" for e in seen[1:])
