"""Run a lab in its own process until SIGTERM or SIGINT (for benchmarks).

    python -m tests.lab serve --hosts N --profile rtx5060 --out DIR

starts N asyncssh hosts (state under DIR/lab unless --root), writes DIR/inventory.ini and
DIR/known_hosts, then DIR/ready (atomically, holding this process's pid) and prints "ready".
On SIGTERM/SIGINT it stops the lab and exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .lab import KINDS, Lab
from .profiles import PROFILES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start lab hosts and run until SIGTERM/SIGINT")
    serve.add_argument("--hosts", type=int, required=True, help="number of hosts")
    serve.add_argument("--profile", choices=sorted(PROFILES), default="rtx5060")
    serve.add_argument("--kind", choices=KINDS, default="asyncssh")
    serve.add_argument("--slots", type=int, default=None, help="fleet_slots of every host")
    serve.add_argument("--out", type=Path, required=True, help="where to write the files")
    serve.add_argument("--root", type=Path, default=None, help="lab state (default OUT/lab)")
    args = parser.parse_args(argv)
    return _serve(args.hosts, args.profile, args.kind, args.slots, args.out, args.root)


def _serve(
    count: int, profile: str, kind: str, slots: int | None, out: Path, root: Path | None
) -> int:
    # Block the signals before the lab's thread starts (it inherits the mask), then wait for
    # them synchronously in the main thread.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    out.mkdir(parents=True, exist_ok=True)
    with Lab(root or out / "lab") as lab:
        lab.add_hosts(profile, count, kind, slots=slots)
        lab.write_inventory(out / "inventory.ini")
        (out / "known_hosts").write_text(lab.known_hosts_text())
        tmp = out / f"ready.tmp.{os.getpid()}"
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, out / "ready")
        print("ready", flush=True)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
