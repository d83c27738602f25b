"""The scheduler's parts, in process (tests/harness.py): the host book, the retry policy,
health checks, the attempt runner and the loop that wires them, with a backend the test
drives and the API over an ASGI transport. No server process, no sleeps."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleet.db import Database
from fleet.models.enums import AttemptState, Health, JobState, Reason
from fleet.models.spec import Retries, load_spec
from fleet.scheduler import retry
from fleet.scheduler.hostbook import NOT_CHECKED, HostBook
from fleet.scheduler.loop import Scheduler
from fleet.scheduler.placement import Demand
from fleet.scheduler.starts import PendingStarts
from fleet.store import Store
from tests.harness import harness, host


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
