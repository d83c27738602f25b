"""Jobs written to the database before the leader holds them, in process (tests/harness.py):
an HA follower's submissions, and a large batch between its write and its hand-over to the
scheduler. Cancels, the leader's look for such jobs and `fleet why` meet them there."""

from __future__ import annotations

from fleet.models.enums import Reason
from fleet.models.spec import load_spec
from fleet.scheduler.records import Policy
from tests.harness import harness, host

# The leader's own look for other replicas' jobs never comes during a test that calls
# replicas.admit by hand at the moment it means (on a loaded machine it could come between
# a job's write and what the test does to it first).
NO_LOOK = Policy(kill_grace=0.1, check_timeout=2.0, recheck_interval=0.5, sync_interval=3600)


async def test_a_job_another_replica_wrote_is_cancelled_before_the_leader_takes_it(tmp_path):
    """An HA follower writes a submission and the leader takes it on its next look
    (fleet.scheduler.replicas). A cancel in between (forwarded to the leader) found nothing in
    memory and answered PENDING; the look then queued the job and it ran. Now the leader ends
    it in the database, and the look reads it ended. As a plain user: another user's such job
    is 404, and stays queued."""
    from fleet.scheduler import replicas

    async with harness(tmp_path, [host("h1")], policy=NO_LOOK) as h:
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
    async with harness(tmp_path, [host("h1")], policy=NO_LOOK) as h:
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


async def test_a_plain_users_large_batch_is_checked_whole_before_its_write_and_hand_over(tmp_path):
    """The thread path (a batch of more than ten) as a user who is not an admin. A spec with a
    path where a blob's hash belongs, or a batch past 10,000 specs, is refused whole with the
    field named: nothing is written, nothing is handed over. A batch of another user's jobs
    is not theirs to cancel or explain, during its hand-over or after: 404, and it runs."""
    async with harness(tmp_path, [host("h1", slots=12)]) as h:
        alice, bob = h.store.create_user("alice"), h.store.create_user("bob")
        as_alice = {"Authorization": f"Bearer {h.store.create_token(alice, 'a')}"}
        as_bob = {"Authorization": f"Bearer {h.store.create_token(bob, 'b')}"}
        lying = [{"name": f"b{i}", "run": "true"} for i in range(12)]
        lying[11]["inputs"] = {"model": {"filename": "m.onnx",
                                         "files": {"m.onnx": {"sha256": "../../etc/shadow", "size": 1}}}}
        resp = await h.api.post("/jobs/batch", json={"jobs": lying}, headers=as_bob)
        assert resp.status_code == 422 and "jobs[11]" in resp.text and "64 lowercase hex" in resp.text, resp.text
        resp = await h.api.post("/jobs/batch", json={"jobs": [{"name": "x", "run": "true"}] * 10_001},
                                headers=as_bob)
        assert resp.status_code == 422 and "10000" in resp.text.replace(",", ""), resp.text[:300]
        assert h.store.list_jobs(owner=None, limit=10) == [] and not h.scheduler.incoming

        resp = await h.api.post("/jobs/batch", json={"jobs": [{"name": f"a{i}", "run": "true"} for i in range(12)]},
                                headers=as_alice)
        assert resp.status_code == 201, resp.text
        ids = [job["id"] for job in resp.json()]
        for job_id in (ids[0], ids[11]):
            assert (await h.api.post(f"/jobs/{job_id}/cancel", headers=as_bob)).status_code == 404
            assert (await h.api.get(f"/jobs/{job_id}/why", headers=as_bob)).status_code == 404
        for launch in await h.backend.wait_launches(12):
            launch.finish(0)
        await h.until(lambda: all(h.store.get_job(i).state == "SUCCEEDED" for i in ids))
