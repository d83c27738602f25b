#!/usr/bin/env python3
"""Scale benchmark (not a test): one controller, a thousand hosts, thousands of attempts.

    python bench/scale.py [--hosts 1000] [--slots 2] [--queue 50000] [--window 30] [--json]

The hosts are simulated in a separate process (``bench/scale.py simulate``): one asyncssh
server per host on loopback, each serving fleet's agent protocol in process (launch, started,
exit, cancel, follow, renew, ping, gc: the frames ``runners/wrapper.py agent`` sends) and
answering the runner-bundle install with success. No job runs: an attempt of ``sleep N`` ends
N seconds after its launch. So the figures are the controller's own (a real ``fleet serve``
with its SQLite database), not the hosts'.

Phases, each printed with its figure:

1. **fill**: ``hosts x slots`` jobs of ``sleep 600`` (every job here) in batches of 500: seconds from the first
   POST to the last launch on the hosts (target <= 2 s for 2,000 slots).
2. **queue**: ``--queue`` more jobs while the fleet is full (they wait): submit rate, and the
   longest answer of ``GET /health`` polled every 50 ms all along (how long the event loop was
   held, or the server waited for a core; target: never > 50 ms). In the steady window it is
   polled once a second.
3. **steady**: everything running and queued, ``--window`` seconds (longer than two periods of
   the hosts' lease renewals, which are the bulk of it): the controller's CPU (% of
   one core; target <= 5%) and RSS (target <= 300 MB). Twice: right after the submission
   (for ``SYNC_LAG`` = 10 s the leader's look for other replicas' jobs reads again every id
   made in the last 10 s, twice a second: the burst's) and at rest, once that has passed.
4. **renewals**: ``GET /health`` every 20 ms over one period of the hosts' lease renewals
   (all hosts at once): the longest answer.
5. **turnover**: 200 running attempts end on the hosts (20 at a time): for each, the time
   until its host's freed slot has a new launch (p50/p99).

The controller's longest scheduling pass is read from its own /metrics histogram.
Needs a few GB of memory free; the SSH handshakes to 1,000 hosts take a while at start.
``--slots 10 --queue 10000`` runs 10,000 attempts at once (the issue's second scale point:
controller RSS <= 1 GiB; the 2 s fill target is for 2,000 slots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import asyncssh
import httpx

SLEEP = re.compile(r"sleep (\d+(?:\.\d+)?)")


# ---------------------------------------------------------------------- the simulated hosts


class Sim:
    """Every simulated host's attempts, and what the bench asks about them."""

    def __init__(self) -> None:
        self.running: dict[tuple[str, str], tuple[SimAgent, asyncio.TimerHandle]] = {}
        self.launches: list[float] = []
        self.freed: dict[str, float] = {}  # host -> when the bench ended an attempt there
        self.retaken: list[float] = []  # seconds from a freed slot to its next launch
        self.ended: dict[tuple[str, str], dict[str, object]] = {}  # ended with nobody following
        self.reattached = 0  # follow_only launches of attempts running here (a new controller)

    def launched(self, host: str) -> None:
        now = time.time()
        self.launches.append(now)
        at = self.freed.pop(host, None)
        if at is not None:
            self.retaken.append(now - at)

    def end(self, n: int) -> int:
        ended = 0
        for key in list(self.running)[:n]:
            self.running[key][1].cancel()
            self.freed[key[0]] = time.time()
            self.exit(*key)
            ended += 1
        return ended

    def exit(self, host: str, aid: str, cancelled: bool = False) -> None:
        """The attempt ends: its exit frame to the agent following it, else kept for the next."""
        agent, _timer = self.running.pop((host, aid), (None, None))
        now = time.time()
        status = {"exit_code": None if cancelled else 0, "signal": 15 if cancelled else None,
                  "timed_out": False, "cancelled": cancelled, "fenced": False, "phase": "run",
                  "error": None, "started_at": now, "ended_at": now}
        end = {"status": status, "result": None, "error": None, "log_size": 0, "outputs": [],
               "outputs_problem": None}
        if agent is None:
            self.ended[(host, aid)] = end
        else:
            agent.frame(aid, "exit", **end)

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            words = line.decode().split()
            if words[0] == "stats":
                answer = {"running": len(self.running), "launches": len(self.launches),
                          "last_launch": self.launches[-1] if self.launches else None,
                          "retaken": self.retaken, "reattached": self.reattached}
            elif words[0] == "launch_time":  # when the n-th launch happened
                n = int(words[1])
                answer = {"at": self.launches[n - 1] if len(self.launches) >= n else None}
            else:  # end N
                answer = {"ended": self.end(int(words[1]))}
            writer.write((json.dumps(answer) + "\n").encode())
            await writer.drain()


class SimAgent:
    """fleet's agent protocol, answered in process (see runners/wrapper.py ``Agent``). As on a
    real host, an attempt outlives the channel that launched it: a new controller's agent
    (``follow_only``) takes it over, or learns how it ended."""

    def __init__(self, sim: Sim, host: str, process: asyncssh.SSHServerProcess[bytes]) -> None:
        self.sim, self.host, self.process = sim, host, process

    def frame(self, aid: str | None, kind: str, **fields: object) -> None:
        fields["a"], fields["t"] = aid, kind
        self.process.stdout.write((json.dumps(fields) + "\n").encode())

    async def run(self) -> None:
        try:
            while line := await self.process.stdin.readline():
                self.request(json.loads(line))
        except (asyncssh.Error, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:  # the attempts keep running, followed by nobody until a controller asks
            for key, (agent, timer) in list(self.sim.running.items()):
                if agent is self:
                    self.sim.running[key] = (None, timer)

    def request(self, req: dict[str, object]) -> None:
        op, aid = req.get("op"), req.get("id")
        if op == "launch":
            key = (self.host, str(aid))
            if key in self.sim.running:  # launched before: follow it (the launch marker)
                _agent, timer = self.sim.running[key]
                self.sim.running[key] = (self, timer)
                self.sim.reattached += 1
                self.frame(aid, "attached", dir="/sim")  # type: ignore[arg-type]
                return
            if key in self.sim.ended:
                self.frame(aid, "exit", **self.sim.ended.pop(key))  # type: ignore[arg-type]
                return
            if req.get("follow_only"):
                self.frame(aid, "lost", message="not launched here (simulated host)")  # type: ignore[arg-type]
                return
            match = SLEEP.search(json.dumps(req.get("argv") or req.get("job") or ""))
            seconds = float(match.group(1)) if match else 0.0
            now = time.time()
            self.frame(aid, "started", pid=4242, phase="run", at=now)  # type: ignore[arg-type]
            timer = asyncio.get_running_loop().call_later(seconds, self.sim.exit, self.host, str(aid))
            self.sim.running[key] = (self, timer)
            self.sim.launched(self.host)
        elif op in ("cancel", "fence"):
            entry = self.sim.running.get((self.host, str(aid)))
            if entry is not None:
                entry[1].cancel()
                self.sim.exit(self.host, str(aid), cancelled=True)
        elif op == "follow":
            self.frame(aid, "lost", message="not launched here (simulated host)")  # type: ignore[arg-type]
        elif op in ("ping", "renew"):  # a renewal is answered too (runners/wrapper.py)
            self.frame(aid, "pong")  # type: ignore[arg-type]
        elif op == "gc":
            self.frame(aid, "gc", removed=[], freed=0, left=0)  # type: ignore[arg-type]



class _Open(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # loopback only: no authentication


async def simulate(hosts: int, out: Path) -> None:
    sim = Sim()
    key = asyncssh.generate_private_key("ssh-ed25519")

    def serve(name: str):  # type: ignore[no-untyped-def]
        async def process(proc: asyncssh.SSHServerProcess[bytes]) -> None:
            command = proc.command or ""
            if "wrapper.py agent" in command:
                await SimAgent(sim, name, proc).run()
            else:  # the bundle check and install: take what is sent, say yes
                try:
                    while await proc.stdin.read(65536):
                        pass
                except (asyncssh.Error, ConnectionError):
                    pass
                proc.exit(0)
        return process

    lines, ports = [], []
    for i in range(hosts):
        name = f"sim{i:04d}"
        server = await asyncssh.create_server(_Open, "127.0.0.1", 0, server_host_keys=[key],
                                              process_factory=serve(name), encoding=None,
                                              line_editor=False, allow_scp=False)
        port = server.sockets[0].getsockname()[1]
        ports.append((name, port))
        lines.append(f"[127.0.0.1]:{port} {key.export_public_key().decode().strip()}")
    control = await asyncio.start_server(sim.control, "127.0.0.1", 0)
    (out / "known_hosts").write_text("\n".join(lines) + "\n")
    (out / "hosts.json").write_text(json.dumps({"hosts": ports,
                                                "control": control.sockets[0].getsockname()[1]}))
    (out / "ready").touch()
    await asyncio.Event().wait()


# ---------------------------------------------------------------------- the bench


class Control:
    def __init__(self, port: int) -> None:
        self.port = port

    async def ask(self, line: str) -> dict[str, object]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write((line + "\n").encode())
        await writer.drain()
        answer = json.loads(await reader.readline())
        writer.close()
        return answer  # type: ignore[no-any-return]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split("VmRSS:")[1].split()[0]) / 1024


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


class Stalls:
    """GET /health every 50 ms; the longest answer is how long the server's loop was held."""

    def __init__(self, http: httpx.AsyncClient, since: float | None = None) -> None:
        self.http, self.worst, self.samples = http, 0.0, 0
        self.since = time.monotonic() if since is None else since
        self.worst_at = 0.0  # when the longest answer was asked for, seconds after ``since``
        self.every = 0.05
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            asked, start = time.monotonic(), time.perf_counter()
            await self.http.get("/health")
            took = time.perf_counter() - start
            if took > self.worst:
                self.worst, self.worst_at = took, asked - self.since
            self.samples += 1
            await asyncio.sleep(self.every)

    def reset(self, every: float = 0.05) -> None:
        self.worst, self.samples, self.every = 0.0, 0, every
        self.since, self.worst_at = time.monotonic(), 0.0


async def holds(http: httpx.AsyncClient, name: str = "fleet_event_loop_hold_seconds") -> dict[float, float]:
    """The controller's own count of callbacks that held its event loop (fleet.loopwatch), or
    of its garbage collections' pauses: upper bound of each bucket -> how many took at most
    that long (the histogram's generations summed)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for f in text_string_to_metric_families((await http.get("/metrics")).text):
        if f.name == name:
            for s in f.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    out[le] = out.get(le, 0.0) + s.value
    return out


def longest_hold(before: dict[float, float], after: dict[float, float]) -> tuple[float, int]:
    """(the smallest bucket bound that holds every hold between two scrapes, how many held the
    loop 50 ms or more): from the histogram, so the figure is a bucket's upper bound."""
    grew = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = grew.get(float("inf"), 0.0)
    bound = next((le for le in sorted(grew) if grew[le] >= total), 0.0) if total else 0.0
    over = total - max((v for le, v in grew.items() if le <= 0.05), default=0.0)
    return bound, int(over)


def spec(i: int, seconds: float) -> dict[str, object]:
    return {"name": f"scale{i}", "run": f"sleep {seconds:g}", "resources": {"pool": "sim"}}


async def submit(http: httpx.AsyncClient, n: int, seconds: float, start: int = 0, batch: int = 500) -> None:
    for i in range(start, start + n, batch):
        jobs = [spec(k, seconds) for k in range(i, min(i + batch, start + n))]
        for attempt in range(5):
            try:
                r = await http.post("/jobs/batch", json={"jobs": jobs}, headers={"Idempotency-Key": f"scale-batch-{i:08d}"})
                break
            except httpx.TransportError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5)
        if r.status_code != 201:
            raise SystemExit(f"submit failed: {r.status_code} {r.text[:500]}")


async def run(args: argparse.Namespace, url: str, token: str, pid: int, control: Control,
              restart: Callable[[], Any]) -> dict[str, float]:
    figures: dict[str, float] = {}
    slots = args.hosts * args.slots
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=300) as http:
        started = time.monotonic()
        while True:  # every host checked (an SSH handshake each) before the clock starts
            hosts = (await http.get("/hosts")).json()
            good = sum(1 for h in hosts if h.get("health") == "good")
            if good == args.hosts:
                break
            if time.monotonic() - started > 600:
                raise SystemExit(f"only {good} of {args.hosts} hosts became good")
            await asyncio.sleep(1)
        print(f"hosts:    {args.hosts} simulated hosts good after {time.monotonic() - started:.1f} s "
              f"(first connects)")
        stalls = Stalls(http)
        held = await holds(http)

        t0 = time.time()
        await submit(http, slots, 600)
        while (await control.ask("stats"))["launches"] < slots:  # type: ignore[operator]
            await asyncio.sleep(0.05)
        last = (await control.ask(f"launch_time {slots}"))["at"]
        figures["fill_s"] = float(last) - t0  # type: ignore[arg-type]
        bound, over = longest_hold(held, await holds(http))
        figures["fill_longest_hold_le_s"], figures["fill_holds_over_50ms"] = bound, over
        print(f"fill:     {slots} slots filled in {figures['fill_s']:.2f} s from the first POST (target <= 2 s); "
              f"loop held <= {bound:g} s at most, {over} times over 50 ms")

        stalls.reset()
        held, paused = await holds(http), await holds(http, "fleet_gc_pause_seconds")
        t1 = time.monotonic()
        await submit(http, args.queue, 600, start=slots, batch=1000)
        took = time.monotonic() - t1
        figures["queue_submit_per_s"] = args.queue / took
        figures["queue_worst_health_ms"] = stalls.worst * 1000
        bound, over = longest_hold(held, await holds(http))
        figures["queue_longest_hold_le_s"], figures["queue_holds_over_50ms"] = bound, over
        gc_bound, gc_over = longest_hold(paused, await holds(http, "fleet_gc_pause_seconds"))
        figures["queue_longest_gc_le_s"], figures["queue_gc_over_50ms"] = gc_bound, gc_over
        print(f"queue:    {args.queue} more jobs queued at {figures['queue_submit_per_s']:.0f} jobs/s; "
              f"longest GET /health meanwhile {figures['queue_worst_health_ms']:.0f} ms ({stalls.samples} polls); "
              f"the controller's loop held <= {bound:g} s at most, {over} times over 50 ms (target: none), "
              f"of which garbage collections: {gc_over} over 50 ms, the longest <= {gc_bound:g} s")

        await asyncio.sleep(2)
        stalls.reset(every=1.0)  # a light look: the window measures the controller at rest
        c0, w0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(10)
        figures["after_burst_cpu_pct"] = (cpu_seconds(pid) - c0) / (time.monotonic() - w0) * 100
        print(f"after:    the 10 s after the submission: controller CPU {figures['after_burst_cpu_pct']:.1f}% of a core")
        await asyncio.sleep(2)
        held = await holds(http)
        c0, w0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(args.window)
        figures["steady_cpu_pct"] = (cpu_seconds(pid) - c0) / (time.monotonic() - w0) * 100
        figures["rss_mb"] = rss_mb(pid)
        figures["steady_worst_health_ms"] = stalls.worst * 1000
        bound, over = longest_hold(held, await holds(http))
        figures["steady_longest_hold_le_s"], figures["steady_holds_over_50ms"] = bound, over
        print(f"steady:   {slots} running, {args.queue} queued: controller CPU "
              f"{figures['steady_cpu_pct']:.1f}% of a core (target <= 5%), RSS {figures['rss_mb']:.0f} MB "
              f"(target <= 300 MB), longest GET /health {figures['steady_worst_health_ms']:.0f} ms, "
              f"loop held <= {bound:g} s at most ({over} times over 50 ms)")

        # The hosts' lease renewals go out to all of them at once (fleet.backends.agent.Renewer):
        # how long a request waits during one, polled every 20 ms over a whole period.
        stalls.reset(every=0.02)
        await asyncio.sleep(15)
        figures["renewals_worst_health_ms"] = stalls.worst * 1000
        print(f"renewals: GET /health every 20 ms over one renewal period of every host's leases "
              f"({stalls.samples} polls): longest {figures['renewals_worst_health_ms']:.0f} ms")

        for _ in range(10):
            await control.ask("end 20")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        retaken = (await control.ask("stats"))["retaken"]
        figures["retake_p50_ms"] = pct(retaken, 0.5) * 1000  # type: ignore[arg-type]
        figures["retake_p99_ms"] = pct(retaken, 0.99) * 1000  # type: ignore[arg-type]
        print(f"turnover: a freed slot taken again after p50 {figures['retake_p50_ms']:.1f} ms, "
              f"p99 {figures['retake_p99_ms']:.1f} ms ({len(retaken)} slots freed)")  # type: ignore[arg-type]
        stalls.task.cancel()

        worst, _ = longest_hold({}, await holds(http, "fleet_scheduler_pass_duration_seconds"))
        figures["longest_pass_le_s"] = worst
        print(f"passes:   every scheduling pass took <= {worst:g} s (its /metrics histogram)")
    figures.update(await takeover(pid, control, restart))
    return figures


async def takeover(pid: int, control: Control, restart: Callable[[], Any]) -> dict[str, float]:
    """The controller killed (SIGKILL) with every slot busy and the queue full; a new one on the
    same database takes over: when it answers, when it has reattached every running attempt
    (the simulated hosts count the follow-only launches), how long its loop was held on the
    way (its own histogram: everything since it started), and whether it launched anything
    (the fleet is full: nothing may start, and no attempt may start twice)."""
    figures: dict[str, float] = {}
    before = await control.ask("stats")
    running = int(before["running"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    info = await asyncio.to_thread(restart)
    async with httpx.AsyncClient(base_url=info.url, headers={"Authorization": f"Bearer {info.token}"},
                                 timeout=300) as http:
        while True:
            try:
                if (await http.get("/health")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        figures["takeover_answers_s"] = time.monotonic() - killed
        stalls = Stalls(http, since=killed)
        while True:
            stats = await control.ask("stats")
            if int(stats["reattached"]) >= running or time.monotonic() - killed > 300:  # type: ignore[call-overload]
                break
            await asyncio.sleep(0.05)
        figures["takeover_reattached_s"] = time.monotonic() - killed
        await asyncio.sleep(2)
        stats = await control.ask("stats")
        stalls.task.cancel()
        figures["takeover_reattached"] = float(stats["reattached"])  # type: ignore[arg-type]
        figures["takeover_launched"] = float(int(stats["launches"]) - int(before["launches"]))  # type: ignore[call-overload]
        figures["takeover_worst_health_ms"] = stalls.worst * 1000
        figures["takeover_worst_health_at_s"] = stalls.worst_at
        bound, over = longest_hold({}, await holds(http))
        figures["takeover_longest_hold_le_s"], figures["takeover_holds_over_50ms"] = bound, over
        gc_bound, gc_over = longest_hold({}, await holds(http, "fleet_gc_pause_seconds"))
        figures["takeover_longest_gc_le_s"], figures["takeover_gc_over_50ms"] = gc_bound, gc_over
    print(f"takeover: controller killed (SIGKILL) with {running} running; the next answered after "
          f"{figures['takeover_answers_s']:.2f} s, reattached {figures['takeover_reattached']:.0f} in "
          f"{figures['takeover_reattached_s']:.2f} s, launched {figures['takeover_launched']:.0f} (target 0); "
          f"longest GET /health {figures['takeover_worst_health_ms']:.0f} ms (asked "
          f"{figures['takeover_worst_health_at_s']:.1f} s after the kill), its loop held <= {bound:g} s at "
          f"most since it started, {over} times over 50 ms, of which garbage collections: {gc_over} over "
          f"50 ms, the longest <= {gc_bound:g} s")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    sim = sub.add_parser("simulate")
    sim.add_argument("--hosts", type=int, required=True)
    sim.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--queue", type=int, default=50_000)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.cmd == "simulate":
        asyncio.run(simulate(args.hosts, args.out))
        return 0

    work = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    lab = work / "lab"
    lab.mkdir()
    sim_proc = subprocess.Popen([sys.executable, __file__, "simulate", "--hosts", str(args.hosts), "--out", str(lab)],
                                stdout=subprocess.DEVNULL, stderr=open(lab / "sim.log", "wb"))
    settings = None
    try:
        deadline = time.monotonic() + 300
        while not (lab / "ready").exists():
            if sim_proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"simulator failed: {(lab / 'sim.log').read_text()[-2000:]}")
            time.sleep(0.1)
        info = json.loads((lab / "hosts.json").read_text())
        inventory = work / "hosts.ini"
        inventory.write_text("[sim]\n" + "".join(
            f"{name} ansible_host=127.0.0.1 ansible_port={port} ansible_user=bench fleet_slots={args.slots} "
            f"fleet_arch=x86_64 fleet_accelerator=cpu fleet_workdir=/tmp/fleet-scale-sim\n"
            for name, port in info["hosts"]))
        home = work / "home"
        home.mkdir()
        shutil.copy(lab / "known_hosts", home / "known_hosts")
        os.environ["FLEET_HOME"] = str(home)
        for var in ("FLEET_SERVER", "FLEET_TOKEN", "FLEET_INVENTORY"):
            os.environ.pop(var, None)
        from fleet.client import discovery as local
        from fleet.config import load_settings

        settings = load_settings()
        started = local.start_local(settings, str(inventory))
        assert started.token and started.pid
        print(f"controller: fleet serve pid {started.pid}; simulator pid {sim_proc.pid} (separate process)")
        figures = asyncio.run(run(args, started.url, started.token, started.pid, Control(info["control"]),
                                  lambda: local.start_local(settings, str(inventory))))
        for line in settings.server_log.read_text(errors="replace").splitlines():
            if "event loop was held" in line:  # fleet.loopwatch: what held it, in words
                print(f"  server log: {line}")
        if args.json:
            print(json.dumps(figures, indent=2))
    finally:
        if settings is not None:
            from fleet.client import discovery as local

            local.stop_local(settings)
        sim_proc.send_signal(signal.SIGTERM)
        sim_proc.wait(10)
        if os.environ.get("FLEET_SCALE_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
