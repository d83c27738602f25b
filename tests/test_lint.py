"""The linters as tests: ``mypy --strict`` on fleet/ and ``ruff check``. In the suite they run
beside the other tests (their CPU overlaps the waits on hosts and leases), and a finding fails
the run like any test; the output names the file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.long
@pytest.mark.timeout(600)
def test_mypy_strict_finds_nothing_in_fleet():
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "fleet", "tui/fleet_tui"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
    assert "Success: no issues found" in out.stdout, out.stdout


def test_ruff_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "fleet", "runners", "tests", "bench", "tui", "images"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
