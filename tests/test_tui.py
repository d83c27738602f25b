"""``fleet tui`` driven as people use it: Textual's Pilot presses keys on the app, which talks to
a real ``fleet serve`` (lab hosts over SSH, or this machine) through the client library and the
event stream. Waits are on what the screen shows, never on fixed sleeps."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest

from fleet.client import discovery
from fleet.client.sync import Client
from tests.conftest import add_user
from tests.test_e2e_lab import start_fleet
from tests.tui_helpers import SIZE, make_app, screen_text, shows, snapshot, until

pytestmark = pytest.mark.timeout(180)


def hold(flag, words: str = "started") -> str:
    """A job that prints ``words`` and runs until ``flag`` exists."""
    return f"echo {words}; while [ ! -e {flag} ]; do sleep 0.05; done; echo finished"


def local_inventory(tmp_path, slots: int = 1):
    inv = tmp_path / "local.ini"
    inv.write_text(f"[lab]\nlocalhost ansible_connection=local fleet_slots={slots} "
                   f"ansible_python_interpreter={sys.executable}\n")
    return inv


async def test_views_show_the_lab_and_follow_it_live(fleet, lab, tmp_path):
    lab.add_hosts("rtx5060", 2)
    lab.add_hosts("jetson-orin-nano", 1)
    client = start_fleet(fleet, lab, tmp_path)
    flag = tmp_path / "go"
    busy = [client.submit({"name": f"hold{i}", "run": hold(flag), "resources": {"pool": "rtx"}}).id
            for i in range(2)]
    for job_id in busy:
        await asyncio.to_thread(lambda j=job_id: _until_state(client, j, {"RUNNING"}))
    waiting = client.submit({"name": "waiter", "run": "echo waited", "resources": {"pool": "rtx"}}).id
    app = make_app(fleet.info.url, fleet.info.token)
    async with app.run_test(size=SIZE) as pilot:
        await shows(pilot, "BUSY: 2/3 slots in use, 1 job waiting")
        await shows(pilot, re.compile(r"rtx\s+2\s+2/2"))
        await pilot.press("2")
        await shows(pilot, "▾ jetson")
        text = screen_text(app)
        assert "rtx5060-1" in text and "jetson-orin-nano-1" in text or "rtx" in text
        assert busy[0] in text and busy[1] in text  # the running job of each rtx host
        await pilot.press("3")
        await shows(pilot, waiting)
        queue = screen_text(app)
        assert re.search(rf"^\s*1\s+{waiting}\s+waiter", queue, re.M), queue  # first to be taken
        assert "1 waiting, 2 running" in queue and "busy" in queue  # and why it waits
        await pilot.press("4")
        await shows(pilot, "3 jobs")
        await shows(pilot, re.compile(rf"{waiting}\s+waiter.*PENDING"))
        flag.touch()  # the server moves on: the screen follows from the event stream
        await shows(pilot, re.compile(rf"{waiting}\s+waiter.*SUCCEEDED"))
        await shows(pilot, re.compile(rf"{busy[0]}\s+hold0.*SUCCEEDED"))
        await pilot.press("1")
        await shows(pilot, "IDLE")
        assert app.events_seen > 0 and app.connected


def _until_state(client: Client, job_id: str, states: set[str], timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while client.job(job_id).state not in states:
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} never reached {states}")
        time.sleep(0.05)


async def test_job_view_follows_the_log_searches_it_cancels_and_resubmits(fleet, tmp_path):
    client = fleet.start(local_inventory(tmp_path, slots=4))
    flag = tmp_path / "go"
    job = client.submit({"name": "talker", "run": f"echo alpha; echo 'the needle 42'; {hold(flag, 'beta')}"}).id
    other = client.submit({"name": "victim", "run": hold(tmp_path / "never")}).id
    app = make_app(fleet.info.url, fleet.info.token)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("colon", *f"job {job}", "enter")
        await shows(pilot, "beta")  # the log while the job runs
        await shows(pilot, re.compile(r"talker\s+RUNNING"))
        await pilot.press("slash", *"NEEDLE", "enter")
        await shows(pilot, "match 1/1")
        flag.touch()
        await shows(pilot, "finished")  # followed to the end
        await shows(pilot, re.compile(r"talker\s+SUCCEEDED"))
        await pilot.press("R")
        await shows(pilot, "Submit talker again")
        await pilot.press("y")
        await until(pilot, lambda: app.query_one("#job-detail").visual is not None and
                    len(client.jobs(limit=10).items) == 3, "a third job on the server")
        again = [j for j in client.jobs(limit=10).items if j.name == "talker" and j.id != job]
        assert len(again) == 1
        await shows(pilot, again[0].id)  # the new job is open
        await pilot.press("colon", *f"job {other}", "enter")
        await shows(pilot, re.compile(r"victim\s+RUNNING"))
        await pilot.press("w")
        await shows(pilot, f"why {other}: running")
        await pilot.press("escape", "c")
        await shows(pilot, f"Cancel {other}")
        await pilot.press("n")  # no: nothing happens
        await pilot.pause(0.2)
        assert client.job(other).state == "RUNNING"
        await pilot.press("c", "y")
        await asyncio.to_thread(_until_state, client, other, {"CANCELLED"})
        await shows(pilot, re.compile(r"victim\s+CANCELLED"))


async def test_jobs_filter_sort_and_page_through_hundreds(fleet, tmp_path):
    client = fleet.start(local_inventory(tmp_path))
    client.call(__import__("fleet.client.calls", fromlist=["x"]).host_action("localhost", "drain"))
    specs = [{"name": f"n{i:03d}", "run": "true", "kind": "shell"} for i in range(260)]
    client.submit_many(specs[:130])
    client.submit_many(specs[130:])
    client.submit({"name": "zz-last", "run": "true"})
    app = make_app(fleet.info.url, fleet.info.token)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await shows(pilot, "261 jobs")
        await shows(pilot, re.compile(r"zz-last\s+root"))  # newest first
        await pilot.press("end")  # the oldest: its page is fetched on demand
        await shows(pilot, re.compile(r"n000\s+root"))
        pages = app.query_one("#jobs").pages  # type: ignore[attr-defined]
        assert len(pages.pages) <= 12 and 0 not in pages.pages or len(pages.pages) <= 12
        table = app.query_one("#jobs-table")
        await pilot.press("home", "pagedown", "pagedown")
        assert table.cursor == 2 * table.page_size  # type: ignore[attr-defined]
        await shows(pilot, f"n{260 - 2 * table.page_size:03d}")  # type: ignore[attr-defined]
        await pilot.press("slash", *"n01 state:pending", "enter")
        await shows(pilot, "10 jobs")
        text = screen_text(app)
        assert "n019" in text and "n020" not in text and "zz-last" not in text
        await pilot.press("o")  # sort by name
        await shows(pilot, "sort: name ↑")
        await until(pilot, lambda: re.search(r"n010.*\n.*n011", screen_text(app)) is not None, "n010 before n011")
        await pilot.press("O")
        await until(pilot, lambda: re.search(r"n019.*\n.*n018", screen_text(app)) is not None, "n019 first")
        await pilot.press("slash", "ctrl+u", *"colour:red", "enter")
        await shows(pilot, "unknown filter 'colour'")
        await pilot.press("escape")
        await pilot.press("slash", "ctrl+u", *"nothing-like-this", "enter")
        await shows(pilot, "0 jobs")


async def test_a_user_sees_their_own_jobs_and_is_refused_admin_actions(fleet, shared_local, tmp_path):
    client = fleet.start(shared_local)
    flag = tmp_path / "go"
    secret = client.submit({"name": "admins-job", "run": hold(flag)}).id
    token, alice = add_user(fleet, "alice")
    mine = alice.submit({"name": "alices-job", "run": "echo hi"}).id
    app = make_app(fleet.info.url, token)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await shows(pilot, "1 jobs")
        await shows(pilot, mine)
        assert secret not in screen_text(app) and "admins-job" not in screen_text(app)
        await pilot.press("2")
        await shows(pilot, "localhost")
        assert secret not in screen_text(app)  # the host runs it; alice is not told which
        await pilot.press("down", "d")
        await shows(pilot, "Drain localhost")
        await pilot.press("y")
        await shows(pilot, "drain localhost: admin only")  # the server's reason
        assert not client.hosts()[0].state.startswith("drain")
        await pilot.press("colon", *f"job {secret}", "enter")
        await shows(pilot, "no job")
    flag.touch()

    ro = make_app(fleet.info.url, fleet.info.token, readonly=True)
    async with ro.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await shows(pilot, mine)
        await pilot.press("c")
        await shows(pilot, "read-only")
        await pilot.press("S")
        await shows(pilot, "read-only")


async def test_the_ui_survives_the_server_killed_and_started_again(fleet, tmp_path):
    inv = local_inventory(tmp_path)
    client = fleet.start(inv)
    flag = tmp_path / "go"
    job = client.submit({"name": "survivor", "run": hold(flag)}).id
    await asyncio.to_thread(_until_state, client, job, {"RUNNING"})
    settings = fleet.settings

    def where() -> str | None:
        info = discovery.local_server(settings)
        return info.url if info is not None else None

    app = make_app(fleet.info.url, fleet.info.token, rediscover=where)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await shows(pilot, re.compile(r"survivor\s+root.*RUNNING"))
        os.kill(fleet.info.pid, signal.SIGKILL)
        await shows(pilot, "unreachable")
        settings.server_file.unlink(missing_ok=True)
        await asyncio.to_thread(fleet.start, inv)
        await shows(pilot, "● live")
        flag.touch()  # the job, reattached by the new server, ends: the event reaches the UI
        await shows(pilot, re.compile(r"survivor\s+root.*SUCCEEDED"))
        after = fleet.client.submit({"name": "after-restart", "run": "true"}).id
        await shows(pilot, after)
        await shows(pilot, "2 jobs")


async def test_snapshots_of_the_main_views(fleet, tmp_path):
    """The views at a fixed size on a fixed lab (this machine) and fixed jobs, compared as text
    with tests/snapshots/tui/*.txt; the SVG screenshots beside them are for people to look at."""
    client = fleet.start(local_inventory(tmp_path))
    ok = client.submit({"name": "compile-resnet50", "run": "echo compiled; echo engine written"}).id
    bad = client.submit({"name": "bench-yolo", "run": "echo loading; echo 'out of memory' >&2; exit 3"}).id
    for job_id in (ok, bad):
        await asyncio.to_thread(client.wait, job_id, 60)
    app = make_app(fleet.info.url, fleet.info.token)
    async with app.run_test(size=SIZE) as pilot:
        await shows(pilot, "IDLE")
        await shows(pilot, re.compile(r"^lab +1 +0/1", re.MULTILINE))  # the pools table laid out
        await shows(pilot, "bench-yolo")
        await shows(pilot, "(admin)")  # the header's user, read apart: "…" until it comes
        snapshot(app, "overview")
        await pilot.press("2")
        await shows(pilot, "▾ lab")
        snapshot(app, "hosts")
        await pilot.press("3")
        await shows(pilot, "nothing waiting")
        snapshot(app, "queue")
        await pilot.press("4")
        await shows(pilot, "2 jobs")
        snapshot(app, "jobs")
        await pilot.press("enter")
        await shows(pilot, "out of memory")
        await shows(pilot, "end of log")
        snapshot(app, "job")
        await pilot.press("6")
        await shows(pilot, "Series")
        snapshot(app, "results")
        await pilot.press("7")
        await shows(pilot, "no matrix runs yet")
        snapshot(app, "matrices")
        await pilot.press("question_mark")
        await shows(pilot, "fleet tui — keys")
        snapshot(app, "help")


BENCH = r"""
import json, os
model = os.environ["FLEET_MATRIX_MODEL"]
factor = float(open(os.environ["FACTORS"] + "/" + model).read())
lat = {"a": 4.0, "b": 9.0}[model] * factor * (1 + 0.002 * (os.getpid() % 5))
json.dump({"tool": {"name": "mybench", "version": "1.0"}, "model": {"name": model},
           "metrics": {"latency_ms": {"median": lat, "mean": lat}}},
          open(os.environ["FLEET_RESULT"], "w"))
"""


@pytest.mark.long
async def test_results_and_the_matrix_grid_show_a_regression(fleet, tmp_path):
    import json

    import yaml

    fleet.start(local_inventory(tmp_path, slots=2))
    factors = tmp_path / "factors"
    factors.mkdir()
    for model in ("a", "b"):
        (factors / model).write_text("1.0")
    (tmp_path / "bench.py").write_text(BENCH)
    mfile = tmp_path / "nightly.yml"
    mfile.write_text(yaml.safe_dump({
        "name": "nightly", "axes": {"model": ["a", "b"]}, "repeat": 3,
        "thresholds": {"min_baseline": 5, "min_samples": 3, "alpha": 0.05},
        "job": {"run": f"FACTORS={factors} python3 {tmp_path / 'bench.py'}"}}))
    runs = []
    for night in range(3):
        if night == 2:
            (factors / "b").write_text("1.5")
        proc = await asyncio.to_thread(fleet.cli, "matrix", "run", str(mfile), "--wait", "--json",
                                       check=False, timeout=300)
        runs.append(json.loads(proc.stdout)["id"])
    assert proc.returncode == 1, proc.stdout[-2000:]  # the last night regressed
    app = make_app(fleet.info.url, fleet.info.token)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await shows(pilot, "REGRESSION")
        text = screen_text(app)
        b_row = next(line for line in text.splitlines() if line.startswith("b "))
        a_row = next(line for line in text.splitlines() if line.startswith("a "))
        assert "REGRESSION" in b_row and "REGRESSION" not in a_row
        # the last value against the series: 1.5x, give or take the bench's own ±0.8% noise
        change = float(re.search(r"\+(\d+(?:\.\d+)?)%", b_row).group(1))
        assert 47.0 <= change <= 53.0, b_row
        assert re.search(r"[▁▂▃▄▅▆▇█]{9}", b_row)  # a sparkline of its 9 results
        await pilot.press("7")
        await shows(pilot, runs[-1])
        await shows(pilot, re.compile(r"model=b\W+regression"))
        await shows(pilot, re.compile(r"model=a\W+unchanged"))
        await pilot.press("down", "down")  # the first night: not enough history then
        await shows(pilot, re.compile(r"model=b\W+not enough samples"))
