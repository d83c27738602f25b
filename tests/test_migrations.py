"""Schema migrations: the models and the alembic head agree, every revision runs on SQLite and
PostgreSQL, and a database made by the previous release (0.1.0, before alembic) upgrades in
place and keeps its jobs, attempts, results, users and tokens.

``test_models_match_head`` is the one that fails when a model changes without a revision
(``python -m fleet.migrations revision -m ...`` writes it; see fleet/migrations/__init__.py).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import traceback
from collections import Counter
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlmodel import select

from fleet import migrations
from fleet.db import Database
from fleet.leader import LeaderLease
from fleet.models.enums import JobState
from fleet.models.spec import JobSpec
from fleet.models.tables import Token
from fleet.store import Store

DUMP = Path(__file__).parent / "data" / "fleet-3c93149.sql"
# The bootstrap token of the dump's admin (root), as fleet 0.1.0 wrote it to $FLEET_HOME/token.
ROOT_TOKEN = "flt_5YfsByXDV1clWZMqZekqPFoSdwkIvSOGQ8oNpfT22no"
TABLES = {"users", "tokens", "jobs", "attempts", "results", "hosts", "leases", "artifacts", "uploads",
          "submit_keys", "events", "matrix_runs", "matrix_verdicts", "matrix_schedules"}


@pytest.fixture
def db(any_db_url: str):
    database = Database(any_db_url)
    yield database
    database.dispose()


def _tables(db: Database) -> set[str]:
    return set(inspect(db.engine).get_table_names()) - {"alembic_version"}


def test_models_match_head(db: Database) -> None:
    """A fresh database upgraded to head has exactly the models' schema (no forgotten revision)."""
    db.create_schema()
    assert migrations.current(db.engine) == migrations.head()
    assert migrations.schema_diff(db.engine) == [], (
        "fleet/models/tables.py and the migrations differ: add a revision with "
        "`python -m fleet.migrations revision -m '...'`")
    assert _tables(db) == TABLES
    db.create_schema()  # idempotent
    assert migrations.current(db.engine) == migrations.head()


def test_statements_on_the_drivers_cursor_read_and_fail_as_sqlalchemy_does(db: Database) -> None:
    """The hot-path statements run on the driver's own cursor (fleet.statements.exec_driver):
    on both databases a token still finds its user (revoked: none), and a second submission
    with the same idempotency key fails as SQLAlchemy's IntegrityError, which the API turns
    into the first submission's jobs."""
    from sqlalchemy.exc import IntegrityError

    from fleet.statements import INSERT_SUBMIT_KEY, exec_driver

    db.create_schema()
    store = Store(db)
    alice = store.create_user("alice")
    token = store.create_token(alice)
    found = store.user_for_token(token)
    assert found is not None and (found.name, found.is_admin) == ("alice", False)
    assert store.user_for_token(token + "x") is None
    spec = JobSpec(name="once", run="true")
    made = store.create_jobs([(spec, "shell")], "alice", idempotency_key="k1")
    with pytest.raises(IntegrityError):
        store.create_jobs([(spec, "shell")], "alice", idempotency_key="k1")
    assert [j.id for j in store.jobs_for_key("alice", "k1") or []] == [made[0].id]
    assert len(store.list_jobs(owner=None, limit=10)) == 1  # the failed twin wrote nothing
    # A statement on the driver's cursor is part of the transaction: an error after it undoes it.
    with pytest.raises(IntegrityError):
        with db.write() as conn:
            for key in ("k2", "k1"):
                exec_driver(conn, INSERT_SUBMIT_KEY, {"user": "alice", "key": key, "job_ids": "[]", "created_at": 0.0})
    assert store.jobs_for_key("alice", "k2") is None
    (tok,) = [t for t, _name in store.list_tokens("alice")]
    store.revoke_token(tok.id or 0)
    assert store.user_for_token(token) is None


def test_a_connection_postgresql_dropped_is_reported_with_its_cause_and_replaced(pg_url: str) -> None:
    """A statement on the driver's cursor whose connection the server ended: the error names
    the server's reason (not the failed rollback after it), and the next call gets a live
    connection."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from fleet.statements import TOKEN_USER, exec_driver

    database = Database(pg_url)
    try:
        database.create_schema()
        store = Store(database)
        token = store.create_token(store.create_user("alice"))
        with pytest.raises(OperationalError) as err:
            with database.write() as conn:
                backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                with psycopg.connect(pg_url, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
                exec_driver(conn, TOKEN_USER, {"hash": "x"})
        assert "terminating connection due to administrator command" in str(err.value)
        assert err.value.connection_invalidated
        found = store.user_for_token(token)
        assert found is not None and found.name == "alice"
    finally:
        database.dispose()


def test_every_revision_downgrades_and_upgrades_again(db: Database) -> None:
    db.create_schema()
    with db.engine.begin() as conn:
        command.downgrade(migrations.config(conn), "base")
    assert _tables(db) == set()
    db.create_schema()
    assert migrations.schema_diff(db.engine) == []


@pytest.mark.parametrize("made_by", ["0.1.0", "create_all"])
def test_unversioned_database_is_stamped_and_upgraded(db: Database, made_by: str) -> None:
    """Tables but no alembic_version: 0.1.0's schema, or a development build's create_all (which
    already has the leases table): both are taken as 0001 and upgraded, rows kept."""
    # The development builds' create_all made 0.1.0's tables and the leases table (= 0002).
    migrations.upgrade(db.engine, migrations.BASELINE if made_by == "0.1.0" else "0002")
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    store = Store(db)
    store.create_user("old", is_admin=True)
    assert migrations.current(db.engine) is None

    db.create_schema()
    assert migrations.current(db.engine) == migrations.head()
    assert migrations.schema_diff(db.engine) == []
    assert [u.name for u in store.list_users()] == ["old"]


def test_replicas_starting_together_migrate_once(any_db_url: str) -> None:
    """create_schema in several processes' worth of engines at once: one migrates, the others
    wait for it under the lock and find the head (no 'table already exists')."""
    dbs = [Database(any_db_url) for _ in range(4)]
    errors: list[str] = []
    barrier = threading.Barrier(len(dbs))

    def run(d: Database) -> None:
        try:
            barrier.wait()
            d.create_schema()
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(d,)) for d in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [], "\n".join(errors)
    assert migrations.current(dbs[0].engine) == migrations.head()
    for d in dbs:
        d.dispose()


# ---------------------------------------------------------------------- the previous release


def _load_dump(path: Path) -> Counter[str]:
    """Load the SQL dump into a new SQLite file; returns the rows per table it inserted."""
    dump = DUMP.read_text()
    conn = sqlite3.connect(path)
    conn.executescript(dump)
    conn.close()
    return Counter(re.findall(r'^INSERT INTO "?(\w+)"?', dump, re.MULTILINE))


def test_previous_release_database_upgrades_in_place_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    rows = _load_dump(path)
    assert rows == {"jobs": 6, "attempts": 6, "tokens": 4, "users": 2, "results": 1}
    db = Database(f"sqlite:///{path}")
    assert migrations.current(db.engine) is None
    assert "leases" not in inspect(db.engine).get_table_names()

    db.create_schema()
    assert migrations.current(db.engine) == migrations.head()
    assert migrations.schema_diff(db.engine) == []
    store = Store(db)

    jobs = store.list_jobs(owner=None, limit=100)
    assert len(jobs) == rows["jobs"]
    assert [(j.name, j.user, j.state) for j in jobs] == [  # newest first
        ("nap", "alice", "CANCELLED"), ("hello", "alice", "SUCCEEDED"),
        ("quickstart", "root", "SUCCEEDED"), ("boom", "root", "FAILED"),
        ("hello", "root", "SUCCEEDED"), ("hello", "root", "SUCCEEDED"),
    ]
    for job in jobs:
        full = store.get_job(job.id)  # a listing leaves the spec out; the job itself has it
        assert full.model_dump(exclude={"spec_json"}) == job.model_dump(exclude={"spec_json"})
        assert store.get_job(job.id[:12]).id == job.id  # unique prefix
        JobSpec.model_validate_json(full.spec_json)  # the old specs still parse
        (attempt,) = store.attempts(job.id)
        assert attempt.id == job.current_attempt and attempt.state == job.state
        assert attempt.host == job.host == "localhost"
    boom = next(j for j in jobs if j.name == "boom")
    assert (boom.reason, store.attempts(boom.id)[0].exit_code) == ("exit_nonzero", 7)
    assert [j.name for j in store.list_jobs(owner="alice")] == ["nap", "hello"]
    assert [j.name for j in store.list_jobs(owner=None, states=["FAILED"])] == ["boom"]

    quickstart = next(j for j in jobs if j.name == "quickstart")
    result = store.result_for(quickstart.id)
    assert result is not None and result["model"]["name"] == "tinycnn.onnx"
    (row,) = store.list_results(owner=None)
    assert (row.job_id, row.runner, row.device_class) == (quickstart.id, "onnxruntime", "x86_64/cpu")

    assert [(u.name, u.is_admin) for u in store.list_users()] == [("alice", False), ("root", True)]
    root = store.user_for_token(ROOT_TOKEN)
    assert root is not None and (root.name, root.is_admin) == ("root", True)
    with db.session() as s:
        assert len(s.exec(select(Token)).all()) == rows["tokens"]

    # ...and the upgraded database takes new work: jobs, attempts, the HA lease.
    (job,) = store.create_jobs([(JobSpec(name="after", run="true"), "*/*/*")], "alice")
    store.start_attempt(job, "localhost", 1)
    assert store.get_job(job.id).state == JobState.STARTING
    assert len(store.list_jobs(owner=None, limit=100)) == rows["jobs"] + 1
    assert LeaderLease(db, "me", None, 5.0).try_acquire()
    db.dispose()
