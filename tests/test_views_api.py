"""The API the terminal UI's views read (in process, tests/harness.py): job listings with
filters, sorts, offsets and totals; the queues in the order the scheduler takes them; which
jobs run on each host; series of results. As a non-admin too: another user's jobs stay hidden."""

from __future__ import annotations

import httpx

from fleet.models.enums import Health
from tests.harness import Harness, harness, host


async def _user(h: Harness, name: str) -> httpx.AsyncClient:
    resp = await h.api.post("/users", json={"name": name})
    assert resp.status_code == 201, resp.text
    return httpx.AsyncClient(transport=h.api._transport, base_url="http://fleet.test",
                             headers={"Authorization": f"Bearer {resp.json()['token']}"})


async def _submit(api: httpx.AsyncClient, spec: dict) -> str:
    resp = await api.post("/jobs", json=spec)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


async def test_job_listing_filters_sorts_offsets_and_counts(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        await h.until(lambda: h.scheduler.book.health.get("h1") is Health.GOOD)
        blocker = await h.submit({"name": "blocker", "run": "true"})
        await h.backend.wait_launches(1)
        ids = [await h.submit({"name": f"resnet_{i}", "run": "true", "priority": 100 + i}) for i in range(5)]
        other = await h.submit({"name": "yolo", "run": "true"})
        page = (await h.api.get("/jobs", params={"q": "RESNET", "total": "true", "limit": 2})).json()
        assert [j["id"] for j in page["items"]] == ids[::-1][:2] and page["total"] == 5
        assert page["next"] == ids[3]
        page = (await h.api.get("/jobs", params={"q": "resnet", "offset": 4, "limit": 2})).json()
        assert [j["id"] for j in page["items"]] == [ids[0]] and page["next"] is None
        # % and _ are letters in a search, not patterns
        assert (await h.api.get("/jobs", params={"q": "%"})).json()["items"] == []
        assert [j["id"] for j in (await h.api.get("/jobs", params={"q": "_1"})).json()["items"]] == [ids[1]]
        assert (await h.api.get("/jobs", params={"q": "tx1"})).json()["items"] == []
        by_prio = (await h.api.get("/jobs", params={"sort": "-priority", "limit": 3})).json()["items"]
        assert [j["id"] for j in by_prio] == [other, blocker, ids[4]]  # 500, 500 (newer first), 104
        by_name = (await h.api.get("/jobs", params={"sort": "name"})).json()["items"]
        assert [j["name"] for j in by_name] == sorted(j["name"] for j in by_name)
        assert [j["id"] for j in (await h.api.get("/jobs", params={"q": blocker.upper()})).json()["items"]] == [blocker]
        assert (await h.api.get("/jobs", params={"kind": "compile", "total": "true"})).json()["total"] == 0
        bad = await h.api.get("/jobs", params={"sort": "spec_json"})
        assert bad.status_code == 422 and "sort" in bad.text
        assert (await h.api.get("/jobs", params={"offset": -1})).status_code == 422


async def test_queues_show_the_order_the_scheduler_takes_and_why(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        await h.until(lambda: h.scheduler.book.health.get("h1") is Health.GOOD)
        alice, bob, carol = [await _user(h, name) for name in ("alice", "bob", "carol")]
        running = await _submit(alice, {"name": "a-run", "run": "true"})
        (launch,) = await h.backend.wait_launches(1)
        a1 = await _submit(alice, {"name": "a1", "run": "true"})
        a2 = await _submit(alice, {"name": "a2", "run": "true"})
        b1 = await _submit(bob, {"name": "b1", "run": "true"})  # bob runs nothing: before alice's
        urgent = await _submit(alice, {"name": "urgent", "run": "true", "priority": 900})
        (queue,) = (await h.api.get("/queues")).json()
        assert queue["waiting"] == 4 and queue["running"] == 1
        assert [(j["id"], j["position"]) for j in queue["jobs"]] == [
            (running, None), (urgent, 1), (b1, 2), (a1, 3), (a2, 4)]
        why = queue["why"]
        assert why["job"] == urgent and why["ahead"] == 0 and why["hosts"] == {"h1": "busy"}
        assert (await h.api.get(f"/jobs/{a1}/why")).json()["ahead"] == 2  # urgent and b1 go first
        assert (await h.api.get("/hosts")).json()[0]["running"] == [running]

        (seen,) = (await carol.get("/queues")).json()
        assert seen["waiting"] == 4 and seen["jobs"] == []  # counts, not other users' jobs
        assert seen["why"]["job"] == "" and seen["why"]["summary"] == why["summary"]
        assert (await carol.get("/hosts")).json()[0]["running"] == []
        assert (await carol.get("/hosts/h1")).json()["running"] == []  # one host, as /hosts shows it
        one = (await alice.get("/hosts/h1")).json()
        assert one["running"] == [running] and one["used_slots"] == 1
        assert (await alice.get("/hosts/nope")).status_code == 404
        (mine,) = (await alice.get("/queues")).json()
        assert [j["id"] for j in mine["jobs"]] == [running, urgent, a1, a2]
        assert [j["position"] for j in mine["jobs"]] == [None, 1, 3, 4]  # b1 is second, unnamed
        assert (await carol.get("/jobs", params={"q": "a", "total": "true"})).json()["total"] == 0
        launch.finish(0)
        for api in (alice, bob, carol):
            await api.aclose()
