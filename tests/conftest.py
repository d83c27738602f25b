"""Shared fixtures: an isolated FLEET_HOME, a real ``fleet serve`` process, the CLI."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from fleet.client import discovery as local
from fleet.client.sync import Client
from fleet.config import load_settings
from tests.agent_driver import Agent
from tests.lab import procs
from tests.zygote import spawn_server, zygote

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.lab.fixtures", "tests.pg"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: a test that takes tens of seconds; runs first")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first (longest-first keeps the workers' last tests short, so none waits
    alone at the end). Stable: every xdist worker gets the same order."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
    _xdist_groups(config, items)


def _xdist_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` sends the tests of one ``xdist_group`` to one worker by a suffix on
    their node ids, which pytest-xdist 3.8 writes to ``item._nodeid``; pytest 9.2 keeps node ids
    in ``item._id`` instead, so the groups were silently ignored (the image tests' module
    fixtures, a CPU image build among them, ran on every worker at once). Written here the way
    pytest 9.2 reads it; older pytest, where xdist's own works, is left alone."""
    if not getattr(config.option, "loadgroup", False):  # set by xdist for --dist loadgroup with -n
        return
    try:
        from _pytest.nodeid import coerce_node_id  # type: ignore[import-not-found]
    except ImportError:
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")  # type: ignore[attr-defined]


@pytest.fixture
def fleet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "fleet-home"
    home.mkdir()
    monkeypatch.setenv("FLEET_HOME", str(home))
    for var in ("FLEET_SERVER", "FLEET_TOKEN", "FLEET_INVENTORY", "FLEET_DATABASE"):
        monkeypatch.delenv(var, raising=False)
    return home


_template: Path | None = None


def schema_template() -> Path:
    """An empty SQLite database at the newest migration, made once per test process: a server
    started on a copy finds its schema there: migrating a fresh database costs a server forked
    by the zygote 0.05-0.07 s of CPU, one on a copy 0.01 s (~170 servers a run). Tests of the
    migrations themselves, and the servers ``Fleet`` does not start (the CLI's auto-start, the
    HA replicas), migrate a fresh database as users' servers do."""
    global _template
    if _template is None:
        from fleet.db import Database

        where = Path(tempfile.mkdtemp(prefix="fleet-schema-"))
        atexit.register(shutil.rmtree, where, True)
        db = Database(f"sqlite:///{where / 'fleet.db'}")
        try:
            db.create_schema()
        finally:
            db.dispose()
        assert not (where / "fleet.db-wal").exists()  # all of it in the one file copied
        _template = where / "fleet.db"
    return _template


class Fleet:
    """A running ``fleet serve`` (the local server, started the way the CLI starts it)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.settings = load_settings()
        self.info: local.ServerInfo | None = None
        self.client: Client | None = None

    def start(self, inventory: Path | None = None, config: dict | None = None) -> Client:
        cfg = {"keepalive_interval": 2, "keepalive_count_max": 2, "connect_timeout": 5, "kill_grace": 2}
        cfg.update(config or {})
        (self.home / "config.yaml").write_text(yaml.safe_dump(cfg))
        self.settings = load_settings()
        if self.settings.database is None and not (self.settings.home / "fleet.db").exists():
            shutil.copyfile(schema_template(), self.settings.home / "fleet.db")
        self.info = local.start_local(self.settings, str(inventory) if inventory else None, spawn=spawn_server)
        self.client = Client(self.info.url, self.info.token, timeout=120)
        return self.client

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        local.stop_local(self.settings)

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real ``fleet`` command against this server (a fresh process, forked by the
        worker's zygote: see tests/zygote.py)."""
        proc = zygote().run(list(args), timeout=timeout, env=os.environ.copy(), cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"fleet {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def cli_json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    def server_log(self) -> str:
        return self.settings.server_log.read_text(errors="replace")


@pytest.fixture
def shared_local(tmp_path: Path, fleet: Fleet) -> Iterator[Path]:
    """An inventory for a team on this machine alone: ``localhost`` (ansible_connection=local)
    runs other users' jobs as ``nobody`` (fleet_job_user), in a work directory that account can
    pass through (pytest's own temp dirs are private to root). At the end the server is stopped
    and what still runs in that directory is killed before it is removed (a job left running
    would otherwise write its status into the directory after it was removed, leaving it)."""
    workdir = Path(tempfile.mkdtemp(prefix="fleet-shared-"))
    workdir.chmod(0o711)
    inventory = tmp_path / "shared.ini"
    inventory.write_text(f"[lab]\nlocalhost ansible_connection=local fleet_job_user=nobody "
                         f"fleet_workdir={workdir} ansible_python_interpreter={sys.executable}\n")
    yield inventory
    fleet.stop()
    for _ in range(2):  # once more if a process not seen the first time wrote there meanwhile
        procs.kill_in(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        if not workdir.exists():
            return
    warnings.warn(f"could not remove {workdir}", stacklevel=1)


def add_user(fleet: Fleet, name: str) -> tuple[str, Client]:
    """Create a (non-admin) user on the running server; returns its token and a client."""
    assert fleet.info is not None
    token = fleet.cli_json("users", "add", name)["token"]
    return token, Client(fleet.info.url, token)


@pytest.fixture
def fleet(fleet_home: Path) -> Iterator[Fleet]:
    f = Fleet(fleet_home)
    yield f
    f.stop()


@pytest.fixture
def submit(fleet: Fleet) -> Callable[..., str]:
    """Submit a spec dict through the API; returns the job id."""

    def _submit(spec: dict, client: Client | None = None) -> str:
        assert fleet.client is not None
        return (client or fleet.client).submit(spec).id

    return _submit


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Start real host agents (tests/agent_driver.py) on attempt directories under tmp_path;
    their channels are closed at the end."""
    made: list[Agent] = []

    def make(waits: str = "kernel") -> Agent:
        made.append(Agent(tmp_path, waits))
        return made[-1]

    yield make
    for agent in made:
        agent.close()
