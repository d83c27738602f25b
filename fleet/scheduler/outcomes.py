"""What an ended attempt leaves to record (pure): its result record, checked and with the
job's secrets masked, and the rows of its result and its collected artifacts."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fleet.models.enums import AttemptState, Reason
from fleet.results import InvalidResult, complete_record, key_columns
from fleet.scheduler import artifacts
from fleet.scheduler.records import Running
from fleet.scheduler.verdict import Verdict
from fleet.secrets import mask_text, mask_value


def judged_record(run: Running, result: dict[str, Any] | None,
                  verdict: Verdict) -> tuple[dict[str, Any] | None, Verdict]:
    """The attempt's result record (None without one) and its verdict: a record that does not
    hold makes a succeeded attempt a runner error; both are kept with the secrets masked."""
    record = None
    if result is not None and verdict.state is AttemptState.SUCCEEDED:
        try:
            record = complete_record(result, job_id=run.qj.job.id, attempt_id=run.attempt.id,
                                     host=run.host, runner=run.plan.runner, matrix_run=run.qj.job.matrix_run)
        except InvalidResult as exc:
            verdict = Verdict(AttemptState.FAILED, Reason.RUNNER_ERROR, str(exc), verdict.exit_code)
    if run.plan.secrets:  # what the job reported is kept with its secrets masked
        record = mask_value(record, run.plan.secrets)  # type: ignore[assignment]
        if verdict.message:
            verdict = dataclasses.replace(verdict, message=mask_text(verdict.message, run.plan.secrets))
    return record, verdict


def result_rows(run: Running, verdict: Verdict, record: dict[str, Any] | None
                ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The result row (None without a record) and the artifact rows of a succeeded attempt's
    collected files; the record's main artifact gets the id its row has."""
    qj, attempt, host = run.qj, run.attempt, run.host
    made: list[dict[str, Any]] = []
    if verdict.state is AttemptState.SUCCEEDED and run.collected:
        made = artifacts.rows(run.collected, record, job_id=qj.job.id, attempt_id=attempt.id,
                              user=qj.job.user, host=host.name, device_class=host.device_class)
        if record is not None and record.get("artifact"):
            main = next((a for a in made if a["kind"] != "file"), None)
            if main is not None:
                record["artifact"] = dict(record["artifact"], id=main["id"], sha256=main["sha256"],
                                          size=main["size"])
    if record is None:
        return None, made
    return dict(job_id=qj.job.id, attempt_id=attempt.id, user=qj.job.user, runner=qj.job.runner,
                host=host.name, device_class=host.device_class, record_json=json.dumps(record),
                **key_columns(record)), made
