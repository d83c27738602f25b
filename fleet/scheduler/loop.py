"""The scheduler: the loop that wires its parts together.

* ``records``: what it keeps of jobs and attempts; ``hostbook``: the hosts, their slots,
  health, drain and facts; ``placement``/``queues``: pure decisions on them;
* ``attempts``: running one attempt and saying how it ended; ``retry``: whether it is tried
  again (pure); ``health``: checks and operators; ``chains``: jobs that wait for a job.

Event-driven: a submitted job, a freed slot or a cancel sets one ``asyncio.Event``; the loop
wakes at once and places as many jobs as fit (no polling interval on the submit->start path).
The slot count of a host is only ever changed here, by the single task that runs the loop and
the attempt tasks it owns, so a host never runs more attempts than its slots.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleet.backends.base import AttemptPlan, Backend, InputFile
from fleet.blobs import BlobStore
from fleet.clock import SYSTEM, Clock
from fleet.config import Settings, fleet_home
from fleet.disk import DiskGuard, is_disk_full
from fleet.errors import SpecError
from fleet.hooks import Catalog
from fleet.inventory import Host
from fleet.logstore import LogStore
from fleet.metrics import Metrics
from fleet.models.enums import REASON_CLASS, AttemptState, FailureClass, Health, JobState, Reason
from fleet.models.spec import JobSpec
from fleet.models.tables import Attempt, Job, NewJob
from fleet.runners import manifests
from fleet.scheduler import cancels, explain, outcomes, plans, replicas, retry, takeover
from fleet.scheduler.attempts import AttemptEnd, AttemptRunner
from fleet.scheduler.chains import Chains
from fleet.scheduler.depth import DepthTeller
from fleet.scheduler.health import HealthChecks
from fleet.scheduler.hooks import hook_log_id
from fleet.scheduler.hostbook import NOT_CHECKED, HostBook
from fleet.scheduler.placement import (
    Demand,
    HostView,
    Unplaceable,
    place,
    static_report,
)
from fleet.scheduler.queues import ClassQueue
from fleet.scheduler.records import Held, HostCheck, JobRef, Policy, QueuedJob, QueueView, Running, Why
from fleet.scheduler.starts import PendingStarts
from fleet.scheduler.verdict import JOB_STATE, Verdict
from fleet.secrets import SecretBox, SecretError
from fleet.store import AttemptRef, Ended, Start, Store

log = logging.getLogger(__name__)

__all__ = ["NOT_CHECKED", "Policy", "Scheduler"]




class _Sink:
    """Where a running attempt's start and log go (the backend calls it; never blocks)."""

    def __init__(self, sched: Scheduler, run: Running) -> None:
        self.sched, self.run = sched, run
        self.bytes = 0

    def started(self, pid: int, at: float) -> None:
        self.sched.fence()
        if self.run.started.is_set():
            return
        self.run.started.set()
        self.sched.starts.add(self.run.qj.job.id, self.run.attempt.id, at or self.sched.clock.time())

    def log(self, data: bytes) -> None:
        self.sched.fence()
        self.bytes += len(data)
        self.sched.logs.append(self.run.qj.job.id, self.run.attempt.id, data)


class Scheduler:
    COMPACT_AFTER = 2000  # queued jobs behind this many in their queue hold no parsed spec
    PREAMBLE_MAX = 64 << 10  # more held than this: the attempt ran (its host's log has it all)
    LOAD_SLICE = 0.02  # start: seconds of loading between two turns of the event loop
    PASS_SLICE = 0.02  # seconds of placing in one pass (the next pass goes on)

    def __init__(
        self, store: Store, hosts: list[Host], backends: Mapping[str, Backend], logs: LogStore,
        policy: Policy | None = None, secrets: SecretBox | None = None,
        blobs: BlobStore | None = None, clock: Clock = SYSTEM,
    ) -> None:
        self.store = store
        self.clock = clock  # wall time for deadlines (fleet.clock); timers use the loop's
        # Where collected outputs go (artifacts); the API's uploads live there too.
        self.blobs = blobs or BlobStore(Settings(home=fleet_home()).blobs_dir)
        # Every backend by name; a host (or elastic pool) belongs to the one named in
        # ``host.backend``, and so does every attempt placed on it (``attempt.backend``).
        self.backends = dict(backends)
        self.book = HostBook(hosts, store)
        self.logs = logs
        # Opens the job secrets the API sealed (fleet.secrets); only _plan uses it.
        self.secrets = secrets or SecretBox(Settings(home=fleet_home()).secret_key_file)
        self.policy = policy or Policy()
        self.kill_grace = self.policy.kill_grace
        # Counted as it happens (fleet.metrics; GET /metrics): passes, placements, ends.
        self.metrics = Metrics()
        store.db.on_write = self.metrics.db_write.observe
        # Clear while start loads what the last leader left (the queue, the running attempts).
        self.loaded = asyncio.Event()
        self.loaded.set()
        self.health = HealthChecks(self.book, store, self.backends, self.policy, on_back=self._follow_up_on,
                                   wake=self.wake, followed=self._followed, loaded=self.loaded, clock=clock)
        self.chains = Chains(store, enqueue=self._enqueue, done=self._job_done, wake=self.wake,
                             ended=self.metrics.job_ended)
        self.runner = AttemptRunner(self.backends, self.blobs, logs,
                                    Catalog(Settings(home=fleet_home()).hooks_dir), lambda: self._stopping)
        self._sync_task: asyncio.Task[None] | None = None
        # Retries waiting for a lost attempt's lease to run out (see _hold), by job id.
        self.held: dict[str, Held] = {}
        # Ids of a batch a request here is handing over (fleet.api.submit): the look for other
        # replicas' jobs leaves them, rather than read thousands of rows on the loop at once.
        self.incoming: set[str] = set()
        self.leading = False  # True once started: this replica schedules (see fleet.leader)
        self._loading: set[str] | None = None  # while start loads: the jobs that ended meanwhile
        self._resume: str | None = None  # the queue a pass cut short was serving (_place_all)
        # Called before every write that only a leader may make; with HA it ends the process
        # if the leader lease ran out (a leader that was frozen must not act when it wakes).
        self.fence: Callable[[], None] = lambda: None
        # Told of every job that ended (fleet.matrix's keeper judges a run whose jobs all ended).
        self.on_job_end: Callable[[str], None] = lambda job_id: None
        self.matrix_active = True  # a matrix run may be running: tell on_job_end (else skip it)
        self.queues: dict[str, ClassQueue] = {}
        self.pending: dict[str, QueuedJob] = {}
        self.running_by_user: Counter[str] = Counter()
        self.running: dict[str, Running] = {}  # by job id
        # The fleet user whose jobs may run as the server's own account on its machine: the
        # one named like the OS account running the server (the first admin fleet makes).
        self.owner = getpass.getuser()
        self.disk: DiskGuard | None = None  # a full disk: no new placements (fleet.disk)
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None  # a pass due when a burst wait runs out
        self.depth = DepthTeller(store, lambda: self.queues)  # queue.depth events
        self._done: dict[str, asyncio.Event] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.starts = PendingStarts(self._write_starts)
        # Attempts ended in this turn of the loop, not yet written (with whether their job is
        # done): written together at the turn's end, or before anything that reads them.
        self._ended: list[tuple[Ended, bool]] = []
        self._demands: dict[Demand, Demand] = {}  # see demand_of
        # explain.waiting_summary's one-line reasons, by queue and history: (when, text).
        self.summaries: dict[tuple[str, frozenset[str], frozenset[str]], tuple[float, str]] = {}

    # ------------------------------------------------------------------ the parts, by name

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def hosts(self) -> dict[str, Host]:
        return self.book.hosts

    @property
    def facts(self) -> dict[str, dict[str, Any]]:
        return self.book.facts

    @property
    def hook_catalog(self) -> Catalog:
        return self.runner.catalog

    @hook_catalog.setter
    def hook_catalog(self, catalog: Catalog) -> None:
        self.runner.catalog = catalog

    @property
    def inventory_source(self) -> str | None:
        return self.runner.inventory_source

    @inventory_source.setter
    def inventory_source(self, source: str | None) -> None:
        self.runner.inventory_source = source

    def backend_of(self, host: Host) -> Backend:
        """The backend that runs attempts on ``host`` (it offered the host)."""
        return self.backends[host.backend]

    def host_views(self) -> list[HostView]:
        return self.book.views()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load host health, reattach running attempts, re-queue waiting jobs, start the loop.

        Called when this replica becomes the leader; until then it only validates submissions
        (the jobs go to the database and the leader picks them up). The database is read in a
        thread and the rows are taken in slices of ``LOAD_SLICE`` seconds, the loop free in
        between (50,000 queued jobs and 2,000 running attempts are seconds of work: bench/scale.py
        "takeover"). Until it has loaded (``loaded``), nothing is placed and cancels and host
        checks wait; a submission is queued at once and not again from the rows read before
        it, nor is a job that ended meanwhile. The attempts are taken first: a retry held for a
        lost attempt (taken with the queue) may follow that attempt again as soon as it is held."""
        self.leading = True
        self.loaded.clear()
        self._loading = set()
        try:
            to_check = self.book.load()
            # Both read before anything runs: a thread reading 50,000 rows while 2,000 followed
            # attempts start talking to their hosts makes every callback wait for the GIL.
            queued = await asyncio.to_thread(self.store.queued_jobs)
            await takeover.load_attempts(self)
            await takeover.load_queue(self, queued)
            for name in to_check:
                self.health.schedule(name)
        except BaseException:  # failed or stopped half way: this replica does not schedule
            self.leading = False
            raise
        finally:  # and nothing waits for it for ever
            self._loading = None
            self.loaded.set()
        await asyncio.sleep(0)  # the cancels that waited go first, then the first pass
        self._loop_task = asyncio.create_task(self._loop(), name="fleet-scheduler")
        self._wake.set()  # what was queued before this replica led is placed now
        self._sync_task = asyncio.create_task(replicas.follow(self), name="fleet-sync")

    async def stop(self) -> None:
        """Stop placing; leave running attempts detached on their hosts for the next controller."""
        self._stopping = self.health.stopping = True
        self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
        tasks = [r.task for r in self.running.values() if r.task is not None]
        tasks += list(self.health.tasks.values())
        if self._sync_task is not None:
            tasks.append(self._sync_task)
        for qj in self.pending.values():
            if qj.expiry is not None:
                qj.expiry.cancel()
        for held in self.held.values():
            held.handle.cancel()
        await self.depth.stop()
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self._write_ended()  # attempts that ended (or started) as we stopped
            self.starts.flush()
        except Exception:  # deposed, or the database is gone: the next leader follows them
            log.exception("recording the last attempts' ends failed")
        for backend in self.backends.values():
            try:
                await backend.close()
            except Exception:
                log.exception("closing backend %s failed", backend.name)
        self.logs.close_all()

    # ------------------------------------------------------------------ submit / cancel / queries

    def demand_of(self, spec: JobSpec, user: str) -> Demand:
        """What the job asks of a host; a job of anyone but the server's owner is a guest
        (never run as the server's own account on the controller's machine)."""
        demand = Demand.of(spec, guest=user != self.owner)
        # One object per distinct demand (thousands of queued jobs share a handful).
        if len(self._demands) > 10_000:
            self._demands.clear()
        return self._demands.setdefault(demand, demand)

    def demand_for(self, spec: JobSpec, user: str) -> Demand:
        """The job's demand; raises SpecError if no host in the inventory could ever take it."""
        if spec.runner not in manifests():
            known = ", ".join(sorted(manifests()))
            raise SpecError([("runner", f"unknown runner {spec.runner!r} (known: {known})")])
        problems = manifests()[spec.runner].param_problems(spec.params) if spec.runner else []
        if problems:
            raise SpecError(problems)
        demand = self.demand_of(spec, user)
        if not demand.requires and self.book.fits(demand):
            return demand  # some host can take it (known per queue, not looked up per job)
        hosts = list(self.book.hosts.values())
        if demand.pool is not None and not any(demand.pool in h.pools for h in hosts):
            pools = ", ".join(sorted({p for h in hosts for p in h.pools}))
            raise SpecError([("resources.pool", f"no pool named {demand.pool!r} (pools: {pools})")])
        if demand.requires:
            self.book.load_facts()  # a follower has not seen the leader's probes
        report = static_report(demand, hosts, manifests().get(demand.runner), self.book.facts)
        if report is not None:
            raise SpecError([("resources", f"no host can ever run this job: {report.summary()}")])
        return demand

    def load_facts(self) -> None:
        self.book.load_facts()

    def set_facts(self, name: str, facts: dict[str, Any]) -> None:
        """A probe's findings: stored, and placement sees them from now on."""
        self.book.set_facts(name, facts)
        self._wake.set()

    def submit(self, job: Job | NewJob, spec: JobSpec) -> None:
        """Queue a job already written to the DB and wake the loop. Never blocks. On a
        follower this does nothing: the leader finds the job in the database."""
        if not self.leading:
            return
        if self.holds(job.id):
            return  # the look for other replicas' jobs found it first (fleet.scheduler.replicas)
        self.chains.admit(job, spec)
        self._wake.set()

    def holds(self, job_id: str) -> bool:
        """Whether the scheduler has the job already (queued, waiting on its chain, running)."""
        return job_id in self.pending or job_id in self.running or job_id in self.chains.waiting

    def _queued_job(self, job: Job | JobRef | NewJob, spec: JobSpec) -> QueuedJob:
        inputs = tuple(
            InputFile(rel_path=ref.host_path(name) if ref.kind == "file" else f"{ref.host_path(name)}/{rel}",
                      sha256=blob.sha256, size=blob.size)
            for name, ref in spec.uploaded().items()
            for rel, blob in ref.files.items()
        )
        return QueuedJob(job=JobRef.of(job), _spec=spec, demand=self.demand_of(spec, job.user), inputs=inputs)

    def _restored(self, job: Job | JobRef | NewJob, spec: JobSpec, attempts: Sequence[Attempt] | None = None) -> QueuedJob:
        """A job a previous controller knew, with its retry history rebuilt from its attempts
        (``attempts``: read already, else read now)."""
        qj = self._queued_job(job, spec)
        if attempts is None:
            attempts = self.store.attempts(job.id) if job.attempt_count else []
        for a in attempts:
            reason = Reason(a.reason) if a.reason else None
            if reason is Reason.NO_CAPACITY and self._lab_takes(qj, a.host):
                qj.no_capacity = _with(qj.no_capacity, a.host)  # as _retry decided (retry.Budget.BACK_TO_LAB)
            elif reason is not None and REASON_CLASS.get(reason) is FailureClass.INFRA:
                qj.infra_failures += 1
                qj.failed_on = _with(qj.failed_on, a.host)
            elif reason is Reason.EXIT_NONZERO:
                qj.job_failures += 1
                qj.failed_on = _with(qj.failed_on, a.host)
        return qj

    def _enqueue(self, job: Job | JobRef | NewJob, spec: JobSpec) -> None:
        qj = self.pending.get(job.id)
        if qj is None:
            qj = self.pending[job.id] = self._queued_job(job, spec)
        demand = qj.demand
        if spec.queue_timeout is not None and qj.expiry is None:
            # Counted from submission for the first attempt, from the requeue for a retry.
            since = job.created_at if not job.attempt_count else self.clock.time()
            delay = max(0.0, since + spec.queue_timeout - self.clock.time())
            qj.expiry = asyncio.get_running_loop().call_later(delay, self._expire, job.id)
        queue = self.queues.get(demand.key)
        if queue is None:
            queue = self.queues[demand.key] = ClassQueue(demand.key)
        queue.push(job.id, spec.priority, job.user)
        if len(queue) > self.COMPACT_AFTER:
            qj.compact()  # deep in a long queue: its spec is parsed again when it is placed
        self.depth.changed()

    async def cancel(self, job_id: str) -> str:
        """Cancel a job. Queued: ends now. Running: TERM/KILL on the host; the attempt's end
        finishes the job. Returns the state after the request. Idempotent (fleet.scheduler.cancels)."""
        return await cancels.cancel(self, job_id)

    def _hold(self, qj: QueuedJob, delay: float, attempt: AttemptRef | None, host: Host | None) -> None:
        """Queue ``qj`` only after ``delay`` seconds (its lost attempt may run until then)."""
        handle = asyncio.get_running_loop().call_later(delay, self._unhold, qj.job.id)
        self.held[qj.job.id] = Held(qj, handle, self.clock.time() + delay, attempt, host)

    def _unhold(self, job_id: str) -> None:
        """The lost attempt has surely stopped. Unless its host is known bad, first ask it how
        the attempt ended (it may have finished before the host dropped off: then that is the
        job's result); if the host does not answer, retry elsewhere."""
        held = self.held.pop(job_id, None)
        if held is None:
            return
        if held.attempt is not None and held.host is not None \
                and self.book.health.get(held.host.name) is not Health.BAD:
            self._resolve(held.qj, held.attempt, held.host)
            return
        self.pending[job_id] = held.qj
        self._enqueue(held.qj.job, held.qj.spec)
        self._wake.set()

    def _follow_up_on(self, host: Host) -> None:
        """The host is back: follow the attempts lost on it whose jobs wait to be retried. Their
        lease is renewed as soon as they are followed again, so they run on to their real end."""
        for job_id, held in list(self.held.items()):
            if held.attempt is not None and held.host is not None and held.host.name == host.name:
                del self.held[job_id]
                held.handle.cancel()
                self._resolve(held.qj, held.attempt, host)

    def _followed(self) -> set[str]:
        return {r.attempt.id for r in self.running.values()}

    def _resolve(self, qj: QueuedJob, attempt: AttemptRef, host: Host) -> None:
        self.fence()
        self._write_ended()
        self.book.take(host, attempt.slots, placed=False)
        self.running_by_user[qj.job.user] += 1
        run = Running(qj=qj, attempt=attempt, host=host, plan=self._plan(qj, attempt, host), resolving=True)
        run.plan.reattach = run.plan.follow_only = True
        run.started.set()
        self.running[qj.job.id] = run
        self.store.reopen_attempt(qj.job.id, attempt.id,
                                  f"lost, then found again: following it on {host.name}")
        offset = self.logs.size(qj.job.id, attempt.id)
        run.task = asyncio.create_task(self._run_attempt(run, offset), name=f"resolve-{attempt.id}")

    def _dequeue(self, job_id: str) -> QueuedJob | None:
        """Take a waiting job out of its queue (placement, cancel, expiry)."""
        qj = self.pending.pop(job_id, None)
        if qj is None:
            return None
        queue = self.queues.get(qj.demand.key)
        if queue is not None:
            queue.remove(job_id)
            if not len(queue):
                del self.queues[qj.demand.key]
            self.depth.changed()
        if qj.expiry is not None:
            qj.expiry.cancel()
            qj.expiry = None
        return qj

    def _expire(self, job_id: str) -> None:
        """queue_timeout passed: the job ends no_capacity, saying why it could not start."""
        self.fence()
        if job_id not in self.pending:
            return
        summary = explain.waiting_summary(self, self.pending[job_id])
        qj = self._dequeue(job_id)
        assert qj is not None
        message = f"waited {qj.spec.queue_timeout:g} s in queue {qj.demand.key}: {summary}"
        self.store.finish_job(job_id, JobState.FAILED, Reason.NO_CAPACITY, message)
        self.metrics.job_ended(qj.job.queue, JobState.FAILED)
        self._job_done(job_id)

    def why(self, job_id: str) -> Why:
        """Why a job is where it is (fleet.scheduler.explain)."""
        return explain.why(self, job_id)

    def queue_views(self, limit: int = 50) -> list[QueueView]:
        """Each device-class queue in the order it is taken (fleet.scheduler.explain)."""
        return explain.queue_views(self, limit)

    async def wait_done(self, job_id: str, timeout: float) -> None:
        """Return when the job is terminal or ``timeout`` passed (on the leader)."""
        job = self.store.get_job(job_id)
        if JobState(job.state).terminal:
            return
        event = self._done.setdefault(job.id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    def _job_done(self, job_id: str) -> None:
        if self._loading is not None:
            self._loading.add(job_id)  # start must not queue it from the rows it read before
        event = self._done.pop(job_id, None)
        if event is not None:
            event.set()
        self.chains.dependents_of(job_id)
        if self.matrix_active:
            self.on_job_end(job_id)

    # ------------------------------------------------------------------ operators

    def drain(self, name: str, drained: bool = True) -> None:
        """A drained host finishes its running attempts and takes no new ones."""
        self.book.drain(name, drained)
        self._wake.set()

    def maintenance(self, name: str, on: bool = True) -> None:
        self.health.maintenance(name, on)

    async def check_host(self, name: str) -> HostCheck:
        return await self.health.check_host(name)

    async def gc_hosts(self, max_age: float, max_bytes: int) -> dict[str, tuple[int, int, int]]:
        return await self.health.gc_hosts(max_age, max_bytes)

    # ------------------------------------------------------------------ placement loop

    async def _loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                with self.metrics.pass_duration.time():
                    cut = self._place_all()
            except Exception:
                log.exception("scheduling pass failed")
                self._wake_in(1.0)  # its placements wait again: a look in a second, not a spin
                continue
            if cut:  # the pass ran out of its time: others first, then the next pass goes on
                self._wake.set()
                await asyncio.sleep(0)

    def burst_block(self, queue: ClassQueue, demand: Demand) -> tuple[str | None, float | None]:
        """Why the burst policy keeps this queue off elastic pools now, and in how many
        seconds waiting alone would open them (fleet.scheduler.burst)."""
        if demand.burst != "allowed" or not self.book.elastic:
            return None, None
        oldest = queue.oldest()
        if oldest is None:
            return None, None
        waited = max(0.0, self.clock.time() - self.pending[oldest].job.created_at)
        return self.policy.burst.block(demand, waited, len(queue))

    def _wake_in(self, seconds: float) -> None:
        """A pass in ``seconds`` (a queue's burst wait runs out then); the earliest one asked."""
        loop = asyncio.get_running_loop()
        at = loop.time() + seconds
        if self._timer is not None and self._timer.when() <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake.set()

    def wake(self) -> None:
        """Run a scheduling pass soon (a job came, a host is back, the disk has room again)."""
        self._wake.set()

    def _place_all(self) -> bool:
        """One scheduling pass. Returns whether it was cut short by ``PASS_SLICE``: the next
        pass goes on from the queue it was serving."""
        if self.disk is not None and self.disk.full:
            return False  # no new attempts while the disk is full: what runs goes on (fleet.disk)
        placed: list[tuple[QueuedJob, Host]] = []
        # A pass places for at most PASS_SLICE seconds, then lets the loop turn and goes on in
        # the next pass from the queue it was serving (a burst of 500 jobs onto free slots was
        # one 120 ms pass: bench/scale.py "fill").
        queues = list(self.queues.values())
        first = next((i for i, q in enumerate(queues) if q.key == self._resume), 0)
        self._resume = None
        deadline = time.perf_counter() + self.PASS_SLICE
        try:
            for queue in queues[first:] + queues[:first]:
                while len(queue):
                    if placed and time.perf_counter() > deadline:
                        self._resume = queue.key
                        return True
                    job_id = queue.head(self.running_by_user)
                    assert job_id is not None
                    qj = self.pending[job_id]
                    block, opens_in = self.burst_block(queue, qj.demand)
                    # Only the few hosts the host book's ordered index says can hold the best
                    # choice: the same choice as over every host, at the cost of the few.
                    inputs = [f.sha256 for f in qj.inputs]
                    failed_on, no_capacity = frozenset(qj.failed_on), frozenset(qj.no_capacity)
                    decision = place(
                        qj.demand, self.book.pick(qj.demand, inputs, failed_on, block, no_capacity),
                        self.book.static_for(qj.demand), inputs=inputs, failed_on=failed_on,
                        burst_block=block, no_capacity=no_capacity,
                    )
                    if isinstance(decision, Unplaceable):
                        if opens_in is not None:
                            self._wake_in(opens_in + 0.01)
                        break
                    self._dequeue(job_id)
                    host = self.book.hosts[decision.host]
                    # Taken now, so the next decision sees the room left; written below.
                    self.book.take(host, qj.demand.slots)
                    self.running_by_user[qj.job.user] += 1
                    placed.append((qj, host))
        finally:
            if placed:
                self._commit(placed)
        return False

    def _commit(self, placed: list[tuple[QueuedJob, Host]]) -> None:
        """Write a pass's placements in one transaction (the attempt rows are the slot
        leases: written before anything is launched), then launch them."""
        try:
            self.fence()
            self._write_ended()  # a job retried in this turn: its last end before its next start
            attempts = self.store.start_attempts(
                [(qj.job, host.name, qj.demand.slots, host.backend) for qj, host in placed])
        except BaseException:
            for qj, host in placed:  # nothing was written: they wait again
                self.book.give_back(host, qj.demand.slots)
                self.running_by_user[qj.job.user] -= 1
                self.pending[qj.job.id] = qj
                self._enqueue(qj.job, qj.spec)
            raise
        now = self.clock.time()
        for (qj, host), attempt in zip(placed, attempts, strict=True):
            if attempt.number == 1:
                self.metrics.queue_wait.labels(qj.job.queue).observe(max(0.0, now - qj.job.created_at))
            run = Running(qj=qj, attempt=attempt, host=host, plan=self._plan(qj, attempt, host))
            self.running[qj.job.id] = run
            run.task = asyncio.create_task(self._run_attempt(run, 0), name=f"attempt-{attempt.id}")

    def _plan(self, qj: QueuedJob, attempt: AttemptRef, host: Host) -> AttemptPlan:
        """The attempt as the backend runs it; its secrets opened, and masked in its log."""
        try:
            env, secrets = self.secrets.open_envs(qj.spec)
            failure = None
        except SecretError as exc:  # never run the job without its secrets: setup fails saying why
            env, secrets, failure = {}, [], str(exc)
        self.logs.redact(attempt.id, secrets)
        return plans.build(qj.job.id, qj.spec, attempt.id, host, env=env, secrets=secrets,
                           secret_failure=failure, inputs=list(qj.inputs), grace=self.kill_grace,
                           run_as=plans.account_for(host, qj.job.user, self.owner),
                           facts=self.facts.get(host.name))

    # ------------------------------------------------------------------ attempts

    async def _run_attempt(self, run: Running, log_offset: int) -> None:
        sink = _Sink(self, run)
        sink.bytes = log_offset
        end = await self.runner.run(run, sink, log_offset)
        run.collected = end.collected
        self._finish(run, end, sink.bytes)

    def _write_starts(self, started: list[Start]) -> None:
        self.fence()  # deposed since they were heard of: the next leader follows these attempts
        self._durably(self.store.attempts_running, started)

    def _write_ended(self) -> None:
        """Write the ends of this turn's attempts (with the starts before them: an end must not
        be written over), then tell who waits for their jobs. Runs at the turn's end, and first
        in whatever reads or writes those jobs next (a pass, a cancel, a stop)."""
        ended, self._ended = self._ended, []
        if not ended:
            return
        started = self.starts.take()  # written first, in the same transaction (fleet.scheduler.starts)
        self.fence()  # deposed meanwhile: the next leader follows these attempts to their end
        self._durably(self.store.finish_many, [e for e, _done in ended], started)
        for e, done in ended:
            if done:
                self._job_done(e.job_id)

    def _finish(self, run: Running, end: AttemptEnd, log_bytes: int) -> None:
        """Record how an attempt ended, then retry the job, hold it, or end it."""
        self.fence()
        outcome = end.outcome
        qj, attempt, host = run.qj, run.attempt, run.host
        record, verdict = outcomes.judged_record(run, outcome.result, end.verdict)
        self.logs.close(attempt.id, qj.job.id)
        if qj.spec.hooks is not None:
            for which in ("before", "after"):
                self.logs.close(hook_log_id(attempt.id, which), qj.job.id)
        # Release the lease and the fair-share count before deciding on a retry.
        self.book.give_back(host, attempt.slots)
        self.running_by_user[qj.job.user] -= 1
        del self.running[qj.job.id]
        lost_again = run.resolving and verdict.reason is Reason.HOST_LOST
        if not lost_again:
            self.health.after_attempt(host, verdict)
        if run.resolving and not lost_again:
            verdict = Verdict(verdict.state, verdict.reason,
                              f"the host came back and the attempt had ended: {verdict.message or 'succeeded'}",
                              verdict.exit_code)
        if verdict.state is AttemptState.SUCCEEDED:
            self.book.add_cached(host.name, (f.sha256 for f in qj.inputs))
        attempt_values: dict[str, Any] = dict(
            state=verdict.state.value, reason=verdict.reason.value, message=verdict.message,
            exit_code=verdict.exit_code, ended_at=outcome.ended_at or self.clock.time(), log_bytes=log_bytes,
        )
        if outcome.started_at is not None:
            attempt_values["started_at"] = outcome.started_at
        if lost_again:  # still unknown or stopped by its lease: retry, counted when first lost
            again = True
        else:
            again = self._retry(qj, host, verdict)
        job_values: dict[str, Any]
        if again:
            after = (f" once its lease ends ({self.policy.lost_hold:g} s) so it never runs twice"
                     if verdict.may_run else "")
            job_values = dict(state=JobState.RETRYING.value, reason=verdict.reason.value,
                              message=f"attempt {attempt.number} on {host.name}: {verdict.message}; "
                                      f"retrying{after}")
        else:
            job_values = dict(state=JOB_STATE[verdict.state].value, reason=verdict.reason.value,
                              message=verdict.message, ended_at=self.clock.time())
        result_row, made = outcomes.result_rows(run, verdict, record)
        if not self._ended:
            asyncio.get_running_loop().call_soon(self._write_ended)
        self._ended.append((Ended(attempt.id, attempt_values, qj.job.id, job_values, result_row, tuple(made)),
                            not again))
        self.metrics.attempt_ended(verdict.reason, host.device_class, qj.job.queue,
                                   None if again else JOB_STATE[verdict.state],
                                   outcome.started_at, attempt_values["ended_at"])
        if again and verdict.may_run:
            self._hold(qj, self.policy.lost_hold, attempt, host)
        elif again:
            self.pending[qj.job.id] = qj
            self._enqueue(qj.job, qj.spec)
        self._wake.set()

    def _retry(self, qj: QueuedJob, host: Host, verdict: Verdict) -> bool:
        """Whether to try again (``fleet.scheduler.retry``); counts it against its budget."""
        if self._stopping:
            return False
        budget = retry.decide(verdict.state, verdict.reason, qj.infra_failures, qj.job_failures,
                              qj.spec.retries, lab_takes_it=self._lab_takes(qj, host.name))
        if budget is None:
            return False
        if budget is retry.Budget.BACK_TO_LAB:
            qj.no_capacity = _with(qj.no_capacity, host.name)
            return True
        if budget is retry.Budget.INFRA:
            qj.infra_failures += 1
        else:
            qj.job_failures += 1
        qj.failed_on = _with(qj.failed_on, host.name)
        return True

    def _lab_takes(self, qj: QueuedJob, host: str) -> bool:
        """Whether ``host`` is an elastic pool and the lab can run the job instead (not
        ``burst: only``, and some fixed host fits it): then a pool without room sends the job
        back to the lab; otherwise its retries decide and it may try the pool again."""
        known = self.book.hosts.get(host)
        if known is None or not known.elastic or qj.spec.burst == "only":
            return False
        static = self.book.static_for(qj.demand)
        return any(why is None and not self.book.hosts[name].elastic for name, why in static.items()
                   if name in self.book.hosts)

    def _durably(self, write: Callable[..., Any], *args: Any) -> Any:
        """A write that must not be lost (how an attempt ended): when the disk is full, free
        the reserve (fleet.disk) and write again."""
        for attempt in range(3):
            try:
                return write(*args)
            except Exception as exc:
                if self.disk is None or not is_disk_full(exc) or attempt == 2:
                    raise
                log.error("disk full while recording an attempt's end; using the reserve")
                self.disk.hit(exc)
                self.disk.full = True
        return None



def _with(names: tuple[str, ...], name: str) -> tuple[str, ...]:
    """``names`` and ``name``, each once (a queued job's hosts kept as a tuple: see QueuedJob)."""
    return names if name in names else (*names, name)
