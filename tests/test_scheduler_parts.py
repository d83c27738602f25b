"""The scheduler's parts, in process (tests/harness.py): the host book, the retry policy,
health checks, the attempt runner and the loop that wires them, with a backend the test
drives and the API over an ASGI transport. No server process, no sleeps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fleet.backends.base import Capability
from fleet.blobs import BlobStore
from fleet.config import Settings
from fleet.db import Database
from fleet.inventory import Host
from fleet.logstore import LogStore
from fleet.models.enums import AttemptState, Health, JobState, Reason
from fleet.models.spec import Retries, load_spec
from fleet.models.tables import NewJob
from fleet.scheduler import retry, takeover
from fleet.scheduler.hostbook import NOT_CHECKED, HostBook
from fleet.scheduler.loop import Scheduler
from fleet.scheduler.placement import Demand
from fleet.scheduler.starts import PendingStarts
from fleet.secrets import SecretBox
from fleet.store import Store
from tests.harness import Harness, harness, host


@pytest.mark.parametrize(("state", "reason", "infra", "job", "retries", "budget"), [
    (AttemptState.FAILED, Reason.HOST_LOST, 0, 0, Retries(), retry.Budget.INFRA),
    (AttemptState.FAILED, Reason.HOST_LOST, 2, 0, Retries(), None),  # the default budget: 2
    (AttemptState.FAILED, Reason.CONTROLLER_ERROR, 1, 0, Retries(), retry.Budget.INFRA),
    (AttemptState.FAILED, Reason.EXIT_NONZERO, 0, 0, Retries(), None),  # the job's fault
    (AttemptState.FAILED, Reason.EXIT_NONZERO, 0, 0, Retries(exit_nonzero=1), retry.Budget.EXIT),
    (AttemptState.FAILED, Reason.EXIT_NONZERO, 0, 1, Retries(exit_nonzero=1), None),
    (AttemptState.FAILED, Reason.SETUP_FAILED, 0, 0, Retries(exit_nonzero=3), None),
    (AttemptState.FAILED, Reason.OUTPUT_MISSING, 0, 0, Retries(infra=5), None),
    (AttemptState.TIMED_OUT, Reason.TIMED_OUT, 0, 0, Retries(infra=5, exit_nonzero=5), None),
    (AttemptState.CANCELLED, Reason.CANCELLED_BY_USER, 0, 0, Retries(infra=5), None),
])
def test_retry_policy(state, reason, infra, job, retries, budget):
    assert retry.decide(state, reason, infra, job, retries) is budget


def test_a_pool_without_room_sends_a_job_the_lab_can_run_back_to_it_without_drawing_on_retries():
    spent = Retries(infra=0)
    assert retry.decide(AttemptState.FAILED, Reason.NO_CAPACITY, 0, 0, spent, lab_takes_it=True) \
        is retry.Budget.BACK_TO_LAB
    assert retry.decide(AttemptState.FAILED, Reason.NO_CAPACITY, 0, 0, spent) is None  # only the cloud fits
    assert retry.decide(AttemptState.FAILED, Reason.NO_CAPACITY, 0, 0, Retries(infra=1)) is retry.Budget.INFRA


def test_host_book_loads_marks_unchecked_and_counts_slots(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.create_schema()
    store = Store(db)
    store.hosts.set_health("known", Health.GOOD, None)
    store.hosts.set_drained("known", True)
    book = HostBook([host("known", slots=2), host("new")], store)
    assert sorted(book.load()) == ["new"]  # to check now
    assert book.health == {"known": Health.GOOD, "new": Health.UNKNOWN}
    assert "new" in book.unchecked and store.hosts.statuses()["new"].health_message == NOT_CHECKED
    told = [(e.host, e.state) for e in store.events_after(0) if e.type == "host.health" and e.host == "new"]
    assert told == [("new", "unknown")]
    again = HostBook([host("known", slots=2), host("new"), host("newer")], store)  # the next start
    assert sorted(again.load()) == ["new", "newer"] and store.hosts.statuses()["known"].drained
    told = [(e.host, e.state) for e in store.events_after(0) if e.type == "host.health" and e.host != "known"]
    assert told == [("new", "unknown"), ("newer", "unknown")]  # a host's row is written once
    assert "known" in book.drained
    known = book.hosts["known"]
    book.take(known, 1)
    assert book.view(known).free_slots == 1 and book.view(known).drained
    book.give_back(known, 1)
    assert book.view(known).free_slots == 2
    demand = Demand.of(load_spec("name: t\nrun: x\nresources: {slots: 2}\n"))
    static = book.static_for(demand)
    assert static == {"known": None, "new": "only 1 slot"}
    assert book.static_for(demand) is static  # computed once per queue
    book.drain("known", False)
    assert "known" not in book.drained and not store.hosts.statuses()["known"].drained


def test_the_attempts_a_host_keeps_are_those_of_unfinished_jobs_read_once_for_every_host(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.create_schema()
    store = Store(db)
    spec = load_spec("name: t\nrun: x\n")
    done, retrying, running, queued = store.create_jobs([(spec, "cpu")] * 4, "alice")
    (a_done,) = store.start_attempts([(done, "h1", 1, "ssh")])
    store.finish_attempt(a_done.id, AttemptState.SUCCEEDED, Reason.SUCCEEDED, None, 0, 0)
    store.finish_job(done.id, JobState.SUCCEEDED, Reason.SUCCEEDED, None)
    (a_lost,) = store.start_attempts([(retrying, "h1", 1, "ssh")])  # lost, its job waits to retry
    store.finish_attempt(a_lost.id, AttemptState.FAILED, Reason.HOST_LOST, "gone", None, 0)
    store.set_job(retrying.id, state=JobState.RETRYING.value)
    (a_run,) = store.start_attempts([(running, "h2", 1, "ssh")])
    assert store.unfinished_attempts() == {"h1": [a_lost.id], "h2": [a_run.id]}  # not h1's ended job's


async def test_a_job_runs_through_the_api_and_the_loop_in_process(tmp_path):
    async with harness(tmp_path, [host("h1"), host("h2")]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        job = await h.submit({"name": "one", "run": "true"})
        (launch,) = await h.backend.wait_launches(1)
        assert launch.plan.job_id == job and launch.plan.argv == ["/bin/sh", "-c", "true"]
        # The start is written with others that start or end soon after (one transaction).
        async def running() -> bool:
            return await h.state(job) == "RUNNING"

        await h.until(running)
        launch.finish(0, log=b"hello\n")
        await h.until(lambda: job not in h.scheduler.running)
        detail = await h.job(job)
        assert detail["state"] == "SUCCEEDED" and detail["attempt_list"][0]["backend"] == "fake"
        assert (await h.api.get(f"/jobs/{job}/logs")).content == b"hello\n"


async def test_a_lost_host_is_checked_and_the_job_retried_elsewhere_once(tmp_path):
    async with harness(tmp_path, [host("h1"), host("h2")]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        job = await h.submit({"name": "lost", "run": "true"})
        (first,) = await h.backend.wait_launches(1)
        h.backend.bad_hosts.add(first.plan.host.name)
        first.lose()  # before the request went out? no: HostLost.sent defaults to True
        # A lost attempt may still run: the retry waits out its lease (policy: 60 s + grace).
        await h.until(lambda: job in h.scheduler.held)
        assert h.scheduler.why(job).summary.startswith("retrying in")
        assert h.scheduler.book.health[first.plan.host.name] in (Health.UNKNOWN, Health.BAD)
        await h.clock.advance(h.scheduler.policy.lost_hold)  # the lease ran out: first ask the
        # lost host how it ended
        follow = (await h.backend.wait_launches(2))[1]
        assert follow.plan.follow_only and follow.plan.host.name == first.plan.host.name
        follow.lose("still away")  # no answer: held again (it may have been running after all)
        await h.until(lambda: job in h.scheduler.held)
        h.scheduler.book.set_health(first.plan.host.name, Health.BAD, "quarantined by the test")
        await h.clock.advance(h.scheduler.policy.lost_hold)  # its host is bad: retried
        # elsewhere without asking it
        second = (await h.backend.wait_launches(3))[2]
        assert second.plan.host.name != first.plan.host.name and not second.plan.follow_only
        second.finish(0)
        await h.until(lambda: job not in h.scheduler.running and job not in h.scheduler.pending)
        detail = await h.job(job)
        assert detail["state"] == "SUCCEEDED" and len(detail["attempt_list"]) == 2
        assert detail["attempt_list"][0]["reason"] == "host_lost"
        assert h.backend.launched[job] == 2  # one launch per attempt, never one twice


async def test_a_host_failing_checks_is_quarantined_and_comes_back(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        h.backend.bad_hosts.add("h1")
        await h.until(lambda: h.scheduler.book.health.get("h1") is Health.BAD, timeout=20)
        assert h.backend.checks["h1"] >= 3  # bad_after
        h.backend.bad_hosts.clear()
        out = await h.scheduler.check_host("h1")
        assert out.ok and h.scheduler.book.health["h1"] is Health.GOOD


async def test_a_backend_without_checks_has_its_hosts_taken_as_good(tmp_path):
    async with harness(tmp_path, [host("p1", elastic=True, slots=4)], capabilities=frozenset()) as h:
        await h.until(lambda: h.scheduler.book.health.get("p1") is Health.GOOD)
        assert h.backend.checks["p1"] == 0
        job = await h.submit({"name": "b", "run": "true", "burst": True})
        (launch,) = await h.backend.wait_launches(1)
        launch.finish(3)
        await h.until(lambda: job not in h.scheduler.running)
        detail = await h.job(job)
        assert detail["state"] == "FAILED" and detail["reason"] == "exit_nonzero"
        # What it lacks it says: outputs need fetch; the job fails before anything runs.
        wants = await h.submit({"name": "o", "run": "true", "burst": True, "outputs": ["x"]})
        await h.until(lambda: wants not in h.scheduler.running and wants not in h.scheduler.pending)
        detail = await h.job(wants)
        assert detail["reason"] == "setup_failed" and "cannot fetch" in detail["message"]
        assert h.backend.launched[wants] == 0


async def test_cancel_of_a_running_job_signals_its_backend(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        job = await h.submit({"name": "c", "run": "sleep 100"})
        (launch,) = await h.backend.wait_launches(1)
        resp = await h.api.post(f"/jobs/{job}/cancel", json={})
        assert resp.json()["state"] == "CANCELLING"
        await h.until(lambda: job not in h.scheduler.running)
        assert h.backend.cancelled == [launch.plan.attempt_id]
        detail = await h.job(job)
        assert detail["state"] == "CANCELLED" and detail["reason"] == "cancelled_by_user"


async def test_fair_share_and_priority_order_in_one_queue(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        await h.until(lambda: h.scheduler.book.health.get("h1") is Health.GOOD)
        blocker = await h.submit({"name": "blocker", "run": "true"})
        (first,) = await h.backend.wait_launches(1)
        low = await h.submit({"name": "low", "run": "true", "priority": 100})
        high = await h.submit({"name": "high", "run": "true", "priority": 900})
        first.finish(0)
        second = (await h.backend.wait_launches(2))[1]
        assert second.plan.job_id == high
        second.finish(0)
        third = (await h.backend.wait_launches(3))[2]
        assert third.plan.job_id == low and blocker != low
        third.finish(0)


async def test_a_queue_timeout_of_an_hour_ends_the_job_when_the_hour_has_passed(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        await h.until(lambda: h.scheduler.book.health.get("h1") is Health.GOOD)
        blocker = await h.submit({"name": "blocker", "run": "true"})
        (first,) = await h.backend.wait_launches(1)
        waiting = await h.submit({"name": "w", "run": "true", "queue_timeout": "1h"})
        await h.until(lambda: waiting in h.scheduler.pending)
        await h.clock.advance(3599)
        assert await h.state(waiting) == "PENDING"  # not yet
        await h.clock.advance(2)
        await h.until(lambda: waiting not in h.scheduler.pending)
        detail = await h.job(waiting)
        assert detail["state"] == "FAILED" and detail["reason"] == "no_capacity"
        assert detail["message"].startswith("waited 3600 s in queue") and "busy" in detail["message"]
        assert h.backend.launched[waiting] == 0
        first.finish(0)
        await h.until(lambda: blocker not in h.scheduler.running)
        assert await h.state(blocker) == "SUCCEEDED"


async def test_health_checks_of_many_hosts_take_turns(tmp_path):
    """A lab of 120 hosts checked at start: never more than check_concurrency checks at once,
    and every host is found good (none times out waiting for the others' handshakes)."""
    import asyncio

    from fleet.scheduler.records import Policy

    hosts = [host(f"h{i}") for i in range(120)]
    policy = Policy(kill_grace=0.1, check_timeout=2.0, recheck_interval=0.5, check_concurrency=8)
    async with harness(tmp_path, hosts, policy=policy) as h:
        most = 0
        original = h.backend.check

        async def slow_check(host_, timeout):  # a handshake that takes a while
            nonlocal most
            most = max(most, h.scheduler.health.running_checks)
            await asyncio.sleep(0.01)
            await original(host_, timeout)

        h.backend.check = slow_check  # type: ignore[method-assign]
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()), timeout=30)
        assert 1 <= most <= 8


async def test_attempts_ending_in_one_turn_are_written_together_and_a_cancel_in_that_turn_sees_the_end(tmp_path):
    async with harness(tmp_path, [host(f"h{i}") for i in range(4)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        jobs = [await h.submit({"name": f"t{i}", "run": "true"}) for i in range(4)]
        launches = await h.backend.wait_launches(4)
        await h.until(lambda: all(r.started.is_set() for r in h.scheduler.running.values())
                      and h.store.get_job(jobs[0]).state == "RUNNING")
        for launch in launches[:3]:  # three attempts end in the same turn of the loop
            launch.finish(0)
        last = launches[3]
        last.finish(0)
        # Right after its end was judged and before the turn's end was written, a cancel comes
        # for it: it must see the job as ended (not cancel a finished job, nor say RUNNING).
        while last.plan.job_id in h.scheduler.running:
            await asyncio.sleep(0)
        assert h.scheduler._ended, "the end is not written yet: the cancel races it"
        assert h.store.get_job(last.plan.job_id).state == "RUNNING"
        assert await h.scheduler.cancel(last.plan.job_id) == "SUCCEEDED"
        await h.until(lambda: all(h.store.get_job(j).state == "SUCCEEDED" for j in jobs))
        assert h.backend.cancelled == []
        ended = [e for e in h.store.events_after(0, 10_000) if e.type == "attempt.ended"]
        assert sorted(e.job_id for e in ended) == sorted(jobs)  # one each, none lost
        assert len({e.at for e in ended}) == 1, "the four ends were written in one transaction"
        states = [e for e in h.store.events_after(0, 10_000) if e.type == "job.state" and e.job_id in jobs]
        assert all(s.state != "CANCELLING" for s in states)


async def test_pending_starts_are_written_together_after_the_delay_or_taken_by_an_end():
    written: list[list[tuple[str, str, float]]] = []
    starts = PendingStarts(written.append, delay=0.02)
    starts.add("j1", "a1", 1.0)
    starts.add("j2", "a2", 2.0)
    assert written == [] and len(starts) == 2
    assert starts.take() == [("j1", "a1", 1.0), ("j2", "a2", 2.0)]  # an end's transaction takes them
    await asyncio.sleep(0.06)
    assert written == []  # and their timer went with them
    starts.add("j3", "a3", 3.0)
    starts.add("j4", "a4", 4.0)
    await asyncio.sleep(0.06)
    assert written == [[("j3", "a3", 3.0), ("j4", "a4", 4.0)]]  # one write for both
    starts.flush()
    assert len(written) == 1 and len(starts) == 0  # nothing pending, nothing written


async def test_a_start_and_an_end_heard_of_together_are_written_in_one_transaction(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))
        h.scheduler.starts.delay = 60  # the end comes first, however slow the machine
        job = await h.submit({"name": "short", "run": "true"})
        (launch,) = await h.backend.wait_launches(1)
        assert len(h.scheduler.starts) == 1 and h.store.get_job(job).state == "STARTING"
        launch.finish(0)
        await h.until(lambda: h.store.get_job(job).state == "SUCCEEDED")
        mine = [e for e in h.store.events_after(0, 10_000) if e.attempt_id == launch.plan.attempt_id]
        running = [e for e in mine if e.type == "attempt.running"]
        ended = [e for e in mine if e.type == "attempt.ended"]
        assert len(running) == 1 and len(ended) == 1 and running[0].id < ended[0].id
        assert running[0].at == ended[0].at, "the start and the end in one transaction"
        (attempt,) = h.store.attempts(job)
        assert attempt.started_at is not None and attempt.state == "SUCCEEDED"
        assert len(h.scheduler.starts) == 0


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


async def test_a_pass_cut_short_by_its_time_slice_goes_on_in_the_next_until_every_free_slot_is_taken(tmp_path, monkeypatch):
    """A scheduling pass places for at most PASS_SLICE seconds and lets the loop turn (500
    jobs onto free slots were one 120 ms pass); the next pass goes on from where it stopped."""
    monkeypatch.setattr(Scheduler, "PASS_SLICE", 0.0)  # one placement per pass
    async with harness(tmp_path, [host("h1", slots=6)]) as h:
        await h.until(lambda: all(v.health is Health.GOOD for v in h.scheduler.host_views()))

        def passes() -> float:
            (family,) = h.scheduler.metrics.pass_duration.collect()
            return next(s.value for s in family.samples if s.name.endswith("_count"))

        turns, at_pass = 0, []  # the loop's turns, as each pass began

        async def turning() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        place_all = h.scheduler._place_all

        def counted() -> bool:
            at_pass.append(turns)
            return place_all()

        monkeypatch.setattr(h.scheduler, "_place_all", counted)
        ticker = asyncio.create_task(turning())
        before = passes()
        jobs = [job.id for job in h.store.create_jobs([(load_spec(f"name: j{i}\nrun: 'true'\n"), "cpu")
                                                       for i in range(8)], "root")]
        for job_id in jobs:  # all queued before the loop's next turn: one pass would place six
            h.scheduler.submit(h.store.get_job(job_id), load_spec("name: j\nrun: 'true'\n"))
        launches = await h.backend.wait_launches(6)
        assert [launch.plan.job_id for launch in launches] == jobs[:6]  # oldest first, as in one pass
        ticker.cancel()
        assert passes() - before >= 6
        assert len(set(at_pass)) >= 6, f"the loop did not turn between the passes: {at_pass}"
        assert set(h.scheduler.pending) == set(jobs[6:])  # no room left: they wait


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


async def test_a_job_another_replica_wrote_is_cancelled_before_the_leader_takes_it(tmp_path):
    """An HA follower writes a submission and the leader takes it on its next look
    (fleet.scheduler.replicas). A cancel in between (forwarded to the leader) found nothing in
    memory and answered PENDING; the look then queued the job and it ran. Now the leader ends
    it in the database, and the look reads it ended. As a plain user: another user's such job
    is 404, and stays queued."""
    from fleet.scheduler import replicas

    async with harness(tmp_path, [host("h1")]) as h:
        alice, bob = h.store.create_user("alice"), h.store.create_user("bob")
        as_alice = {"Authorization": f"Bearer {h.store.create_token(alice, 'a')}"}
        as_bob = {"Authorization": f"Bearer {h.store.create_token(bob, 'b')}"}
        theirs, kept = h.store.create_jobs(  # as a follower writes them: the leader has neither
            [(load_spec("name: follower-wrote\nrun: 'true'\n"), "cpu"),
             (load_spec("name: kept\nrun: 'true'\n"), "cpu")], "alice")
        assert not h.scheduler.holds(theirs.id)
        refused = await h.api.post(f"/jobs/{theirs.id}/cancel", headers=as_bob)
        assert refused.status_code == 404 and h.store.get_job(theirs.id).state == "PENDING"
        resp = await h.api.post(f"/jobs/{theirs.id}/cancel", headers=as_alice)
        assert resp.status_code == 200 and resp.json()["state"] == "CANCELLED", resp.text
        job = h.store.get_job(theirs.id)
        assert job.state == "CANCELLED" and job.reason == Reason.CANCELLED_BY_USER.value
        replicas.admit(h.scheduler, [theirs.id, kept.id])  # the leader's next look
        assert not h.scheduler.holds(theirs.id) and h.scheduler.holds(kept.id)
        (launch,) = await h.backend.wait_launches(1)
        assert launch.plan.job_id == kept.id
        assert h.store.attempts(theirs.id) == []


async def test_a_batch_handed_over_after_its_write_gives_the_scheduler_only_jobs_still_pending(tmp_path):
    """A large batch is written in a thread, then handed to the scheduler a few hundred jobs
    at a time with the loop served in between (fleet.api.submit). From the write on the jobs
    are in the database for all to act on, and the hand-over queued a job whatever had
    happened to it meanwhile: it ran though cancelled (its CANCELLED written over), or ran
    twice. Here each thing that can happen in the gap is done, then the hand-over: a cancel
    of a job nobody took yet; the leader's look for other replicas' jobs taking two, one then
    cancelled (off the queue) and one run to its end."""
    from fleet.api.submit import _hand_over
    from fleet.scheduler import replicas

    async with harness(tmp_path, [host("h1", slots=1)]) as h:
        specs = [load_spec(f"name: batch-{i}\nrun: 'true'\n") for i in range(5)]
        jobs = h.store.create_jobs([(spec, "cpu") for spec in specs], "root")  # the write
        untaken, taken_ran, taken_cancelled, *rest = [job.id for job in jobs]  # in id order
        assert (await h.api.post(f"/jobs/{untaken}/cancel")).json()["state"] == "CANCELLED"
        replicas.admit(h.scheduler, [taken_ran, taken_cancelled])  # the look, in the gap
        (first,) = await h.backend.wait_launches(1)  # one slot: the other waits in the queue
        assert first.plan.job_id == taken_ran
        assert (await h.api.post(f"/jobs/{taken_cancelled}/cancel")).json()["state"] == "CANCELLED"
        first.finish(0)
        await h.until(lambda: h.store.get_job(taken_ran).state == "SUCCEEDED")

        await _hand_over(h.ctx, jobs, specs)
        for job_id in (untaken, taken_cancelled, taken_ran):
            assert not h.scheduler.holds(job_id), job_id
        for n in (2, 3):  # one slot: the two jobs left, one after the other
            launch = (await h.backend.wait_launches(n))[n - 1]
            assert launch.plan.job_id in rest
            launch.finish(0)
        await h.until(lambda: all(h.store.get_job(j).state == "SUCCEEDED" for j in rest))
        assert h.store.get_job(untaken).state == h.store.get_job(taken_cancelled).state == "CANCELLED"
        assert h.store.attempts(untaken) == h.store.attempts(taken_cancelled) == []
        assert h.backend.launched[taken_ran] == 1  # ran once


async def test_a_batch_whose_hand_over_fails_is_answered_and_run_from_the_leaders_look(tmp_path, monkeypatch):
    """The hand-over reads which jobs are still PENDING after the batch is written. If that
    read fails (the database away for a moment), the batch was made all the same: the
    client gets its jobs, not a 500 (without an idempotency key a retry would make them
    twice), and the leader's look for jobs it does not hold queues them."""
    from fleet.scheduler import replicas

    async with harness(tmp_path, [host("h1", slots=20)]) as h:
        def away(ids):
            raise OSError("the database went away")

        monkeypatch.setattr(h.store, "pending_among", away)
        resp = await h.api.post("/jobs/batch", json={"jobs": [{"name": f"b{i}", "run": "true"} for i in range(12)]})
        assert resp.status_code == 201, resp.text
        ids = [job["id"] for job in resp.json()]
        assert len(ids) == 12 and not any(h.scheduler.holds(i) for i in ids)
        monkeypatch.undo()
        replicas.admit(h.scheduler, h.store.pending_job_ids())  # the leader's next look
        for launch in await h.backend.wait_launches(12):
            launch.finish(0)
        await h.until(lambda: all(h.store.get_job(i).state == "SUCCEEDED" for i in ids))


async def test_the_look_for_other_replicas_jobs_leaves_a_batch_being_handed_over(tmp_path, monkeypatch):
    """The leader's look for jobs other replicas wrote (every half second) read the rows of
    every job of a large batch not yet handed over, on the loop, in one callback (a batch of
    10,000: seconds). Jobs being handed over are the hand-over's: the look leaves them, and
    takes what a hand-over that stopped did not give (here: the look lands between slices)."""
    import fleet.api.submit as submit
    from fleet.scheduler import replicas

    async with harness(tmp_path, [host("h1", slots=12)]) as h:
        read: list[int] = []
        jobs_by_id, pending_among = h.store.jobs_by_id, h.store.pending_among

        def counted(ids):
            read.append(len(ids))
            return jobs_by_id(ids)

        def look_then_read(ids):  # the look lands in the hand-over, before each slice
            replicas.admit(h.scheduler, h.store.pending_job_ids())
            return pending_among(ids)

        monkeypatch.setattr(submit, "HAND_OVER", 4)
        monkeypatch.setattr(h.store, "jobs_by_id", counted)
        monkeypatch.setattr(h.store, "pending_among", look_then_read)
        resp = await h.api.post("/jobs/batch", json={"jobs": [{"name": f"b{i}", "run": "true"} for i in range(12)]})
        assert resp.status_code == 201, resp.text
        ids = [job["id"] for job in resp.json()]
        assert sum(read) == 0 and not h.scheduler.incoming  # the look read no row of the batch
        for launch in await h.backend.wait_launches(12):
            launch.finish(0)
        await h.until(lambda: all(h.store.get_job(i).state == "SUCCEEDED" for i in ids))
        assert all(h.backend.launched[i] == 1 for i in ids)


async def test_why_a_chain_step_and_a_job_another_replica_wrote_are_waiting_not_done(tmp_path):
    """``fleet why`` said "done" for a step waiting for the one before it, and for a job an HA
    follower wrote that the leader has not taken yet: both are waiting, and say for what."""
    async with harness(tmp_path, [host("h1")]) as h:
        resp = await h.api.post("/jobs", json={"name": "pipe", "steps": [
            {"name": "compile", "run": "true"}, {"name": "bench", "run": "true"}]})
        assert resp.status_code == 201, resp.text
        first = resp.json()["id"]
        (launch,) = await h.backend.wait_launches(1)
        step = next(j for j in h.store.list_jobs(owner=None, limit=10) if j.after == first)
        why = (await h.api.get(f"/jobs/{step.id}/why")).json()
        assert why["state"] == "waiting", why
        assert why["summary"] in (f"waiting for step compile (job {first}), now {state}"
                                  for state in ("STARTING", "RUNNING")), why  # as it is now
        (other,) = h.store.create_jobs([(load_spec("name: elsewhere\nrun: 'true'\n"), "cpu")], "root")
        why = (await h.api.get(f"/jobs/{other.id}/why")).json()
        assert why["state"] == "waiting" and "another replica" in why["summary"], why
        launch.finish(0)
        await h.until(lambda: h.store.get_job(first).state == "SUCCEEDED")
        why = (await h.api.get(f"/jobs/{first}/why")).json()
        assert why["state"] == "done" and why["summary"].startswith("SUCCEEDED"), why


async def test_batches_past_sqlite_older_limit_of_999_variables_run(tmp_path):
    """SQLite before 3.32 (Ubuntu 20.04's) takes at most 999 values in a statement: every
    ``IN (...)`` list is cut at IN_CHUNK. Here the limit is set to 999 on every connection
    (``Connection.setlimit``), and a batch of 1,200 jobs is written, started, ended and
    evented, 1,200 artifacts removed and a matrix's 1,200 comparison keys read."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from fleet.models.tables import MatrixRun

    def limit(dbapi_conn, _record) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    event.listen(Engine, "connect", limit)
    try:
        async with harness(tmp_path, [host("h1", slots=1300)], auto=True) as h:
            with h.store.db.write() as conn:  # the limit holds: a list of 1,000 fails here
                with pytest.raises(Exception, match="too many SQL variables"):
                    conn.exec_driver_sql(f"SELECT 1 WHERE 1 IN ({','.join('?' * 1000)})", tuple(range(1000)))
            resp = await h.api.post("/jobs/batch", json={"jobs": [
                {"name": f"b{i}", "run": "true"} for i in range(1200)]})
            assert resp.status_code == 201, resp.text[:500]
            ids = [j["id"] for j in resp.json()]
            await h.until(lambda: h.store.count_jobs(owner=None, states=["SUCCEEDED"]) == 1200, timeout=60)
            assert len(h.store.jobs_by_id(ids)) == 1200
            # starts written together (a pass places at most 20 ms' worth: written here directly)
            h.store.attempts_running([(f"j{i}", f"a{i}", time.time()) for i in range(1200)])
            assert h.store.delete_artifacts([f"a{i}" for i in range(1200)]) == []
            with h.store.db.session() as s:
                s.add(MatrixRun(id="m1", name="nightly", user="root", spec_json="{}", points_json="[]",
                                created_at=time.time()))
                s.commit()
            assert h.store.matrix.series_results([f"k{i}" for i in range(1200)], "nightly", "root", "m2") == []
    finally:
        event.remove(Engine, "connect", limit)


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
