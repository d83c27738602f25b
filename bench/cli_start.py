#!/usr/bin/env python3
"""How fast the ``fleet`` command starts (not a test).

    python bench/cli_start.py [--runs 15] [--json]

Every CLI call is a new process, so its start is most of what a user waits for. Measured in
one run, against a local server this script starts in a scratch ``FLEET_HOME``:

* baseline: ``python -c 'import click, httpx'`` (the least an HTTP CLI in Python loads);
* ``fleet --help``;
* ``fleet jobs`` (one request to the running server, a table printed).

For each: the median wall time and the median CPU time (user + system of the process, which
varies far less than wall time on a shared machine), and the ratio to the baseline. Targets
(issue 10): ``fleet --help`` at most 2x the baseline, ``fleet jobs`` at most 250 ms on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    fleet = shutil.which("fleet") or str(Path(sys.executable).parent / "fleet")
    home = Path(tempfile.mkdtemp(prefix="fleet-clistart-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["FLEET_HOME"] = str(home)
    subprocess.run([fleet, "server", "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        cases = {
            "baseline (import click, httpx)": [sys.executable, "-c", "import click, httpx"],
            "fleet --help": [fleet, "--help"],
            "fleet jobs": [fleet, "jobs"],
        }
        rows = []
        base = None
        for name, argv in cases.items():
            wall, cpu = measure(argv, env, args.runs)
            base = base or (wall, cpu)
            rows.append({"case": name, "wall_ms": round(wall * 1000, 1), "cpu_ms": round(cpu * 1000, 1),
                         "wall_ratio": round(wall / base[0], 2), "cpu_ratio": round(cpu / base[1], 2)})
    finally:
        subprocess.run([fleet, "server", "stop"], env=env, stdout=subprocess.DEVNULL)
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'case':<32} {'wall ms':>8} {'cpu ms':>8} {'x wall':>7} {'x cpu':>6}")
        for r in rows:
            print(f"{r['case']:<32} {r['wall_ms']:>8} {r['cpu_ms']:>8} {r['wall_ratio']:>7} {r['cpu_ratio']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
