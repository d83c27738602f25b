"""Running one attempt: its hooks, the launch (or reattach) on its backend, the verdict on how
it ended, its outputs collected. Returns what happened (``AttemptEnd``); what follows from it
(records, retries, host health) is the scheduler's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.backends.base import AttemptSink, Backend, BackendError, Capability, HostLost, Outcome
from fleet.blobs import BlobStore
from fleet.hooks import Catalog
from fleet.logstore import LogStore
from fleet.models.enums import AttemptState, Reason
from fleet.models.spec import HookCall, InputRef
from fleet.scheduler import artifacts
from fleet.scheduler.hooks import run_hook
from fleet.scheduler.records import Running
from fleet.scheduler.verdict import Verdict, judge

log = logging.getLogger(__name__)


@dataclass
class AttemptEnd:
    outcome: Outcome
    verdict: Verdict
    collected: list[dict[str, Any]] = field(default_factory=list)  # outputs now in the blob store


class AttemptRunner:
    def __init__(self, backends: Mapping[str, Backend], blobs: BlobStore, logs: LogStore,
                 catalog: Catalog, stopping: Callable[[], bool]) -> None:
        self.backends, self.blobs, self.logs = backends, blobs, logs
        self.catalog = catalog  # admins' hook playbooks
        self.inventory_source: str | None = None  # for Ansible (hooks)
        self.stopping = stopping

    async def run(self, run: Running, sink: AttemptSink, log_offset: int) -> AttemptEnd:
        """Follow the attempt to its end; never raises but for a controller shutdown
        (``CancelledError``: the attempt keeps running on its host)."""
        hooks = run.qj.spec.hooks
        collected: list[dict[str, Any]] = []
        try:
            before_failed = None
            fresh = not (run.plan.reattach or run.resolving or log_offset)
            if hooks is not None and isinstance(hooks.before, HookCall | InputRef) and fresh \
                    and not run.cancel_requested:
                before_failed = await self._hook(run, "before", hooks.before)
            if before_failed:
                outcome = Outcome(exit_code=None, error=before_failed)
            elif run.cancel_requested and not log_offset:
                outcome = Outcome(exit_code=None, cancelled=True)
            else:
                backend = self.backends[run.host.backend]
                if run.qj.spec.outputs and not backend.can(Capability.FETCH):
                    raise backend.unsupported(Capability.FETCH)  # before it runs, not after
                outcome = await backend.launch(run.plan, sink, log_offset)
            verdict = judge(outcome, run.plan.runner)
            if verdict.state is AttemptState.SUCCEEDED and outcome.outputs_problem:
                verdict = Verdict(AttemptState.FAILED, Reason.OUTPUT_MISSING, outcome.outputs_problem,
                                  verdict.exit_code)
            elif verdict.state is AttemptState.SUCCEEDED and outcome.outputs:
                collected = await artifacts.collect(self.backends[run.host.backend], self.blobs, run.plan,
                                                    outcome, run.plan.secrets)
        except asyncio.CancelledError:
            raise  # controller shutdown: the attempt keeps running on the host
        except BackendError as exc:
            outcome = Outcome(exit_code=None)
            verdict = Verdict(AttemptState.FAILED, exc.reason, str(exc), None,
                              may_run=isinstance(exc, HostLost) and may_still_run(run, exc))
        except Exception as exc:
            log.exception("attempt %s failed in the controller", run.attempt.id)
            outcome = Outcome(exit_code=None)
            verdict = Verdict(AttemptState.FAILED, Reason.CONTROLLER_ERROR, f"{type(exc).__name__}: {exc}", None)
        if run.cancel_requested and verdict.state is not AttemptState.SUCCEEDED \
                and verdict.reason is not Reason.HOST_LOST:
            verdict = Verdict(AttemptState.CANCELLED, Reason.CANCELLED_BY_USER, "cancelled", verdict.exit_code)
        if hooks is not None and isinstance(hooks.after, HookCall | InputRef) and not self.stopping():
            # Always, also after a failure or a cancel; its failure is recorded, the job's own
            # end stands.
            after_failed = await self._hook(run, "after", hooks.after, verdict)
            if after_failed:
                message = f"{verdict.message}; {after_failed}" if verdict.message else after_failed
                verdict = Verdict(verdict.state, verdict.reason, message, verdict.exit_code, verdict.may_run)
        return AttemptEnd(outcome, verdict, collected)

    async def _hook(self, run: Running, which: str, ref: HookCall | InputRef,
                    verdict: Verdict | None = None) -> str | None:
        spec = run.qj.spec
        extravars: dict[str, Any] = {
            "fleet_job_id": run.qj.job.id, "fleet_attempt_id": run.attempt.id,
            "fleet_host": run.host.name, "fleet_device_class": run.host.device_class}
        if verdict is not None:
            extravars.update(fleet_job_state=verdict.state.value, fleet_job_reason=verdict.reason.value,
                             fleet_exit_code=verdict.exit_code)
        untrusted = {"fleet_job_name": spec.name, "fleet_params": spec.params}
        try:
            return await run_hook(which, ref, catalog=self.catalog, blobs=self.blobs, logs=self.logs,
                                  inventory=self.inventory_source, job_id=run.qj.job.id,
                                  attempt_id=run.attempt.id, host=run.host.name, extravars=extravars,
                                  untrusted=untrusted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s hook of %s failed in the controller", which, run.attempt.id)
            return f"{which} hook: {type(exc).__name__}: {exc}"


def may_still_run(run: Running, exc: HostLost) -> bool:
    """Whether the job may still run on the host we lost. Yes once the request went out;
    before that only for an attempt a previous controller launched (a reattach) and not for a
    follow-up after a hold, whose lease has run out since nobody renewed it."""
    if exc.sent:
        return True
    return run.plan.reattach and not run.resolving
