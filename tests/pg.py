"""Throwaway PostgreSQL for tests: one cluster per test session, one fresh database per test.

Debian's server binaries (``apt-get install postgresql``; .ci/run does) are run directly, no
service: ``initdb`` into a temp dir (as user postgres when we are root: initdb refuses root),
the server on 127.0.0.1 at a free port with its socket in that dir, stopped and deleted at the
end of the session. fsync is off: nothing here has to survive a power cut. Without the binaries
the fixtures skip, saying what to install.

``pg_cluster`` yields the URL of the cluster's ``postgres`` database; ``pg_url`` a URL to an
empty database of its own, dropped after the test.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import free_port

SETTINGS = "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $FLEET_TEST_PG_BIN, Debian's newest, or PATH."""
    candidates = [os.environ.get("FLEET_TEST_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                         reverse=True)
    on_path = shutil.which("pg_ctl")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for bindir in filter(None, candidates):
        if (Path(bindir) / "initdb").exists() and (Path(bindir) / "pg_ctl").exists():
            return Path(bindir)
    return None




class Cluster:
    """A PostgreSQL cluster in a temp dir, owned by ``user`` (None: the current user)."""

    def __init__(self, bindir: Path, user: str | None) -> None:
        self.bindir = bindir
        self.user = user
        self.root = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        if user is not None:
            os.chown(self.root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)

    def _run(self, *args: str) -> None:
        kw = {"user": self.user} if self.user else {}
        proc = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=60, cwd=self.root, **kw)  # type: ignore[call-overload]
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}"
                               f"{proc.stderr}{log}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        for attempt in itertools.count():
            self.port = free_port()
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                          "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                                f"{SETTINGS}", "start")
                return
            except RuntimeError:
                if attempt >= 2:  # a free port taken in between, twice more: not the cause
                    raise

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[str]:
    """A running PostgreSQL for the whole session; yields its ``postgres`` database's URL."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in "
                    "/usr/lib/postgresql/*/bin or PATH: apt-get install postgresql "
                    "(or set FLEET_TEST_PG_BIN)")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
    cluster = Cluster(bindir, user)
    try:
        cluster.start()
        yield cluster.url()
    finally:
        cluster.stop()


_numbers = itertools.count(1)


@pytest.fixture
def pg_url(pg_cluster: str) -> Iterator[str]:
    """A URL to a new, empty database of this test's own (dropped after it, connections too)."""
    name = f"test_{os.getpid()}_{next(_numbers)}"
    with _admin(pg_cluster) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_cluster.rsplit("/", 1)[0] + "/" + name
    with _admin(pg_cluster) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test twice: on a new SQLite file (the default) and a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return request.getfixturevalue("pg_url")
