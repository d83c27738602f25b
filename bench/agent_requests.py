#!/usr/bin/env python3
"""How fast the host agent reads a large request line (not a test).

    python bench/agent_requests.py [--mib 10 20 40] [--wrapper PATH] [--json]

The agent reads its requests from a pipe in 64 KiB chunks. It used to append each chunk to
everything it had and search the whole for a newline: quadratic (10 MiB took 1.9 s, 20 MiB
6 s). For each size this starts the real agent (``runners/wrapper.py agent``), sends one ping
request padded to that size, and takes the time until the pong comes back; the baseline, in
the same run, is a Python process that reads the same bytes from a pipe and parses the JSON
line (the least any reader must do). Printed: seconds per size, seconds per MiB, and the ratio
to the baseline. Linear reading keeps seconds per MiB flat as the size grows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRAPPER = REPO / "runners" / "wrapper.py"
BASELINE = (
    "import json, sys\n"
    "line = sys.stdin.buffer.readline()\n"
    "json.loads(line)\n"
    "sys.stdout.write('done\\n')\n"
)


def request(mib: int) -> bytes:
    return json.dumps({"op": "ping", "id": "p", "pad": "x" * (mib << 20)}).encode() + b"\n"


def timed(argv: list[str], data: bytes, until: bytes) -> float:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    start = time.perf_counter()
    proc.stdin.write(data)
    proc.stdin.flush()
    while until not in proc.stdout.readline():
        pass
    took = time.perf_counter() - start
    proc.stdin.close()
    proc.wait()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--wrapper", type=Path, default=WRAPPER,
                        help="another wrapper.py to measure (e.g. an older release's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for mib in args.mib:
        data = request(mib)
        agent = min(timed([sys.executable, "-S", str(args.wrapper), "agent"], data, b'"pong"') for _ in range(3))
        base = min(timed([sys.executable, "-S", "-c", BASELINE], data, b"done") for _ in range(3))
        rows.append({"mib": mib, "agent_s": round(agent, 3), "agent_s_per_mib": round(agent / mib, 4),
                     "baseline_s": round(base, 3), "ratio": round(agent / base, 2)})
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'MiB':>5} {'agent s':>9} {'s/MiB':>8} {'baseline s':>11} {'ratio':>6}")
        for r in rows:
            print(f"{r['mib']:>5} {r['agent_s']:>9} {r['agent_s_per_mib']:>8} {r['baseline_s']:>11} {r['ratio']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
