#!/usr/bin/env python3
"""Chaos benchmark (not a test): jobs on a device lab while the controller and hosts fail.

    python bench/chaos.py [--jobs 300] [--seed 7] [--asyncssh 6] [--openssh 4] [--json]

Runs a lab of simulated SSH hosts (pure-Python asyncssh hosts, and real OpenSSH hosts where
sshd runs here) and a real ``fleet serve``, submits the jobs, then at random (seeded) kills the
controller with SIGKILL and restarts it, kills hosts (server and every process gone) and brings
them back, hangs OpenSSH hosts (SIGSTOP on all their processes) and thaws them. Each job
appends ``start JOB ATTEMPT`` and ``end JOB ATTEMPT`` to a file on the (shared) filesystem.

It prints jobs submitted, succeeded, failed (by reason), lost (no terminal state at the end),
completed twice (two ``end`` lines: the job's work was done twice), started more than once
(attempts given up on after a host loss and retried elsewhere: expected, never finished), and
logs wrong: a succeeded job whose log (its last attempt's, as ``fleet logs`` shows it) does not
hold each line the job printed exactly once, in order (the controller killed while the log was
in its memory, on disk, or being sent must lose or repeat nothing: the host resends from the
byte the controller has). Target: 0 lost, 0 completed twice, 0 logs wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx
import yaml

from fleet.client.sync import Client
from tests.lab import Lab, have_sshd

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Controller:
    """``fleet serve`` on a fixed port, killed and restarted at will."""

    def __init__(self, home: Path, inventory: Path) -> None:
        self.home, self.inventory = home, inventory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        env = dict(os.environ, FLEET_HOME=str(self.home))
        for var in ("FLEET_SERVER", "FLEET_TOKEN", "FLEET_INVENTORY", "FLEET_DATABASE"):
            env.pop(var, None)
        log = (self.home / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet", "--inventory", str(self.inventory), "serve",
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log, stderr=log, env=env, start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).json().get("role") == "leader":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"fleet serve did not start; see {self.home / 'server.log'}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def retrying(fn, *args, tries: int = 200, **kwargs):  # type: ignore[no-untyped-def]
    """Call the API, waiting out a controller that is down."""
    for _ in range(tries):
        try:
            return fn(*args, **kwargs)
        except (httpx.TransportError, OSError):
            time.sleep(0.2)
    return fn(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--asyncssh", type=int, default=6, help="pure-Python asyncssh hosts")
    parser.add_argument("--openssh", type=int, default=4, help="real sshd hosts (if sshd runs here)")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds before giving up")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the lab and FLEET_HOME afterwards")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each event with its time")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="fleet-chaos-"))
    side = root / "side.txt"
    side.touch()

    lab = Lab(root / "lab")
    lab.add_hosts("rtx5060", args.asyncssh, slots=args.slots)
    frozen_ok = have_sshd() and args.openssh > 0
    if frozen_ok:
        lab.add_hosts("rtx5060", args.openssh, kind="openssh", slots=args.slots)
    lab.start()
    home = root / "home"
    home.mkdir()
    (home / "known_hosts").write_text(lab.known_hosts_text())
    (home / "config.yaml").write_text(yaml.safe_dump({
        "keepalive_interval": 1, "keepalive_count_max": 2, "connect_timeout": 3,
        "health_check_timeout": 3, "health_bad_after": 3, "health_recheck_interval": 2,
        "kill_grace": 2, "command_timeout": 20, "attempt_lease": 6}))
    inventory = lab.write_inventory(root / "inventory.ini")
    ctl = Controller(home, inventory)
    ctl.start()
    token = (home / "token").read_text().strip()
    client = Client(ctl.url, token, timeout=60)

    specs = []
    for i in range(args.jobs):
        work = round(rng.uniform(0.3, 2.5), 2)
        specs.append({
            "name": f"chaos-{i}", "resources": {"pool": "rtx"},
            "retries": {"infra": 5},
            "run": (f'echo "start $FLEET_JOB_ID $FLEET_ATTEMPT_ID" >> {side}; '
                    f'i=0; while [ $i -lt {int(work * 10)} ]; do sleep 0.1; echo "tick $i"; i=$((i+1)); done; '
                    f'echo "end $FLEET_JOB_ID $FLEET_ATTEMPT_ID" >> {side}'),
        })
    started = time.monotonic()
    ids: list[str] = []
    for k in range(0, len(specs), 50):
        ids += [j.id for j in client.submit_many(specs[k:k + 50])]

    names = [h.name for h in lab.hosts]
    openssh = [h.name for h in lab.hosts[args.asyncssh:]]
    events: Counter[str] = Counter()

    def note(what: str, count: bool = True) -> None:
        if count:
            events[what.split(":")[0]] += 1
        if args.verbose:
            stamp = time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}"
            print(f"  {stamp} {what}", file=sys.stderr)
    down: dict[str, tuple[str, float]] = {}  # host -> (how, when to bring back)

    def done_count() -> int:
        page = retrying(client.jobs, states=sorted(TERMINAL), limit=1000)
        return len([j for j in page.items if j.id in set(ids)])

    # The chaos loop: one event every 1-3 s until every job is terminal or the deadline.
    while time.monotonic() - started < args.deadline:
        now = time.monotonic()
        for name, (how, back_at) in list(down.items()):
            if now >= back_at:
                if how == "killed":
                    lab.start_host(name)
                else:
                    lab.thaw_host(name)
                del down[name]
                note(f"back: {name}", count=False)
        if done_count() >= len(ids):
            break
        time.sleep(rng.uniform(1.0, 3.0))
        roll = rng.random()
        up = [n for n in names if n not in down]
        if roll < 0.25:
            ctl.kill()
            note("controller killed")
            time.sleep(rng.uniform(0.5, 3.0))
            ctl.start()
            note("controller started", count=False)
        elif roll < 0.6 and len(up) > 2:
            name = rng.choice(up)
            lab.stop_host(name, kill_processes=True)
            down[name] = ("killed", time.monotonic() + rng.uniform(3, 10))
            note(f"host killed: {name}")
        elif roll < 0.9 and frozen_ok and len(up) > 2:
            candidates = [n for n in openssh if n in up]
            if candidates:
                name = rng.choice(candidates)
                lab.freeze_host(name)
                down[name] = ("hung", time.monotonic() + rng.uniform(3, 10))
                note(f"host hung: {name}")
    elapsed = time.monotonic() - started
    for name, (how, _) in down.items():
        lab.start_host(name) if how == "killed" else lab.thaw_host(name)
    # Let every host come back (health checks stop attempts given up on), then give a stale
    # attempt the time it would need to finish, so "completed twice" would show.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(h.health == "good" for h in retrying(client.hosts)):
            break
        time.sleep(0.5)
    time.sleep(3.0)

    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    lost = 0
    final = {}
    for job_id in ids:
        job = final[job_id] = retrying(client.job, job_id)
        states[job.state] += 1
        if job.state not in TERMINAL:
            lost += 1
        elif job.state != "SUCCEEDED":
            reasons[job.reason or "?"] += 1
    ends: Counter[str] = Counter()
    starts: Counter[str] = Counter()
    for line in side.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            (ends if parts[0] == "end" else starts)[parts[1]] += 1
    twice = sum(1 for j in ids if ends[j] > 1)
    restarted = sum(1 for j in ids if starts[j] > 1)
    never_ended = sum(1 for j in ids if final[j].state == "SUCCEEDED" and ends[j] == 0)
    logs_wrong = 0
    for j, spec in zip(ids, specs):
        if final[j].state != "SUCCEEDED":
            continue
        ticks = spec["run"].split("-lt ")[1].split(" ")[0]
        expected = "".join(f"tick {i}\n" for i in range(int(ticks)))
        text = b"".join(retrying(lambda: list(client.logs(j)))).decode(errors="replace")
        if not text.endswith(expected) or text.count("tick 0\n") != (1 if expected else 0):
            logs_wrong += 1
            print(f"  log wrong: {j}: {text[-300:]!r}", file=sys.stderr)
    for j in ids:
        if ends[j] > 1:  # say what happened, for whoever reads the run
            print(f"  completed twice: {j}: " + "; ".join(
                f"#{a.number} {a.host} {a.state}/{a.reason} {a.started_at}..{a.ended_at} ({a.message})"
                for a in final[j].attempt_list), file=sys.stderr)
            print("    " + " | ".join(x for x in side.read_text().splitlines() if j in x), file=sys.stderr)
    client.close()
    ctl.stop()
    lab.stop()
    if args.keep:
        print(f"kept {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)

    out = {
        "seed": args.seed, "hosts": len(names), "openssh_hosts": len(openssh) if frozen_ok else 0,
        "seconds": round(elapsed, 1), "events": dict(events),
        "submitted": len(ids), "succeeded": states["SUCCEEDED"],
        "failed": sum(reasons.values()), "failed_by_reason": dict(reasons), "lost": lost,
        "completed_twice": twice, "started_more_than_once": restarted,
        "succeeded_without_end_line": never_ended, "logs_wrong": logs_wrong,
    }
    print(f"chaos (seed {args.seed}): {len(names)} hosts ({out['openssh_hosts']} OpenSSH), "
          f"{elapsed:.0f} s; events: " + ", ".join(f"{k} x{v}" for k, v in sorted(events.items())))
    print(f"  submitted            {len(ids)}")
    print(f"  succeeded            {states['SUCCEEDED']}")
    print(f"  failed with a reason {out['failed']} {dict(reasons) if reasons else ''}")
    print(f"  lost (not terminal)  {lost}")
    print(f"  completed twice      {twice}")
    print(f"  started > once       {restarted}  (given up on after a host loss, retried; "
          "the first never finished)")
    print(f"  logs wrong           {logs_wrong}")
    met = lost == 0 and twice == 0 and logs_wrong == 0
    print(f"  target 0 lost, 0 completed twice, 0 logs wrong: {'met' if met else 'NOT MET'}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
