"""A busy controller never kills itself (issue 10): its lease is renewed by a thread of its own,
long submissions are validated off the event loop, and a leader whose lease lapsed with no
rival takes it back instead of exiting. (A real rival still fences it: tests/test_ha.py.)"""

from __future__ import annotations

import os
import signal
import time

from tests.helpers import eventually


def test_a_lone_leader_stopped_past_its_lease_takes_it_back(fleet, tmp_path):
    """The loop held (here: the whole process stopped) longer than the lease, with no other
    replica: before, the fence exited the process (75) and the lab had no scheduler."""
    client = fleet.start(config={"leader_lease": 2})
    pid = client.health()["pid"]
    side = tmp_path / "side"
    job = client.submit({"name": "across", "run": f'sleep 1; echo "$FLEET_JOB_ID" >> {side}'}).id
    eventually(lambda: client.job(job).state == "RUNNING", what="the job to run")
    os.kill(pid, signal.SIGSTOP)
    time.sleep(5)  # more than twice the lease
    os.kill(pid, signal.SIGCONT)
    assert client.wait(job, 60).state == "SUCCEEDED"
    after = client.submit({"name": "after", "run": f'echo "$FLEET_JOB_ID" >> {side}'}).id
    assert client.wait(after, 60).state == "SUCCEEDED"
    health = client.health()
    assert health["pid"] == pid and health["role"] == "leader"
    assert side.read_text().split() == [job, after]
    assert "was taken back" in fleet.server_log() and "lost the leader lease" not in fleet.server_log()


def test_a_large_batch_does_not_cost_the_leader_its_lease(fleet):
    """A 2,000-job batch is validated in a worker thread while the lease (2 s here) is kept by
    its own thread: the controller stays the leader and makes every job once."""
    client = fleet.start(config={"leader_lease": 2})
    pid = client.health()["pid"]
    specs = [{"name": f"b{i}", "run": "true", "params": {"i": i, "pad": "x" * 200}} for i in range(2000)]
    jobs = client.submit_many(specs)
    assert len({j.id for j in jobs}) == 2000
    health = client.health()
    assert health["pid"] == pid and health["role"] == "leader"
    assert len(client.jobs(limit=1000).items) == 1000
    assert "lost the leader lease" not in fleet.server_log()


async def test_health_answers_while_every_thread_of_the_pool_is_busy(tmp_path):
    """``GET /health`` is answered on the event loop: a liveness probe (HA, a load balancer,
    bench/scale.py) does not queue behind the database calls that fill the API's thread pool
    when the controller is busy (a new leader loading: 431 ms before, in bench/scale.py). In
    process (tests/harness.py); a route that needs a thread shows the pool was full."""
    import asyncio
    import threading

    import anyio.to_thread

    from tests.harness import harness, host

    async with harness(tmp_path, [host("h1")]) as h:
        limiter = anyio.to_thread.current_default_thread_limiter()
        release = threading.Event()
        busy = [asyncio.ensure_future(anyio.to_thread.run_sync(release.wait, limiter=limiter))
                for _ in range(int(limiter.total_tokens))]
        try:
            while limiter.borrowed_tokens < limiter.total_tokens:
                await asyncio.sleep(0.01)
            whoami = asyncio.ensure_future(h.api.get("/whoami"))  # a plain def route: waits
            health = await asyncio.wait_for(h.api.get("/health"), 5)
            assert health.status_code == 200 and health.json()["role"] == "leader"
            await asyncio.sleep(0.2)
            assert not whoami.done()
        finally:
            release.set()
            await asyncio.gather(*busy)
        assert (await whoami).status_code == 200


async def test_a_follower_names_the_leader_it_last_saw_and_no_one_once_it_takes_the_lease(tmp_path):
    """A follower's ``/health`` names the leader from the lease row its keeper read last. A
    replica that has just taken the lease (its scheduler not started yet) names no one: not
    the holder it saw before, whose row it still had (a leader just killed on this machine,
    whose lease had not run out), to which it would forward requests."""
    from fleet.leader import LeaderLease
    from tests.harness import harness, host

    async with harness(tmp_path, [host("h1")]) as h:
        theirs = LeaderLease(h.store.db, "them", "http://127.0.0.1:9", ttl=30)
        mine = LeaderLease(h.store.db, "me", "http://127.0.0.1:8", ttl=30)
        assert theirs.try_acquire() and not mine.try_acquire()  # my keeper's look: theirs
        h.ctx.lease, h.scheduler.leading = LeaderLease(h.store.db, "new", None, ttl=30), False
        try:  # a replica whose lease thread has read nothing yet (the database away) names no one
            health = (await h.api.get("/health")).json()
            assert health["role"] == "follower" and health["leader"] is None, health
        finally:
            h.scheduler.leading = True
        h.ctx.lease, h.scheduler.leading = mine, False
        try:
            health = (await h.api.get("/health")).json()
            assert health["role"] == "follower" and health["leader"] == "http://127.0.0.1:9", health
            theirs.release()
            assert mine.try_acquire()
            health = (await h.api.get("/health")).json()
            assert health["role"] == "follower" and health["leader"] is None, health
        finally:
            h.scheduler.leading = True
