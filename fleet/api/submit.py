"""Submitting jobs: validate every spec (a chain's steps become one job each), check inputs and
hooks are uploaded, resolve ``{artifact: ID}`` inputs, seal secrets, then queue them all in one
transaction."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from sqlalchemy.exc import IntegrityError

from fleet.api.schemas import JobOut
from fleet.errors import NotFound, SpecError
from fleet.models.spec import HookCall, InputRef, JobSpec, expand_steps, validate_spec
from fleet.models.tables import Job, NewJob, User
from fleet.scheduler.artifacts import artifact_input

if TYPE_CHECKING:
    from fleet.api.context import ApiContext

log = logging.getLogger(__name__)

HAND_OVER = 200  # jobs of a large batch given to the scheduler between two turns of the loop


async def submit_many(ctx: ApiContext, bodies: list[dict[str, Any]], user: User,
                      idempotency_key: str | None = None) -> list[JobOut]:
    """Validate every spec (a chain's steps each become a job), write them all in one
    transaction, then queue them. For more than ten specs the validation and the write run in
    a worker thread: a batch of thousands of specs takes seconds there, and the event loop
    (logs, other requests, the scheduler) goes on meanwhile. With ``idempotency_key``, a submission the same user made
    with that key before returns its jobs instead of making new ones (a client retrying after
    a lost answer). Raises SpecError."""
    try:
        if _small(bodies):  # checked here: a thread hand-off cost more than the checks
            accepted, links = validate_jobs(ctx, bodies, user)
        else:
            accepted, links = await asyncio.to_thread(validate_jobs, ctx, bodies, user)
    except (SpecError, HTTPException):
        # A retry of a submission that was made, whose specs would no longer pass (a blob or
        # an artifact gone since): its jobs, not the error. A new key costs no lookup: the
        # write below meets the earlier submission's key row.
        earlier = await asyncio.to_thread(_made_before, ctx, user, idempotency_key)
        if earlier is None:
            raise
        return earlier
    # A large batch is written in a thread too (a thousand jobs held the loop for a third of a
    # second); a few jobs are written here (a thread hand-off cost more than the write), and
    # handed to the scheduler with no await in between.
    try:
        if len(accepted) <= 10:
            jobs = ctx.store.create_jobs(accepted, user.name, links, idempotency_key)
            for job, (spec, _key) in zip(jobs, accepted, strict=True):
                ctx.scheduler.submit(job, spec)
            return [JobOut.of(job) for job in jobs]
        jobs = await asyncio.to_thread(ctx.store.create_jobs, accepted, user.name, links, idempotency_key)
    except IntegrityError:  # made before, or by a twin just now (a batch: thousands of rows)
        earlier = await asyncio.to_thread(_made_before, ctx, user, idempotency_key)
        if earlier is None:
            raise
        return earlier
    await _hand_over(ctx, jobs, [spec for spec, _key in accepted])
    return await asyncio.to_thread(lambda: [JobOut.of(job) for job in jobs])


async def _hand_over(ctx: ApiContext, jobs: list[NewJob], specs: list[JobSpec]) -> None:
    """Give a batch written in a thread to the scheduler, HAND_OVER jobs at a time with the
    loop served in between. Meanwhile (and since the write) the jobs are in the database for
    all to act on: the leader's look for other replicas' jobs may have queued one (and it may
    have run), a user may have cancelled one, a takeover may have read them. So each slice
    hands over only the jobs still PENDING, read on the loop just before (nothing can change
    them between that read and the hand-over). A follower hands over nothing. If that read
    fails, the jobs are written all the same: the rest wait for the leader's look. Until
    its slice is handed over, a job is ``incoming``: the look leaves it to this."""
    incoming = ctx.scheduler.incoming
    ids = [job.id for job in jobs]
    incoming.update(ids)
    try:
        for i in range(0, len(jobs), HAND_OVER):
            if i:
                await asyncio.sleep(0)  # a thousand jobs: let the loop serve others in between
            if not ctx.scheduler.leading:
                return
            ctx.scheduler.fence()  # deposed meanwhile: the next leader takes them
            part = jobs[i:i + HAND_OVER]
            try:
                pending = ctx.store.pending_among(ids[i:i + HAND_OVER])
            except Exception:
                log.exception("handing %d jobs over to the scheduler failed; its next look for "
                              "jobs takes them", len(jobs) - i)
                return
            for job, spec in zip(part, specs[i:i + HAND_OVER], strict=True):
                incoming.discard(job.id)
                if job.id in pending:
                    ctx.scheduler.submit(job, spec)
    finally:
        incoming.difference_update(ids)  # what was not handed over: the look's


def _small(bodies: list[dict[str, Any]]) -> bool:
    """A submission cheap to check on the event loop: a few specs, no chain, few input files
    (each file is a lookup; a 1 MB spec may name thousands)."""
    if len(bodies) > 10:
        return False
    files = 0
    for body in bodies:
        if not isinstance(body, dict) or "steps" in body:
            return False
        inputs = body.get("inputs")
        if isinstance(inputs, dict):
            for ref in inputs.values():
                if isinstance(ref, dict):
                    files += len(ref.get("files") or ()) if isinstance(ref.get("files"), dict) else 1
    return files <= 20


def _made_before(ctx: ApiContext, user: User, idempotency_key: str | None) -> list[JobOut] | None:
    """The jobs an earlier submission of ``user`` with this key made, or None."""
    earlier = ctx.store.jobs_for_key(user.name, idempotency_key) if idempotency_key is not None else None
    return None if earlier is None else [JobOut.of(job) for job in earlier]


def validate_jobs(ctx: ApiContext, bodies: list[dict[str, Any]], user: User
                  ) -> tuple[list[tuple[JobSpec, str]], list[dict[str, Any] | None]]:
    """Check every spec (blocking, reads only; any thread): the accepted specs with their
    queue keys and chain links. Raises SpecError."""
    accepted: list[tuple[JobSpec, str]] = []
    links: list[dict[str, Any] | None] = []
    errors: list[tuple[str, str]] = []
    limit = ctx.limits.max_spec_bytes
    for i, body in enumerate(bodies):
        size = len(json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size > limit:
            where = f"jobs[{i}]: " if len(bodies) > 1 else ""
            raise HTTPException(413, f"{where}a job spec of {size} bytes is over the limit of {limit} "
                                     "bytes (max_spec_bytes)")
    for i, body in enumerate(bodies):
        prefix = f"jobs[{i}]." if len(bodies) > 1 else ""
        try:
            spec = validate_spec(body)
            if spec.steps is not None:
                steps = expand_steps(spec, body)
                first, names = len(accepted), {}
                for k, (step, step_spec, after) in enumerate(steps):
                    try:
                        accepted.append(_accept(ctx, step_spec, user))
                    except SpecError as exc:
                        raise SpecError([(f"steps[{k}].{f}" if f else f"steps[{k}]", m)
                                         for f, m in exc.errors]) from None
                    names[step] = len(accepted) - 1
                    links.append({"step": step, "first": first,
                                  "after": names[after] if after is not None else None})
            else:
                accepted.append(_accept(ctx, spec, user))
                waits = {ref.job for ref in spec.refs().values() if ref.job}
                if len(waits) > 1:
                    raise SpecError([("inputs", "a job takes artifacts from one other job")])
                if any(ref.step for ref in spec.refs().values()):
                    raise SpecError([("inputs", "{step: ...} inputs are for chains (steps:)")])
                links.append({"after_id": _visible_job(ctx, next(iter(waits)), user).id} if waits else None)
        except SpecError as exc:
            errors.extend((prefix + f if f else prefix.rstrip("."), p) for f, p in exc.errors)
    if errors:
        raise SpecError(errors)
    return accepted, links


def _visible_job(ctx: ApiContext, job_id: str, user: User) -> Job:
    try:
        job = ctx.store.get_job(job_id, owner=None if user.is_admin else user.name)
    except NotFound:
        job = None
    if job is None or (not user.is_admin and job.user != user.name):
        raise SpecError([("inputs", f"no job {job_id}")])
    return job


def _accept(ctx: ApiContext, spec: JobSpec, user: User) -> tuple[JobSpec, str]:
    """Check one job spec's inputs and demand; resolve ``{artifact: ID}`` inputs now; seal
    its secrets. Returns (spec, queue key). Raises SpecError."""
    resolved = {}
    for name, ref in spec.refs().items():
        if ref.job or ref.step:
            continue
        try:
            art = ctx.store.get_artifact(ref.artifact or "", owner=None if user.is_admin else user.name)
        except NotFound:
            art = None
        if art is None or (not user.is_admin and art.user != user.name):
            raise SpecError([(f"inputs.{name}", f"no artifact {ref.artifact}")])
        resolved[name] = artifact_input(art)
    if resolved:
        spec = spec.model_copy(update={"inputs": {**spec.inputs, **resolved}})
    def usable(sha: str) -> bool:  # uploaded by this user: someone else's hash is no key
        return ctx.blobs.has(sha) and (user.is_admin or ctx.store.blob_visible(user.name, sha))

    missing = [
        (f"inputs.{name}", f"blob {blob.sha256[:12]} of {rel} is not uploaded")
        for name, ref in spec.inputs.items() if isinstance(ref, InputRef)
        for rel, blob in ref.files.items()
        if not usable(blob.sha256)
    ]
    local = [(f"inputs.{k}", "not uploaded (submit it through the CLI)")
             for k, v in spec.inputs.items() if isinstance(v, str)]
    for which in ("before", "after"):
        hook = getattr(spec.hooks, which) if spec.hooks else None
        if isinstance(hook, HookCall):
            ctx.scheduler.hook_catalog.check(hook, f"hooks.{which}")
        elif not user.is_admin and hook is not None:
            # A playbook is code and hooks run in the controller's Ansible (DESIGN.md §7).
            local.append((f"hooks.{which}", "only admins may send a playbook; name a hook of the "
                                            "server's catalog instead (fleet hooks lists them)"))
        elif isinstance(hook, str):
            local.append((f"hooks.{which}", "not uploaded (submit it through the CLI, which uploads the playbook)"))
        elif isinstance(hook, InputRef):
            if hook.kind != "file":
                local.append((f"hooks.{which}", "must be a playbook file"))
            missing += [(f"hooks.{which}", f"blob {b.sha256[:12]} is not uploaded")
                        for b in hook.files.values() if not usable(b.sha256)]
    if missing or local:
        raise SpecError(local + missing)
    key = ctx.scheduler.demand_for(spec, user.name).key
    return ctx.scheduler.secrets.seal_spec(spec), key  # never stored in clear
