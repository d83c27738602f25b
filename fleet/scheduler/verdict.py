"""How an attempt ended, classified (DESIGN.md §5.4): a pure function of what the host said."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.backends.base import Outcome
from fleet.models.enums import AttemptState, JobState, Reason


@dataclass(frozen=True)
class Verdict:
    state: AttemptState
    reason: Reason
    message: str | None
    exit_code: int | None
    may_run: bool = False  # host lost while the job may still run there (until its lease ends)


def judge(outcome: Outcome, runner: str) -> Verdict:
    """Classify how an attempt ended (DESIGN.md §5.4). Pure."""
    code = outcome.exit_code
    if outcome.lost:
        return Verdict(AttemptState.FAILED, Reason.HOST_LOST, outcome.lost, None)
    if outcome.fenced:
        return Verdict(AttemptState.FAILED, Reason.HOST_LOST,
                       "the job was stopped on its host: the controller had given it up "
                       "(no word within the attempt lease, or fenced when the host came back)",
                       outcome.exit_code)
    if outcome.cancelled:
        return Verdict(AttemptState.CANCELLED, Reason.CANCELLED_BY_USER, "cancelled", code)
    if outcome.timed_out:
        return Verdict(AttemptState.TIMED_OUT, Reason.TIMED_OUT, f"timed out during {outcome.phase}", code)
    if outcome.error:
        return Verdict(AttemptState.FAILED, Reason.SETUP_FAILED, outcome.error, code)
    if outcome.phase == "setup" and code != 0:
        return Verdict(AttemptState.FAILED, Reason.SETUP_FAILED, f"setup exited with {code}", code)
    if outcome.runner_error:
        cls = outcome.runner_error.get("class")
        message = str(outcome.runner_error.get("message") or "runner failed")
        reason = Reason.SETUP_FAILED if cls == "setup_failed" else Reason.RUNNER_ERROR
        return Verdict(AttemptState.FAILED, reason, message, code)
    if code == 0:
        if runner != "shell" and outcome.result is None:
            return Verdict(AttemptState.FAILED, Reason.RUNNER_ERROR, "runner wrote no result.json", code)
        return Verdict(AttemptState.SUCCEEDED, Reason.SUCCEEDED, None, code)
    if code is None and outcome.signal:
        return Verdict(AttemptState.FAILED, Reason.EXIT_NONZERO, f"killed by signal {outcome.signal}", None)
    hint = " (command not found)" if code == 127 else ""
    return Verdict(AttemptState.FAILED, Reason.EXIT_NONZERO, f"exited with {code}{hint}", code)


JOB_STATE = {
    AttemptState.SUCCEEDED: JobState.SUCCEEDED,
    AttemptState.FAILED: JobState.FAILED,
    AttemptState.CANCELLED: JobState.CANCELLED,
    AttemptState.TIMED_OUT: JobState.TIMED_OUT,
}
