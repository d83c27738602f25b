"""Jobs that wait for another job (pipelines): a chain's steps, or a job whose input is
another job's artifact. Such a job stays PENDING, out of the queues, until the job it waits for
ends: then its ``{job:}``/``{step:}`` inputs become that job's artifacts and it is queued, or
it fails ``dependency_failed`` saying which step ended how (and so do the steps after it)."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable

from fleet.errors import NotFound
from fleet.models.enums import JobState, Reason
from fleet.models.spec import FromRef, JobSpec
from fleet.models.tables import Artifact, Job, NewJob
from fleet.scheduler.artifacts import artifact_input
from fleet.store import Store

log = logging.getLogger(__name__)


class Unresolvable(Exception):
    pass


class Chains:
    """The jobs that wait for another job, until it ends."""

    def __init__(self, store: Store, *, enqueue: Callable[[Job | NewJob, JobSpec], None],
                 done: Callable[[str], None], wake: Callable[[], None],
                 ended: Callable[[str, JobState], None] = lambda queue, state: None) -> None:
        self.store = store
        self._enqueue, self._job_done, self._wake, self._ended = enqueue, done, wake, ended
        self.waiting: dict[str, JobSpec] = {}  # PENDING jobs that wait for another job

    def admit(self, job: Job | NewJob, spec: JobSpec) -> None:
        """Queue a PENDING job, or hold it until the job it waits for has ended."""
        if job.after:
            self.waiting[job.id] = spec
            self._advance(job.id)
        else:
            self._enqueue(job, spec)

    def dependents_of(self, job_id: str) -> None:
        """A job ended: move on the jobs that wait for it."""
        if not self.waiting:
            return
        for dep in self.store.dependents(job_id):
            if dep.id in self.waiting:
                self._advance(dep.id)

    @staticmethod
    def what(job: Job) -> str:
        return f"step {job.step} (job {job.id})" if job.step else f"job {job.id} ({job.name})"

    def _advance(self, job_id: str) -> None:
        spec = self.waiting.get(job_id)
        if spec is None:
            return
        job = self.store.get_job(job_id)
        if job.state != JobState.PENDING.value or not job.after:
            self.waiting.pop(job_id, None)
            return
        try:
            before = self.store.get_job(job.after)
        except NotFound:
            self._fail(job, f"the job it waits for ({job.after}) does not exist")
            return
        state = JobState(before.state)
        if not state.terminal:
            note = f"waiting for {self.what(before)}, now {before.state}"
            if job.message != note:
                self.store.set_job(job.id, message=note)
            return
        if state is not JobState.SUCCEEDED:
            why = f": {before.message}" if before.message else ""
            self._fail(job, f"{self.what(before)} ended {before.state} ({before.reason}){why}")
            return
        try:
            spec = self._resolved(spec, before)
        except Unresolvable as exc:
            self._fail(job, str(exc))
            return
        self.waiting.pop(job_id, None)
        spec_json = spec.model_dump_json()
        self.store.set_job(job.id, spec_json=spec_json, message=None)
        job.spec_json, job.message = spec_json, None
        self._enqueue(job, spec)
        self._wake()

    def _fail(self, job: Job, message: str) -> None:
        self.waiting.pop(job.id, None)
        self.store.finish_job(job.id, JobState.FAILED, Reason.DEPENDENCY_FAILED, message)
        self._ended(job.queue, JobState.FAILED)
        self._job_done(job.id)

    def _resolved(self, spec: JobSpec, before: Job) -> JobSpec:
        """``spec`` with its ``{job:}``/``{step:}`` inputs replaced by ``before``'s artifacts."""
        made = self.store.list_artifacts(None, job_id=before.id, limit=1000)
        inputs = dict(spec.inputs)
        for name, ref in spec.refs().items():
            if ref.job is None and ref.step is None:
                continue
            inputs[name] = artifact_input(_pick(made, ref, self.what(before), name))
        return spec.model_copy(update={"inputs": inputs})


def _pick(made: list[Artifact], ref: FromRef, what: str, name: str) -> Artifact:
    if ref.artifact:
        hits = [a for a in made if ref.artifact in (a.name, posixpath.basename(a.name), a.id)]
        if not hits:
            names = ", ".join(sorted(a.name for a in made)) or "none"
            raise Unresolvable(f"inputs.{name}: {what} made no artifact {ref.artifact!r} (it made: {names})")
        return hits[0]
    declared = [a for a in made if a.kind != "file"]
    if len(declared) == 1:
        return declared[0]
    if len(made) == 1:
        return made[0]
    if not made:
        raise Unresolvable(f"inputs.{name}: {what} made no artifact")
    names = ", ".join(sorted(a.name for a in made))
    raise Unresolvable(f"inputs.{name}: {what} made {len(made)} artifacts ({names}); name one "
                       "with artifact:")
