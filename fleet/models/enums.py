"""States, reasons and failure classes (DESIGN.md §5.3-5.4).

A job's state says where it is; a terminal state always carries a ``Reason`` that says why.
A host's state as ``fleet hosts`` shows it (idle, busy, draining, offline: derived from slot use,
drain and health) is kept apart from its ``Health``, written by health checks and operators.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def active(self) -> bool:
        """Holds (or is about to hold) a slot on a host."""
        return self in {JobState.STARTING, JobState.RUNNING, JobState.CANCELLING}


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)


class AttemptState(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def terminal(self) -> bool:
        return self not in {AttemptState.STARTING, AttemptState.RUNNING}


class Reason(StrEnum):
    """Why a job or attempt ended (or why it is where it is)."""

    SUCCEEDED = "succeeded"
    EXIT_NONZERO = "exit_nonzero"
    SETUP_FAILED = "setup_failed"
    RUNNER_ERROR = "runner_error"
    HOST_LOST = "host_lost"
    NO_CAPACITY = "no_capacity"
    TIMED_OUT = "timed_out"
    CANCELLED_BY_USER = "cancelled_by_user"
    INVALID_SPEC = "invalid_spec"
    CONTROLLER_ERROR = "controller_error"
    OUTPUT_MISSING = "output_missing"  # an output glob matched nothing, a declared artifact absent
    DEPENDENCY_FAILED = "dependency_failed"  # the step (job) it waits for did not succeed


class FailureClass(StrEnum):
    """Whose fault a failed attempt is: decides retries and host health (§5.4)."""

    NONE = "none"
    JOB = "job"  # the user's command or params: no automatic retry unless asked
    INFRA = "infra"  # SSH, host, missing accelerator: host health drops, retried elsewhere
    CANCELLED = "cancelled"


REASON_CLASS: dict[Reason, FailureClass] = {
    Reason.SUCCEEDED: FailureClass.NONE,
    Reason.EXIT_NONZERO: FailureClass.JOB,
    Reason.SETUP_FAILED: FailureClass.JOB,
    Reason.RUNNER_ERROR: FailureClass.JOB,
    Reason.TIMED_OUT: FailureClass.JOB,
    Reason.INVALID_SPEC: FailureClass.JOB,
    Reason.OUTPUT_MISSING: FailureClass.JOB,
    Reason.DEPENDENCY_FAILED: FailureClass.JOB,
    Reason.HOST_LOST: FailureClass.INFRA,
    Reason.CONTROLLER_ERROR: FailureClass.INFRA,
    Reason.NO_CAPACITY: FailureClass.INFRA,
    Reason.CANCELLED_BY_USER: FailureClass.CANCELLED,
}


class Health(StrEnum):
    GOOD = "good"
    UNKNOWN = "unknown"
    BAD = "bad"
    MAINTENANCE = "maintenance"


class JobKind(StrEnum):
    COMPILE = "compile"
    BENCHMARK = "benchmark"
    SHELL = "shell"
