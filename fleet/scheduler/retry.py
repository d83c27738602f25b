"""Whether a failed attempt is tried again (DESIGN.md §5.4). Pure.

An infrastructure failure (host lost, controller error) draws on ``retries.infra``; a non-zero
exit of the user's command on ``retries.exit_nonzero`` (0 by default: the job's fault is not
retried unless the spec asks). An elastic pool that found no room for a job the lab can run
sends it back to the lab's queue without drawing on either. Everything else ends the job."""

from __future__ import annotations

from enum import StrEnum

from fleet.models.enums import REASON_CLASS, AttemptState, FailureClass, Reason
from fleet.models.spec import Retries


class Budget(StrEnum):
    INFRA = "infra"
    EXIT = "exit_nonzero"
    BACK_TO_LAB = "back_to_lab"  # no budget: the job waits for the lab, not for that pool again


def decide(state: AttemptState, reason: Reason, infra_failures: int, job_failures: int,
           retries: Retries, lab_takes_it: bool = False) -> Budget | None:
    """The retry budget this failure draws on, or None: no retry. ``lab_takes_it``: the
    attempt ran in an elastic pool and a fixed host of the lab can take the job."""
    if state is not AttemptState.FAILED:
        return None
    if reason is Reason.NO_CAPACITY and lab_takes_it:
        return Budget.BACK_TO_LAB
    if REASON_CLASS.get(reason, FailureClass.JOB) is FailureClass.INFRA and infra_failures < retries.infra:
        return Budget.INFRA
    if reason is Reason.EXIT_NONZERO and job_failures < retries.exit_nonzero:
        return Budget.EXIT
    return None
