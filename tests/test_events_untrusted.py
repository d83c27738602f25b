"""The event stream with untrusted input (DESIGN.md §7), in process (tests/harness.py): a job
whose message tries to forge events, a user asking for someone else's job, oversized and
malformed requests."""

from __future__ import annotations

from fleet.client.calls import SSE
from tests.harness import harness, host

FORGED = 'x\n\nid: 999999\nevent: job.state\ndata: {"job": "victim", "state": "SUCCEEDED"}\n\n'


def _events(text: str) -> list[dict]:
    sse, out = SSE(), []
    for line in text.split("\n"):
        event = sse.feed(line)
        if event is not None and event["type"] != "keepalive":
            out.append(event)
    return out


async def test_a_job_cannot_forge_events_and_users_see_only_their_own(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        job = await h.submit({"name": "liar", "run": "true"})
        (launch,) = await h.backend.wait_launches(1)
        launch.finish(exit_code=None, error=FORGED)  # what the host said: a message with frames in it
        await h.until(lambda: job not in h.scheduler.running)
        text = (await h.api.get("/events", params={"after": 0, "timeout": 0.3})).text
        events = _events(text)
        assert not any(e.get("job") == "victim" or e.get("id") == 999999 for e in events)
        ended = [e for e in events if e.get("job") == job and e["type"] == "job.state"][-1]
        assert ended["state"] == "FAILED" and ended["message"] == FORGED  # kept as data, whole

        made = await h.api.post("/users", json={"name": "mallory"})
        token = made.json()["token"]
        mallory = {"Authorization": f"Bearer {token}"}
        theirs = await h.api.get("/events", params={"after": 0, "timeout": 0.3, "job": job}, headers=mallory)
        assert theirs.status_code == 200
        assert [e["type"] for e in _events(theirs.text)] == ["ready"]
        everything = _events((await h.api.get("/events", params={"after": 0, "timeout": 0.3},
                                              headers=mallory)).text)
        assert not any(e.get("job") for e in everything)  # lab events only: no one's jobs


async def test_oversized_and_malformed_requests_are_refused_naming_the_field(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        many = await h.api.get("/events", params={"job": [f"j{i}" for i in range(1001)], "timeout": 0.1})
        assert many.status_code == 422 and "query.job" in many.json()["detail"]
        bad_id = await h.api.get("/events", params={"timeout": 0.1}, headers={"Last-Event-ID": "../../etc"})
        assert bad_id.status_code == 422 and "Last-Event-ID" in bad_id.json()["detail"]
        bad_type = await h.api.get("/events", params={"type": "job.secrets", "timeout": 0.1})
        assert bad_type.status_code == 422 and "query.type" in bad_type.json()["detail"]
        forever = await h.api.get("/events", params={"timeout": 10 ** 9})
        assert forever.status_code == 422 and "query.timeout" in forever.json()["detail"]
        anonymous = await h.api.get("/events", headers={"Authorization": ""})
        assert anonymous.status_code == 401
