"""The records of benchmark matrices (``Store.matrix``): runs, their jobs' progress, the
verdicts a judged run leaves, schedules, and the results a report compares."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import delete, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection
from sqlmodel import col, select

from fleet.db import Database
from fleet.models.tables import Job, MatrixRun, MatrixSchedule, MatrixVerdict, Result
from fleet.statements import chunked

_J = Job.__table__.c  # type: ignore[attr-defined]
_RUNS = MatrixRun.__table__  # type: ignore[attr-defined]
_SCHEDULES = MatrixSchedule.__table__  # type: ignore[attr-defined]
_VERDICTS = MatrixVerdict.__table__  # type: ignore[attr-defined]


class MatrixJob(NamedTuple):
    id: str
    state: str
    matrix_point: int | None
    matrix_repeat: int | None


class MatrixStore:
    def __init__(self, db: Database, by_id: Callable[[Any, str, str, str | None], Any]) -> None:
        self.db = db
        self._by_id = by_id  # Store._by_id: a row by id or unique prefix, among an owner's

    # ------------------------------------------------------------------ runs

    def get_run(self, run_id: str, owner: str | None = None) -> MatrixRun:
        """A matrix run by id or unique prefix; with ``owner``, only among theirs (NotFound)."""
        run: MatrixRun = self._by_id(MatrixRun, "matrix run", run_id, owner)
        return run

    def list_runs(self, owner: str | None, name: str | None = None, limit: int = 50) -> list[MatrixRun]:
        q = select(MatrixRun)
        if owner is not None:
            q = q.where(MatrixRun.user == owner)
        if name is not None:
            q = q.where(MatrixRun.name == name)
        with self.db.session() as s:
            return list(s.exec(q.order_by(col(MatrixRun.id).desc()).limit(limit)).all())

    def running_runs(self) -> list[MatrixRun]:
        with self.db.session() as s:
            return list(s.exec(select(MatrixRun).where(MatrixRun.state == "RUNNING")).all())

    def jobs(self, run_id: str) -> list[MatrixJob]:
        """A run's jobs, as little of each as its progress needs (not their specs: a run has
        up to 20,000 jobs and this is read each time one of them ends)."""
        with self.db.write() as conn:
            rows = conn.execute(sa_select(_J.id, _J.state, _J.matrix_point, _J.matrix_repeat)
                                .where(_J.matrix_run == run_id).order_by(_J.id)).all()
            return [MatrixJob(*row) for row in rows]

    @staticmethod
    def _end(conn: Connection, run_id: str, state: str, **values: Any) -> bool:
        """RUNNING -> ``state``, once (False: it had ended already)."""
        moved = conn.execute(update(_RUNS).where(_RUNS.c.id == run_id, _RUNS.c.state == "RUNNING")
                             .values(state=state, **values))
        return bool(moved.rowcount)

    def end_run(self, run_id: str, state: str) -> bool:
        """RUNNING -> DONE or CANCELLED, once (False: it had ended already)."""
        with self.db.write() as conn:
            return self._end(conn, run_id, state, ended_at=time.time())

    def judge_run(self, run_id: str, report: dict[str, Any], verdicts: Sequence[dict[str, Any]],
                  state: str = "DONE") -> bool:
        """Store a finished run's verdicts and mark it DONE (or ERROR: it could not be judged),
        once (False: it was judged before, by this replica or another)."""
        now = time.time()
        with self.db.write() as conn:
            if not self._end(conn, run_id, state, ended_at=now,
                             report_json=json.dumps(dict(report, state=state, ended_at=now))):
                return False
            if verdicts:
                conn.execute(insert(_VERDICTS), list(verdicts))
            return True

    # ------------------------------------------------------------------ verdicts

    def last_alarms(self, user: str, name: str, before_run: str) -> dict[tuple[str, str], str]:
        """For each (series, metric) of the matrix ``name``: the run where its latest reported
        change (a regression or an improvement) started, among runs before ``before_run``."""
        with self.db.session() as s:
            q = (select(MatrixVerdict.series, MatrixVerdict.metric, MatrixVerdict.first_run, MatrixVerdict.run)
                 .where(MatrixVerdict.user == user, MatrixVerdict.name == name,
                        col(MatrixVerdict.run) < before_run,
                        col(MatrixVerdict.status).in_(["regression", "improvement"]))
                 .order_by(col(MatrixVerdict.id)))
            out: dict[tuple[str, str], str] = {}
            for series, metric, first, run in s.exec(q).all():
                out[(series, metric)] = first or run
            return out

    def verdicts(self, owner: str | None, statuses: Sequence[str] | None = None,
                 limit: int = 10000) -> list[MatrixVerdict]:
        q = select(MatrixVerdict)
        if owner is not None:
            q = q.where(MatrixVerdict.user == owner)
        if statuses:
            q = q.where(col(MatrixVerdict.status).in_(list(statuses)))
        with self.db.session() as s:
            return list(s.exec(q.order_by(col(MatrixVerdict.id).desc()).limit(limit)).all())

    # ------------------------------------------------------------------ schedules

    def put_schedule(self, row: MatrixSchedule) -> None:
        """Schedule a matrix: the user's schedule of the same name is replaced."""
        with self.db.write() as conn:
            conn.execute(delete(_SCHEDULES).where(_SCHEDULES.c.user == row.user, _SCHEDULES.c.name == row.name))
            conn.execute(insert(_SCHEDULES), row.model_dump())

    def delete_schedule(self, name: str, owner: str | None) -> int:
        """Unschedule ``owner``'s matrix ``name`` (an admin: everyone's of that name)."""
        q = delete(_SCHEDULES).where(_SCHEDULES.c.name == name)
        if owner is not None:
            q = q.where(_SCHEDULES.c.user == owner)
        with self.db.write() as conn:
            return int(conn.execute(q).rowcount)

    def schedules(self, owner: str | None) -> list[MatrixSchedule]:
        q = select(MatrixSchedule)
        if owner is not None:
            q = q.where(MatrixSchedule.user == owner)
        with self.db.session() as s:
            return list(s.exec(q.order_by(col(MatrixSchedule.name), col(MatrixSchedule.user))).all())

    def claim_schedule(self, user: str, name: str, fire_at: float) -> bool:
        """Take the schedule's firing at ``fire_at`` (a cron time): True for exactly one caller,
        and only if it has not fired at or after that time (a missed night runs once)."""
        with self.db.write() as conn:
            moved = conn.execute(update(_SCHEDULES).where(
                _SCHEDULES.c.user == user, _SCHEDULES.c.name == name, _SCHEDULES.c.last_fired < fire_at)
                .values(last_fired=fire_at))
            return bool(moved.rowcount)

    def schedule_fired(self, user: str, name: str, run_id: str | None, error: str | None) -> None:
        with self.db.write() as conn:
            conn.execute(update(_SCHEDULES).where(_SCHEDULES.c.user == user, _SCHEDULES.c.name == name)
                         .values(last_run=run_id, last_error=error))

    # ------------------------------------------------------------------ results

    def results(self, run_id: str) -> list[Result]:
        with self.db.session() as s:
            return list(s.exec(select(Result).where(Result.matrix_run == run_id).order_by(col(Result.id))).all())

    def recent_results(self, owner: str | None, scan: int = 500) -> list[tuple[Result, str | None, int | None]]:
        """The ``scan`` latest results that have a comparison key (``owner``'s, or everyone's),
        newest first, each with its job's matrix run and point."""
        q = (select(Result, Job.matrix_run, Job.matrix_point)
             .join(Job, col(Job.id) == col(Result.job_id), isouter=True)
             .where(col(Result.comparison_key).is_not(None)))
        if owner is not None:
            q = q.where(Result.user == owner)
        with self.db.session() as s:
            return [(r, run, point) for r, run, point in
                    s.exec(q.order_by(col(Result.id).desc()).limit(scan)).all()]

    def regressed_points(self, owner: str | None, runs: Sequence[str]) -> set[tuple[str, int]]:
        """(run, point) of these runs whose verdict on some metric is a regression that no
        later verdict of the same series (an improvement, or unchanged) has ended."""
        if not runs:
            return set()
        latest: dict[tuple[str, str, str, str], tuple[str, int, str]] = {}
        v = _VERDICTS.c
        q = sa_select(v.user, v.name, v.series, v.metric, v.run, v.point, v.status).order_by(v.id)
        if owner is not None:
            q = q.where(v.user == owner)
        with self.db.write() as conn:
            for user, name, series, metric, run, point, status in conn.execute(q).all():
                latest[(user, name, series, metric)] = (run, point, status)
        wanted = set(runs)
        return {(run, point) for run, point, status in latest.values() if status == "regression" and run in wanted}

    def series_results(self, keys: Sequence[str], name: str, user: str, before_run: str,
                       runs: int = 60) -> list[tuple[Result, int | None, str]]:
        """Results of these comparison keys from ``user``'s ``runs`` latest runs of the matrix
        ``name`` before ``before_run`` (another user's runs are theirs to see), each with its
        job's point index and that run's points (JSON)."""
        if not keys:
            return []
        with self.db.session() as s:
            recent = list(s.exec(select(MatrixRun.id).where(
                MatrixRun.user == user, MatrixRun.name == name, col(MatrixRun.id) < before_run)
                .order_by(col(MatrixRun.id).desc()).limit(runs)).all())
            if not recent:
                return []
            found: list[tuple[Result, int | None, str]] = []
            for part in chunked(keys):  # up to MAX_POINTS keys: IN lists SQLite takes
                q = (select(Result, Job.matrix_point, MatrixRun.points_json)
                     .join(Job, col(Job.id) == col(Result.job_id))
                     .join(MatrixRun, col(MatrixRun.id) == col(Result.matrix_run))
                     .where(col(Result.comparison_key).in_(part), col(Result.matrix_run).in_(recent)))
                found.extend((r, p, pts) for r, p, pts in s.exec(q).all())
            return sorted(found, key=lambda row: row[0].id or 0)
