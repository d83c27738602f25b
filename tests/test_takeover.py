"""A new leader taking over, in process (tests/harness.py): it loads the running attempts and
the queue in slices while the API answers, and what happens meanwhile (cancels, host checks,
held retries, a lost lease, a failed start) is neither lost nor undone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fleet.backends.base import Capability
from fleet.blobs import BlobStore
from fleet.config import Settings
from fleet.inventory import Host
from fleet.logstore import LogStore
from fleet.models.enums import AttemptState, Health, JobState, Reason
from fleet.models.spec import load_spec
from fleet.models.tables import NewJob
from fleet.scheduler import takeover
from fleet.scheduler.loop import Scheduler
from fleet.secrets import SecretBox
from tests.harness import Harness, harness, host


def next_leader(h: Harness, tmp_path: Path) -> Scheduler:
    """Another replica's scheduler on the harness's database and backend (not started)."""
    settings = Settings(home=tmp_path / "home")
    return Scheduler(h.store, h.backend.hosts, {"fake": h.backend}, LogStore(settings.logs_dir, settings.log_cap),
                     h.scheduler.policy, SecretBox(settings.secret_key_file), BlobStore(settings.blobs_dir),
                     clock=h.clock)


def lost_and_retrying(h: Harness, ended_ago: float) -> tuple[str, str]:
    """A job whose attempt on h1 was declared lost ``ended_ago`` seconds ago and that waits
    for its retry (RETRYING): what a leader killed then leaves. Returns (job, attempt)."""
    (job,) = h.store.create_jobs([(load_spec("name: lost\nrun: 'sleep 600'\n"), "cpu")], "root")
    (attempt,) = h.store.start_attempts([(job, "h1", 1, "fake")])
    h.store.finish_attempt(attempt.id, AttemptState.FAILED, Reason.HOST_LOST, "gone", None, 0,
                           ended_at=time.time() - ended_ago)
    h.store.set_job(job.id, state=JobState.RETRYING.value)
    return job.id, attempt.id


async def test_a_new_leader_loads_in_slices_and_what_happens_meanwhile_is_neither_lost_nor_undone(tmp_path, monkeypatch):
    """A replica taking the lead reads what the last one left (queued jobs, running attempts)
    with the event loop turning between rows: bench/scale.py "takeover" (50,000 queued, 2,000
    running) held the loop 3 s in one go. Meanwhile a cancel waits until the queue is loaded
    and ends its job; a job submitted and ended meanwhile is not queued again from the rows
    read before; every running attempt is followed again and none is launched twice."""
    monkeypatch.setattr(Scheduler, "LOAD_SLICE", 0.0)  # a turn of the loop after every row
    async with harness(tmp_path, [host("h1", slots=2)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        running = [await h.submit({"name": f"run{i}", "run": "sleep 600"}) for i in range(2)]
        await h.backend.wait_launches(2)
        await h.until(lambda: all(h.store.get_job(j).state == "RUNNING" for j in running))
        queued = [await h.submit({"name": f"q{i}", "run": "true"}) for i in range(40)]  # no free slot
        await h.scheduler.stop()  # the leader goes; its attempts keep running on the host
        # A job written before the next leader reads the queue, which reaches that leader by
        # its API (submit) while it loads, and waits out its queue timeout before its row is read.
        spec = load_spec("name: late\nrun: 'true'\nqueue_timeout: 60\n")
        (late,) = h.store.create_jobs([(spec, "cpu")], "root")

        nxt = next_leader(h, tmp_path)
        seen: set[int] = set()  # how many jobs were queued, at each turn of the loop

        async def watch() -> None:
            while True:
                seen.add(len(nxt.pending))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        starting = asyncio.create_task(nxt.start())
        while not nxt.pending:  # it has read the rows and queues them, a row per turn
            await asyncio.sleep(0)
        assert not nxt.loaded.is_set()
        why = nxt.why(queued[-1])  # its row not taken yet: not "done", as a job the scheduler lacks
        assert why.state == "waiting" and "still reading the queue" in why.summary
        cancel = asyncio.create_task(nxt.cancel(queued[-1]))
        nxt.submit(late, spec)
        await h.clock.advance(61)  # its queue timeout runs out before start reads its row
        assert h.store.get_job(late.id).state == "FAILED"
        await starting
        watcher.cancel()
        try:
            assert await cancel == "CANCELLED"
            assert h.store.get_job(queued[-1]).state == "CANCELLED" and queued[-1] not in nxt.pending
            assert late.id not in nxt.pending and h.store.get_job(late.id).state == "FAILED"
            ends = [e for e in h.store.events_after(0, 10_000) if e.job_id == late.id and e.state == "FAILED"]
            assert len(ends) == 1, "the job ended twice: queued again from its stale row"
            assert set(nxt.pending) == set(queued[:-1])
            assert set(nxt.running) == set(running)
            assert len(seen) > len(queued) // 2, f"the loop did not turn between rows: {sorted(seen)}"
            await h.until(lambda: sum(1 for launch in h.backend.launches if launch.plan.follow_only) == 2)
            assert all(h.backend.launched[j] == 1 for j in running), "an attempt was launched twice"
        finally:
            await nxt.stop()


async def test_a_retry_held_for_a_lost_attempt_is_followed_once_when_its_lease_ran_out_before_the_takeover(tmp_path, monkeypatch):
    """The leader died more than an attempt lease ago: the next one holds the retry for 0 s
    and follows the lost attempt again at once (it may have run on): once, whatever the
    order in which the loading's slices and the hold's timer run."""
    monkeypatch.setattr(Scheduler, "LOAD_SLICE", 0.0)
    async with harness(tmp_path, [host("h1", slots=4)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        await h.scheduler.stop()
        job, attempt = lost_and_retrying(h, ended_ago=3600)
        h.store.create_jobs([(load_spec(f"name: q{i}\nrun: 'true'\n"), "cpu") for i in range(5)], "root")
        nxt = next_leader(h, tmp_path)
        await nxt.start()
        try:
            await h.until(lambda: any(launch.plan.attempt_id == attempt for launch in h.backend.launches))
            for _ in range(50):
                await asyncio.sleep(0)
            follows = [launch for launch in h.backend.launches if launch.plan.attempt_id == attempt]
            assert len(follows) == 1 and follows[0].plan.follow_only
            assert nxt.running[job].attempt.id == attempt
            assert nxt.book.used["h1"] == len(nxt.running) == 4  # a slot each, none taken twice
        finally:
            await nxt.stop()


async def test_a_start_that_fails_half_way_leaves_no_cancel_waiting_for_ever(tmp_path, monkeypatch):
    async with harness(tmp_path, [host("h1")]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        await h.scheduler.stop()
        (job,) = h.store.create_jobs([(load_spec("name: q\nrun: 'true'\n"), "cpu")], "root")
        nxt = next_leader(h, tmp_path)

        def locked() -> None:
            raise RuntimeError("database is locked")

        monkeypatch.setattr(nxt.store, "active_attempts", locked)
        with pytest.raises(RuntimeError):
            await nxt.start()
        try:
            assert not nxt.leading  # it does not answer for a queue it could not load
            async with asyncio.timeout(5):  # (fleet serve exits: fleet.controller.lead)
                assert await nxt.cancel(job.id) == "PENDING"
        finally:
            await nxt.stop()


async def test_a_running_attempt_whose_spec_this_release_cannot_read_fails_alone(tmp_path):
    async with harness(tmp_path, [host("h1", slots=2)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        jobs = [await h.submit({"name": f"run{i}", "run": "sleep 600"}) for i in range(2)]
        await h.backend.wait_launches(2)
        await h.until(lambda: all(h.store.get_job(j).state == "RUNNING" for j in jobs))
        await h.scheduler.stop()
        h.store.set_job(jobs[0], spec_json='{"kind": "from-a-newer-release"}')
        nxt = next_leader(h, tmp_path)
        await nxt.start()
        try:
            assert nxt.leading and set(nxt.running) == {jobs[1]}
            row = h.store.get_job(jobs[0])
            assert (row.state, row.reason) == ("FAILED", "invalid_spec") and "cannot be read" in (row.message or "")
        finally:
            await nxt.stop()


async def test_a_cancel_made_while_the_queue_loads_goes_before_the_first_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(Scheduler, "LOAD_SLICE", 0.0)
    async with harness(tmp_path, [host("h1", slots=2)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        await h.scheduler.stop()
        jobs = h.store.create_jobs([(load_spec(f"name: q{i}\nrun: 'sleep 60'\n"), "cpu") for i in range(30)], "root")
        nxt = next_leader(h, tmp_path)
        starting = asyncio.create_task(nxt.start())
        while not nxt.pending:
            await asyncio.sleep(0)
        cancel = asyncio.create_task(nxt.cancel(jobs[0].id))  # the oldest: first to be placed
        await starting
        try:
            assert await cancel == "CANCELLED"
            await h.backend.wait_launches(2)
            assert h.backend.launched[jobs[0].id] == 0 and h.store.attempts(jobs[0].id) == []
        finally:
            await nxt.stop()


async def test_a_host_checked_while_the_queue_loads_does_not_stop_a_lost_attempt_the_scheduler_follows(tmp_path, monkeypatch):
    """A host back (here an operator's check) stops the attempts given up on there that
    nobody follows, and follows again those whose retry waits: it waits for the load, else a
    retry not read yet would have its attempt stopped instead of followed."""
    monkeypatch.setattr(Scheduler, "LOAD_SLICE", 0.0)
    killed: list[str] = []
    async with harness(tmp_path, [host("h1", slots=4)],
                       capabilities=frozenset({Capability.CHECK, Capability.KILL_STALE})) as h:
        async def kill_stale(host: Host, ids: list[str], grace: float) -> None:
            killed.extend(ids)

        h.backend.kill_stale = kill_stale  # type: ignore[method-assign]
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        await h.scheduler.stop()
        h.store.create_jobs([(load_spec(f"name: q{i}\nrun: 'true'\n"), "cpu") for i in range(30)], "root")
        job, attempt = lost_and_retrying(h, ended_ago=5)  # its lease still runs: held
        nxt = next_leader(h, tmp_path)
        starting = asyncio.create_task(nxt.start())
        while not nxt.pending:
            await asyncio.sleep(0)
        await nxt.check_host("h1")
        await starting
        try:
            assert attempt not in killed
            assert job in nxt.running and nxt.running[job].attempt.id == attempt  # followed again
        finally:
            await nxt.stop()


async def test_while_a_new_leader_loads_a_plain_user_can_neither_cancel_nor_explain_anothers_job(tmp_path, monkeypatch):
    """The waits the load adds (cancel, why) come after the API's owner check: bob, not an
    admin, is refused alice's job (404, as for a job that does not exist) while the queue is
    read, and her job is queued once it is."""
    monkeypatch.setattr(Scheduler, "LOAD_SLICE", 0.0)
    async with harness(tmp_path, [host("h1", slots=1)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        alice, bob = h.store.create_user("alice"), h.store.create_user("bob")
        as_bob = {"Authorization": f"Bearer {h.store.create_token(bob)}"}
        await h.scheduler.stop()
        jobs = h.store.create_jobs([(load_spec(f"name: a{i}\nrun: 'sleep 60'\n"), "cpu") for i in range(3)],
                                   alice.name)
        release, reading = asyncio.Event(), asyncio.Event()
        load_queue = takeover.load_queue

        async def held_open(s: Scheduler, rows: list[NewJob]) -> None:  # the load, kept going
            reading.set()
            await release.wait()
            await load_queue(s, rows)

        monkeypatch.setattr(takeover, "load_queue", held_open)
        nxt = next_leader(h, tmp_path)
        h.ctx.scheduler = nxt
        starting = asyncio.create_task(nxt.start())
        await reading.wait()
        target = jobs[-1].id
        refused = await h.api.post(f"/jobs/{target}/cancel", headers=as_bob)
        explained = await h.api.get(f"/jobs/{target}/why", headers=as_bob)
        assert not nxt.loaded.is_set()
        release.set()
        await starting
        try:
            assert refused.status_code == 404 and explained.status_code == 404
            assert target in nxt.pending and h.store.get_job(target).state == "PENDING"
        finally:
            await nxt.stop()


async def test_a_new_leader_that_loses_its_lease_while_loading_stops_between_two_slices(tmp_path, monkeypatch):
    """Between two slices of the load the lease is checked (``takeover._turn``): a replica
    that lost it while loading stops there, takes no more rows and places nothing."""
    monkeypatch.setattr(Scheduler, "LOAD_SLICE", 0.0)
    async with harness(tmp_path, [host("h1", slots=4)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        await h.scheduler.stop()
        h.store.create_jobs([(load_spec(f"name: q{i}\nrun: 'true'\n"), "cpu") for i in range(30)], "root")
        nxt = next_leader(h, tmp_path)
        checks = 0

        def fence() -> None:
            nonlocal checks
            checks += 1
            if checks > 5:
                raise RuntimeError("lease lost to another replica")

        nxt.fence = fence
        with pytest.raises(RuntimeError, match="lease lost"):
            await nxt.start()
        try:
            assert not nxt.leading and nxt.loaded.is_set()
            assert 0 < len(nxt.pending) < 30, len(nxt.pending)  # it stopped part way
            assert h.backend.launches == []
        finally:
            await nxt.stop()


async def test_a_pass_whose_commit_fails_puts_its_jobs_back_and_looks_again_a_second_later(tmp_path, monkeypatch):
    """Nothing was written, so the jobs wait again, and the scheduler looks again in a second:
    not in a spin, and not only when something else wakes it (nothing else would here)."""
    async with harness(tmp_path, [host("h1", slots=2)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        calls: list[int] = []
        real = h.store.start_attempts

        def once_locked(placed):
            calls.append(len(placed))
            if len(calls) == 1:
                raise RuntimeError("database is locked")
            return real(placed)

        monkeypatch.setattr(h.store, "start_attempts", once_locked)
        job = await h.submit({"name": "q", "run": "true"})
        await h.until(lambda: calls == [1])
        for _ in range(100):
            await asyncio.sleep(0)
        assert calls == [1] and job in h.scheduler.pending and h.store.get_job(job).state == "PENDING"
        assert h.backend.launches == []
        await h.clock.advance(1.0)
        (launch,) = await h.backend.wait_launches(1)
        assert launch.plan.job_id == job and calls == [1, 1]


async def test_a_wait_on_a_job_the_new_leader_fails_while_loading_returns_then(tmp_path, monkeypatch):
    """A queued job whose spec this release cannot read is failed by the load itself; a
    ``fleet status --wait`` on it (``Scheduler.wait_done``) returns then, not at its timeout."""
    monkeypatch.setattr(Scheduler, "LOAD_SLICE", 0.0)
    async with harness(tmp_path, [host("h1")]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        await h.scheduler.stop()
        jobs = h.store.create_jobs([(load_spec(f"name: q{i}\nrun: 'sleep 60'\n"), "cpu") for i in range(200)], "root")
        bad = jobs[-1].id  # the last row the load takes
        h.store.set_job(bad, spec_json='{"kind": "from-a-newer-release"}')
        nxt = next_leader(h, tmp_path)
        starting = asyncio.create_task(nxt.start())
        while not nxt.pending:
            await asyncio.sleep(0)
        waiting = asyncio.create_task(nxt.wait_done(bad, 30))
        await asyncio.sleep(0)
        assert h.store.get_job(bad).state == "PENDING"  # the wait began before the load reached it
        try:
            began = time.monotonic()
            await asyncio.wait_for(waiting, 10)
            assert time.monotonic() - began < 5
            job = h.store.get_job(bad)
            assert job.state == "FAILED" and job.reason == Reason.INVALID_SPEC.value
            await starting
        finally:
            await nxt.stop()


async def test_no_collection_runs_while_a_new_leader_loads_and_what_it_loaded_is_frozen(tmp_path):
    """``controller.no_collection_then_freeze``, as ``lead`` wraps a new leader's start: no
    garbage collection runs while the queue is loaded (each full one walked the growing heap
    with the loop held, up to 100 ms: bench/scale.py "takeover"), and what was loaded is
    frozen after, out of every later collection's walk; the collector runs again."""
    import gc

    from fleet.controller import no_collection_then_freeze

    async with harness(tmp_path, [host("h1")]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        await h.scheduler.stop()
        h.store.create_jobs([(load_spec(f"name: q{i}\nrun: 'sleep 600'\n"), "cpu") for i in range(2000)], "root")
        nxt = next_leader(h, tmp_path)
        collections: list[int] = []

        def count(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                collections.append(info["generation"])

        threshold = gc.get_threshold()
        try:
            with no_collection_then_freeze():
                gc.set_threshold(100, 10, 10)  # a collection every 100 allocations: the load makes thousands
                gc.callbacks.append(count)
                await nxt.start()
                gc.callbacks.remove(count)
            assert collections == [] and gc.isenabled()
            loaded = next(iter(nxt.pending.values()))
            assert gc.is_tracked(loaded) and not any(o is loaded for o in gc.get_objects()), \
                "a loaded queue entry is still in a generation the collector walks"
            assert len(nxt.pending) >= 1999  # one may have been placed on h1
        finally:
            if count in gc.callbacks:
                gc.callbacks.remove(count)
            gc.set_threshold(*threshold)
            gc.unfreeze()
            await nxt.stop()
