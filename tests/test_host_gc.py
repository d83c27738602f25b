"""Retention on the hosts: ended attempt directories (their log copy and results' raw files) go
by age and to keep a host under its limit; directories the controller still needs (a running
attempt, an unfinished job's attempt) stay. ``gc_attempts`` is the agent's own code, run here on
real directories and processes; the end-to-end test goes through ``fleet serve``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import eventually

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fleet_wrapper", REPO / "runners" / "wrapper.py")
assert _spec and _spec.loader
wrapper = importlib.util.module_from_spec(_spec)
sys.path.insert(0, str(REPO / "runners"))  # its sibling modules (hostfs, jobenv), as on a host
try:
    _spec.loader.exec_module(wrapper)
finally:
    sys.path.remove(str(REPO / "runners"))

KiB = 1 << 10


def _attempt(root: Path, name: str, size: int, ended_ago: float | None, pid: int = 0) -> Path:
    adir = root / name
    adir.mkdir(parents=True)
    (adir / "log").write_bytes(b"x" * size)
    if pid:
        (adir / "pid").write_text(str(pid))
    if ended_ago is not None:
        (adir / "status.json").write_text(json.dumps({"exit_code": 0}))
        at = time.time() - ended_ago
        os.utime(adir / "status.json", (at, at))
    return adir


def test_gc_removes_by_age_then_oldest_first_to_the_limit_and_spares_what_runs(tmp_path):
    root = tmp_path / "attempts"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _attempt(root, "old", 10 * KiB, ended_ago=10 * 86400)
        _attempt(root, "kept-by-controller", 10 * KiB, ended_ago=10 * 86400)
        _attempt(root, "running", 50 * KiB, ended_ago=None, pid=sleeper.pid)
        for i, ago in enumerate([3000, 2000, 1000]):
            _attempt(root, f"recent{i}", 20 * KiB, ended_ago=ago)
        # Dead supervisor, no status, silent for long: a power cut's leftover.
        orphan = _attempt(root, "orphan", 1 * KiB, ended_ago=None, pid=2**22 + 12345)
        long_ago = time.time() - 9 * 86400
        for p in (orphan / "log", orphan):
            os.utime(p, (long_ago, long_ago))
        # ...but one whose launch may be under way right now is not touched.
        _attempt(root, "launching", 1 * KiB, ended_ago=None)

        # 132 KiB in all; by age 11 KiB go, then the oldest ended one to get under 105 KiB.
        removed, freed, left = wrapper.gc_attempts(
            str(root), 7 * 86400, 105 * KiB, {"kept-by-controller"})
        assert sorted(removed) == ["old", "orphan", "recent0"]
        assert 31 * KiB <= freed < 31 * KiB + 100  # the logs, and small status/pid files
        names = sorted(p.name for p in root.iterdir())
        assert names == ["kept-by-controller", "launching", "recent1", "recent2", "running"]
        assert left == sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        assert 101 * KiB <= left <= 105 * KiB
        # A limit below what must stay removes every ended one and still spares those.
        removed, _, _ = wrapper.gc_attempts(str(root), 7 * 86400, 0, {"kept-by-controller"})
        assert sorted(removed) == ["recent1", "recent2"]
        assert sorted(p.name for p in root.iterdir()) == ["kept-by-controller", "launching", "running"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_leader_collects_ended_attempt_directories_on_hosts(fleet, tmp_path, submit):
    work = tmp_path / "work"
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"localhost ansible_connection=local fleet_slots=4 fleet_workdir={work}\n")
    fleet.start(inv, config={"gc_interval": 1, "host_store_limit": 300 * KiB,
                             "host_retention_days": 1})
    attempts = work / "attempts"
    # Each job leaves 100 KiB of raw files in its attempt directory.
    done = [submit({"name": f"raw{i}", "run": "head -c 102400 /dev/zero > per_query.bin"})
            for i in range(6)]
    for job in done:
        fleet.cli("status", job, "--wait")
    running = submit({"name": "long", "run": "head -c 512000 /dev/zero > big.bin; sleep 30"})
    eventually(lambda: fleet.cli_json("status", running)["state"] == "RUNNING", what="long runs")

    def collected() -> bool:
        try:
            size = sum(f.stat().st_size for f in attempts.rglob("*") if f.is_file())
            dirs = len(list(attempts.iterdir()))
        except FileNotFoundError:  # a directory removed by the gc while it was being walked
            return False
        return size <= 300 * KiB + 600 * KiB and dirs <= 3
    eventually(collected, timeout=30, what="attempt gc under the host limit")
    left = {p.name for p in attempts.iterdir()}
    status = fleet.cli_json("status", running)
    assert status["attempt_list"][-1]["id"] in left  # the running attempt is never removed
    # The newest ended attempt is still there, and its job's record is untouched.
    newest = fleet.cli_json("status", done[-1])
    assert newest["state"] == "SUCCEEDED"
    assert fleet.cli("logs", done[0]).returncode == 0
    fleet.cli("cancel", running)
    assert "attempt gc on localhost removed" in fleet.server_log()
