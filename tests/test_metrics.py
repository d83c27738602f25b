"""GET /metrics (fleet.metrics): a scrape parsed with prometheus-client's own parser, its
values checked against what the test made happen (in process: tests/harness.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from prometheus_client.parser import text_string_to_metric_families

from fleet import loopwatch
from fleet.leader import LeaderLease
from fleet.models.enums import Health
from tests.harness import Harness, harness, host

SPEC = {"name": "m", "run": "true", "resources": {"pool": "lab"}}


async def scrape(h: Harness) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of a scrape: name -> {sorted labels: value}."""
    resp = await h.api.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(resp.text):
        assert family.name.startswith("fleet_"), family.name
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def one(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return samples.get(name, {}).get(want, 0.0)


async def test_a_scrape_counts_what_happened_and_shows_what_is(tmp_path):
    hosts = [host("h1"), host("h2"), host("h3")]
    async with harness(tmp_path, hosts) as h:
        h.scheduler.drain("h3")
        h.store.hosts.set_health("h2", Health.GOOD, None)
        first, second, third = [await h.submit(SPEC) for _ in range(3)]
        launches = await h.backend.wait_launches(2)
        queue = (await h.job(third))["queue"]

        m = await scrape(h)
        assert one(m, "fleet_jobs", state="PENDING", queue=queue) == 1
        assert one(m, "fleet_queue_depth", queue=queue) == 1
        assert 0 <= one(m, "fleet_queue_oldest_wait_seconds", queue=queue) < 60
        running = sum(v for k, v in m["fleet_jobs"].items() if ("state", "PENDING") not in k)
        assert running == 2
        assert one(m, "fleet_hosts", device_class="x86_64/cpu", health="good", drained="true") == 1
        assert one(m, "fleet_hosts", device_class="x86_64/cpu", health="good", drained="false") == 2
        assert one(m, "fleet_leader") == 1
        assert one(m, "fleet_queue_wait_seconds_count", queue=queue) == 2
        assert m["fleet_scheduler_pass_duration_seconds_count"][()] >= 1
        assert m["fleet_db_write_duration_seconds_count"][()] >= 4

        by_id = {launch.plan.job_id: launch for launch in launches}
        by_id[first].finish(0, started_at=100.0, ended_at=107.0)
        by_id[second].finish(3)
        await h.until(lambda: len(h.backend.launches) == 3)
        await h.until(lambda: h.scheduler.running.get(third) is not None)
        assert await h.api.post(f"/jobs/{third}/cancel") is not None
        h.scheduler.drain("h1")
        h.scheduler.drain("h2")
        fourth = await h.submit(SPEC)  # no host takes it: cancelled while queued
        await h.api.post(f"/jobs/{fourth}/cancel")
        await h.until(lambda: not h.scheduler.running)

        m = await scrape(h)
        assert one(m, "fleet_attempts_ended_total", reason="succeeded", device_class="x86_64/cpu") == 1
        assert one(m, "fleet_attempts_ended_total", reason="exit_nonzero", device_class="x86_64/cpu") == 1
        assert one(m, "fleet_attempts_ended_total", reason="cancelled_by_user", device_class="x86_64/cpu") == 1
        assert one(m, "fleet_jobs_ended_total", state="SUCCEEDED", queue=queue) == 1
        assert one(m, "fleet_jobs_ended_total", state="FAILED", queue=queue) == 1
        assert one(m, "fleet_jobs_ended_total", state="CANCELLED", queue=queue) == 2  # running, queued
        # The first job ran 7 s by its outcome: in the (5, 15] bucket, not in (1, 5].
        assert one(m, "fleet_job_duration_seconds_bucket", queue=queue, le="5.0") == 0
        assert one(m, "fleet_job_duration_seconds_bucket", queue=queue, le="15.0") >= 1
        assert one(m, "fleet_job_duration_seconds_sum", queue=queue) >= 7
        assert one(m, "fleet_queue_depth", queue=queue) == 0
        assert "fleet_jobs" not in m or not any(v for v in m["fleet_jobs"].values())


async def test_subscribers_and_the_leader_lease_age(tmp_path):
    async with harness(tmp_path) as h:
        got = asyncio.Event()

        async def follow() -> None:
            async for _frame in h.hub.stream(None, lambda user: True):
                got.set()

        task = asyncio.create_task(follow())
        await asyncio.wait_for(got.wait(), 10)
        lease = LeaderLease(h.store.db, "me", "http://127.0.0.1:1", ttl=15)
        assert lease.try_acquire()
        h.ctx.lease = lease
        m = await scrape(h)
        assert one(m, "fleet_event_subscribers") == 1
        assert 0 <= one(m, "fleet_leader_lease_age_seconds") < 5
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await h.until(lambda: h.hub.subscribers == 0)
        assert one(await scrape(h), "fleet_event_subscribers") == 0


async def test_a_scrape_needs_a_token_and_a_follower_shows_zero_for_what_it_did_not_do(tmp_path):
    async with harness(tmp_path) as h:
        resp = await h.api.get("/metrics", headers={"Authorization": ""})
        assert resp.status_code == 401
        h.scheduler.leading = False
        m = await scrape(h)
        assert one(m, "fleet_leader") == 0
        assert one(m, "fleet_hosts", device_class="x86_64/cpu", health="unknown", drained="false") \
            + one(m, "fleet_hosts", device_class="x86_64/cpu", health="good", drained="false") == 1


async def test_a_users_scrape_holds_nobodys_jobs_or_names(tmp_path):
    """Any user may scrape (DESIGN.md §7): what they get is totals per queue and device class,
    never a job id, an attempt id or a user's name (someone else's jobs stay unseen)."""
    async with harness(tmp_path) as h:
        alice = h.store.create_user("alice-secret-name")
        token = h.store.create_token(alice)
        job = await h.submit(SPEC)
        await h.backend.wait_launches(1)
        resp = await h.api.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200
        assert job not in resp.text and h.backend.launches[0].plan.attempt_id not in resp.text
        assert "alice-secret-name" not in resp.text
        assert 'user="' not in resp.text  # no metric is labelled by user
        families = {f.name for f in text_string_to_metric_families(resp.text)}
        assert {"fleet_jobs", "fleet_hosts", "fleet_attempts_ended"} <= families


async def test_a_callback_that_holds_the_loop_is_counted_and_the_longest_named(tmp_path, caplog):
    """fleet.loopwatch: a callback of 60 ms shows in fleet_event_loop_hold_seconds (in the
    (0.05, 0.1] bucket); the loop's ordinary short callbacks are not counted."""
    async with harness(tmp_path, [host("h1")]) as h:
        stop = h.scheduler.metrics.watch_loop()
        try:
            before = await scrape(h)

            def hog() -> None:
                time.sleep(0.06)

            garbage = []
            for _ in range(100_000):  # a full collection with this many more objects takes >= 5 ms
                garbage.append([])
            gc.collect()
            del garbage
            loop = asyncio.get_running_loop()
            loop.call_soon(hog)
            for _ in range(1000):
                loop.call_soon(int)
            for _ in range(20):
                await asyncio.sleep(0)
            after = await scrape(h)
        finally:
            stop()

        def diff(name: str, **labels: str) -> float:
            return one(after, name, **labels) - one(before, name, **labels)

        # (0.05, 0.25]: the hog sleeps 60 ms (a loaded machine may wake it late, and may add
        # other holds, never take it away)
        assert diff("fleet_event_loop_hold_seconds_bucket", le="0.25") \
            - diff("fleet_event_loop_hold_seconds_bucket", le="0.05") >= 1
        assert diff("fleet_event_loop_hold_seconds_sum") >= 0.06
        # a thousand empty callbacks ran too; at most a few were slowed by the machine
        assert diff("fleet_event_loop_hold_seconds_count") <= 10
        assert diff("fleet_gc_pause_seconds_count", generation="2") >= 1
    caplog.set_level(logging.WARNING, logger="fleet.loop")
    caplog.clear()
    report = loopwatch.Reporter(every=10)
    report(0.7, "<Handle hog()>")
    report(0.9, "<Handle hog2()>")  # within 10 s of the first: not logged again
    report(0.1, "<Handle short()>")
    lines = [r.getMessage() for r in caplog.records if r.name == "fleet.loop"]
    assert lines == ["the event loop was held 700 ms by '<Handle hog()>'"], lines

    async def napper() -> None:
        await asyncio.sleep(0)
        time.sleep(0.01)
        await asyncio.sleep(3600)

    seen: list[str] = []
    stop = loopwatch.watch(lambda took, handle: seen.append(loopwatch.describe(handle)))
    task = asyncio.create_task(napper(), name="the-napper")
    for _ in range(10):
        await asyncio.sleep(0)
    stop()
    task.cancel()
    assert any(d.startswith("task the-napper (test_a_callback_that_holds_the_loop_is_counted_and_the_longest_named"
                            ".<locals>.napper at ") and "test_metrics.py:" in d for d in seen), seen
