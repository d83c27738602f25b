#!/usr/bin/env python3
"""Log flood benchmark (not a test): the controller's memory while it streams many logs at once.

    python bench/logflood.py [--hosts 8] [--slots 4] [--mib 8] [--kind asyncssh|openssh] [--json]

Runs a device lab and a real ``fleet serve``, then in the same run:

* baseline: one job printing ``--mib`` MiB as fast as the host can write it;
* flood: ``hosts × slots`` such jobs at once.

Meanwhile it samples the server's resident memory (VmRSS from /proc) every 50 ms and prints,
per phase, the bytes streamed, MiB/s and the peak RSS above the idle server. Memory is bounded
when the flood's peak growth stays near the baseline's although it streams ``hosts × slots``
times as many bytes at once: the agent sends 64 KiB frames, asyncssh's channel window stops
a host that sends faster than the controller writes, and the log store appends straight to
files. The ratio printed is flood growth / baseline growth (1.0: streams cost nothing extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import yaml
from chaos import Controller

from fleet.client.sync import Client
from tests.lab import Lab, have_sshd

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.05)


def phase(client: Client, pid: int, jobs: int, mib: int) -> dict[str, float]:
    idle = rss_kib(pid)
    sampler = Sampler(pid)
    sampler.start()
    # 64-byte numbered lines, as fast as the shell's head can copy them.
    spec = {"name": "flood", "run": f"yes 'line of a very chatty training loop 0123456789 abcdefgh' "
                                    f"| head -c {mib << 20}"}
    started = time.monotonic()
    ids = [j.id for j in client.submit_many([dict(spec, name=f"flood-{i}") for i in range(jobs)])]
    while True:
        states = [client.job(i).state for i in ids]
        if all(s in TERMINAL for s in states):
            break
        time.sleep(0.2)
    took = time.monotonic() - started
    sampler.running = False
    sampler.join()
    failed = [s for s in states if s != "SUCCEEDED"]
    if failed:
        raise SystemExit(f"{len(failed)} flood jobs did not succeed: {failed[:3]}")
    streamed = jobs * (mib << 20)
    return {"jobs": jobs, "mib_streamed": streamed / 2**20, "seconds": round(took, 2),
            "mib_per_s": round(streamed / 2**20 / took, 1), "idle_rss_mib": round(idle / 1024, 1),
            "peak_rss_mib": round(sampler.peak / 1024, 1),
            "growth_mib": round(max(0, sampler.peak - idle) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--mib", type=int, default=8, help="MiB each job prints")
    parser.add_argument("--kind", choices=["asyncssh", "openssh"], default="asyncssh")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.kind == "openssh" and not have_sshd():
        raise SystemExit("--kind openssh needs /usr/sbin/sshd")
    root = Path(tempfile.mkdtemp(prefix="fleet-logflood-"))
    lab = Lab(root / "lab")
    lab.add_hosts("rtx5060", args.hosts, kind=args.kind, slots=args.slots)
    lab.start()
    ctl = None
    try:
        home = root / "home"
        home.mkdir()
        (home / "known_hosts").write_text(lab.known_hosts_text())
        (home / "config.yaml").write_text(yaml.safe_dump({}))
        ctl = Controller(home, lab.write_inventory(root / "inventory.ini"))
        ctl.start()
        assert ctl.proc is not None
        client = Client(ctl.url, (home / "token").read_text().strip(), timeout=60)
        phase(client, ctl.proc.pid, 1, 1)  # warm up: connections, agent, imports
        base = phase(client, ctl.proc.pid, 1, args.mib)
        flood = phase(client, ctl.proc.pid, args.hosts * args.slots, args.mib)
    finally:
        if ctl is not None:
            ctl.stop()
        lab.stop()
    ratio = flood["growth_mib"] / max(base["growth_mib"], 1.0)
    report = {"hosts": args.hosts, "slots": args.slots, "kind": args.kind, "baseline": base,
              "flood": flood, "growth_ratio": round(ratio, 2),
              "streams_ratio": args.hosts * args.slots}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"log flood on {args.hosts} {args.kind} hosts x {args.slots} slots, {args.mib} MiB per job")
    for name, r in (("baseline (1 job)", base), (f"flood ({flood['jobs']} jobs at once)", flood)):
        print(f"  {name:28} {r['mib_streamed']:7.0f} MiB in {r['seconds']:6.1f} s "
              f"({r['mib_per_s']:6.1f} MiB/s)  RSS idle {r['idle_rss_mib']:6.1f} MiB, "
              f"peak {r['peak_rss_mib']:6.1f} MiB (+{r['growth_mib']:.1f})")
    print(f"  RSS growth flood/baseline: {ratio:.2f}x while streaming {args.hosts * args.slots}x "
          "as many logs at once")


if __name__ == "__main__":
    main()
