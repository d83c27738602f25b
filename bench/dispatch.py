#!/usr/bin/env python3
"""Dispatch benchmark: the whole path (API -> DB -> scheduler -> SSH -> result) against a
raw asyncssh loop and Ansible ad-hoc on the same simulated hosts, measured in the same run.

    python bench/dispatch.py [--hosts 50] [--jobs 2000] [--idle 100] [--rows 100000] [--work DIR] [--json]

Prints fleet's jobs/s and submit->start p50/p99 (idle fleet), the raw asyncssh limit, Ansible
ad-hoc on 10 hosts, the ratios, CPU per job per process tree (this client, the server, the lab
hosts with the commands they ran) against raw asyncssh's per command, the same for a POST that
does nothing (bench/http_floor.py: the floor of one POST per job), and the server-side time of the first page of ``fleet jobs``
with 100,000 jobs in the database. The lab hosts (pure-Python asyncssh servers) run in a
separate process (``python -m tests.lab serve``); their files and the server's go under
``--work`` (default: the temp dir), whose filesystem is printed first. Targets on a 2-core machine: fleet >= 0.3x
raw asyncssh throughput; submit->start p50 <= 25 ms; jobs page <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import asyncssh
import httpx
from agent_cost import filesystem
from http_floor import http_floor

COMMAND = "echo hello"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def start_lab(hosts: int, out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    join = None
    if os.geteuid() == 0:
        sys.path.insert(0, str(REPO / "bench"))
        from agent_cost import CGroup

        LAB_GROUP[:] = [CGroup("lab")]
        join = LAB_GROUP[0].join
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.lab", "serve", "--hosts", str(hosts), "--profile", "rtx5060",
         "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(out / "lab.log", "wb"),
        preexec_fn=join,
    )
    deadline = time.monotonic() + 60
    while not (out / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"lab failed to start: {(out / 'lab.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def lab_hosts(inventory: Path) -> list[dict[str, str]]:
    """(name, address, port, user, key) per host from the lab's INI inventory."""
    hosts = []
    for line in inventory.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("[", "#", ";")):
            continue
        name, *pairs = line.split()
        fields = dict(p.split("=", 1) for p in pairs if "=" in p)
        hosts.append({"name": name, **fields})
    return hosts


# ---------------------------------------------------------------------- baselines


RAW_CPU: dict[str, float] = {}


async def raw_asyncssh(hosts: list[dict[str, str]], known_hosts: Path, jobs: int) -> float:
    """The limit: one connection per host, one command at a time per host (1 slot), no DB.
    Its CPU per command (this process, the hosts) goes to RAW_CPU."""
    conns = await asyncio.gather(*(
        asyncssh.connect(h["ansible_host"], port=int(h["ansible_port"]), username=h["ansible_user"],
                         client_keys=[h["ansible_ssh_private_key_file"]], known_hosts=str(known_hosts))
        for h in hosts
    ))
    remaining = jobs

    async def worker(conn: asyncssh.SSHClientConnection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await conn.run(COMMAND, check=True)

    start = time.perf_counter()
    cpu0 = (time.process_time(), lab_cpu())
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    RAW_CPU.update(client_ms=(time.process_time() - cpu0[0]) * 1000 / jobs,
                   hosts_ms=(lab_cpu() - cpu0[1]) * 1000 / jobs)
    for c in conns:
        c.close()
    return jobs / elapsed


def ansible_adhoc(inventory: Path, known_hosts: Path, count: int = 10) -> float:
    """Commands per second of one ``ansible -m command`` over ``count`` hosts."""
    ansible = shutil.which("ansible") or str(Path(sys.executable).parent / "ansible")
    env = dict(os.environ)
    env.update(
        ANSIBLE_HOST_KEY_CHECKING="True",
        ANSIBLE_SSH_ARGS=f"-o UserKnownHostsFile={known_hosts} -o ControlMaster=no",
        ANSIBLE_PYTHON_INTERPRETER="auto_silent", ANSIBLE_STDOUT_CALLBACK="minimal",
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [ansible, "-i", str(inventory), f"all[0:{count - 1}]", "-m", "command", "-a", COMMAND, "-f", str(count)],
        capture_output=True, text=True, env=env,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"ansible ad-hoc failed (exit {proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
        return float("nan")
    return count / elapsed


# ---------------------------------------------------------------------- fleet


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` and of its children it has waited for (the lab's shell
    commands, reaped by it): user + system, from /proc (fields 14-17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


LAB_PID: list[int] = []
LAB_GROUP: list[Any] = []  # bench/agent_cost.py's CGroup holding the lab (as root)


def lab_cpu() -> float:
    """The hosts' CPU: the lab process and everything under it (its agents, their attempts'
    supervisors and jobs) when it runs in a cgroup of its own (root); else the lab process and
    the children it reaped only (an agent still running is not counted)."""
    if LAB_GROUP:
        return float(LAB_GROUP[0].usage_ms()) / 1000
    return cpu_seconds(LAB_PID[0]) if LAB_PID else 0.0


SERVER_PID: list[int] = []


def start_fleet(home: Path, inventory: Path | None, known_hosts: Path | None) -> tuple[str, str, object]:
    os.environ["FLEET_HOME"] = str(home)
    for var in ("FLEET_SERVER", "FLEET_TOKEN", "FLEET_INVENTORY"):
        os.environ.pop(var, None)
    home.mkdir(parents=True, exist_ok=True)
    if known_hosts:
        shutil.copy(known_hosts, home / "known_hosts")
    from fleet.client import discovery as local
    from fleet.config import load_settings

    settings = load_settings()
    info = local.start_local(settings, str(inventory) if inventory else None)
    assert info.token
    SERVER_PID[:] = [info.pid] if info.pid else []
    return info.url, info.token, settings


def stop_fleet(settings: object) -> None:
    from fleet.client import discovery as local

    local.stop_local(settings)  # type: ignore[arg-type]


async def fleet_throughput(url: str, token: str, jobs: int, concurrency: int = 64, batch: int = 1, tag: str = "b",
                           submitters: int = 0) -> dict[str, float]:
    """Submit ``jobs`` jobs, ``concurrency`` requests at a time, and wait for their ends.

    ``submitters`` > 0: that many independent clients (as many users' scripts or CLI calls), each
    with its own keep-alive connection, send the POSTs; 0: one client with a pool of
    ``concurrency`` connections sends them all (httpx's pool costs that client more per request
    the more connections it holds: bench/http_floor.py prints both shapes)."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as http:
        sem = asyncio.Semaphore(concurrency)

        def spec(i: int) -> dict[str, str]:
            return {"name": f"{tag}{i}", "run": COMMAND + " $FLEET_JOB_ID"}

        async def post(client: httpx.AsyncClient, i: int) -> None:
            # As fleet's client does: one idempotency key per submission, sent again when
            # the connection broke before the answer (a keep-alive connection the server had
            # just closed: httpx.ReadError); the jobs are made once.
            key = {"Idempotency-Key": f"{tag}-{i:010d}-{os.getpid()}"}
            for attempt in range(5):
                try:
                    if batch == 1:
                        r = await client.post("/jobs", json=spec(i), headers=key)
                    else:
                        r = await client.post("/jobs/batch", headers=key, json={
                            "jobs": [spec(k) for k in range(i, min(i + batch, jobs))]})
                    break
                except httpx.TransportError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2)
            r.raise_for_status()

        async def one(i: int) -> None:
            async with sem:
                await post(http, i)

        # The submitters' clients are made before the CPU is counted (as a script makes its
        # client once): the figure is what a POST costs, not what making a client costs.
        own = [httpx.AsyncClient(base_url=url, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=1)) for _ in range(submitters)]

        async def submitter(k: int) -> None:
            for i in range(k * batch, jobs, submitters * batch):
                await post(own[k], i)

        cpu0 = (cpu_seconds(SERVER_PID[0]) if SERVER_PID else 0.0, time.process_time(), lab_cpu())
        start = time.perf_counter()
        if submitters:
            await asyncio.gather(*(submitter(k) for k in range(submitters)))
        else:
            await asyncio.gather(*(one(i) for i in range(0, jobs, batch)))
        submitted = time.perf_counter() - start
        for client in own:
            await client.aclose()
        active = "PENDING,RETRYING,STARTING,RUNNING,CANCELLING"
        while True:
            r = await http.get("/jobs", params={"state": active, "limit": 1})
            if not r.json()["items"]:
                break
            await asyncio.sleep(0.5)  # the rate is taken from the jobs' own end times
        server_cpu = (cpu_seconds(SERVER_PID[0]) if SERVER_PID else 0.0) - cpu0[0]
        client_cpu = time.process_time() - cpu0[1]
        hosts_cpu = lab_cpu() - cpu0[2]
        items: list[dict] = []
        before = None
        while True:
            params: dict[str, object] = {"limit": 1000}
            if before:
                params["before"] = before
            page = (await http.get("/jobs", params=params)).json()
            items += page["items"]
            before = page["next"]
            if not before:
                break
    items = [j for j in items if j["name"].startswith(tag) and j["name"][len(tag):].isdigit()]
    ok = sum(1 for j in items if j["state"] == "SUCCEEDED")
    first = min(j["created_ts"] for j in items)
    last = max(j["ended_ts"] for j in items if j["ended_ts"])
    return {"jobs": len(items), "succeeded": ok, "jobs_per_s": len(items) / (last - first),
            "submit_per_s": jobs / submitted, "server_cpu_ms": 1000 * server_cpu / jobs,
            "client_cpu_ms": 1000 * client_cpu / jobs, "hosts_cpu_ms": 1000 * hosts_cpu / jobs}


async def fleet_idle_latency(url: str, token: str, count: int) -> list[float]:
    """submit->start (ms) of jobs sent one at a time to an idle fleet (host clock for start)."""
    headers = {"Authorization": f"Bearer {token}"}
    out = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        for i in range(count):
            r = await http.post("/jobs", json={"name": f"idle{i}", "run": COMMAND})
            job_id = r.json()["id"]
            detail = (await http.get(f"/jobs/{job_id}/wait", params={"timeout": 30})).json()
            assert detail["state"] == "SUCCEEDED", detail
            out.append((detail["started_ts"] - detail["created_ts"]) * 1000)
    return out


def fill_jobs(db: Path, rows: int) -> None:
    """Bulk-insert finished jobs (as a busy lab accumulates them) straight into SQLite."""
    from fleet.ids import new_id

    conn = sqlite3.connect(db)
    now = time.time()
    states = ["SUCCEEDED", "FAILED", "CANCELLED", "SUCCEEDED", "TIMED_OUT"]
    users = ["alice", "bob", "carol", "root"]
    data = [
        (new_id("j"), f"job{i}", users[i % 4], "shell", "shell", "local", "*/*/*", 500,
         '{"name":"x","run":"true"}', states[i % 5], "succeeded", None, now - rows + i, now - rows + i,
         now - rows + i, now - rows + i + 1, "localhost", 1, None)
        for i in range(rows)
    ]
    conn.executemany(
        "INSERT INTO jobs (id, name, user, kind, runner, pool, queue, priority, spec_json, state, reason,"
        " message, created_at, updated_at, started_at, ended_at, host, attempt_count, current_attempt)"
        " VALUES (" + ",".join("?" * 19) + ")", data)
    conn.commit()
    conn.close()


def jobs_page_timing(url: str, token: str, params: dict[str, object], repeat: int = 30) -> tuple[float, float]:
    """(server-side ms p50, client-side ms p50) of GET /jobs."""
    server, client = [], []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(repeat):
            t = time.perf_counter()
            r = http.get("/jobs", params=params)
            client.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
            server.append(float(r.headers["server-timing"].split("dur=")[1]))
    return statistics.median(server), statistics.median(client)


# ---------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=100, help="jobs for the idle submit->start latency")
    ap.add_argument("--rows", type=int, default=100_000, help="jobs in the DB for the listing test")
    ap.add_argument("--work", type=Path, default=None,
                    help="the directory the lab hosts' and the server's files go under (default: the "
                         "system's temp dir); its filesystem is printed, see below")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fleet-bench-", dir=args.work))
    # The hosts create a few files per attempt and the server one (its log): on an ext4 without
    # a journal that saw many files come and go, the kernel's inode allocator adds 0.3-1 ms per
    # file (bench/agent_cost.py), which is the filesystem's cost, not fleet's.
    print(f"files under {work} ({filesystem(work)})")
    lab = start_lab(args.hosts, work / "lab")
    LAB_PID[:] = [lab.pid]
    figures: dict[str, float] = {}
    try:
        inventory, known_hosts = work / "lab" / "inventory.ini", work / "lab" / "known_hosts"
        hosts = lab_hosts(inventory)
        print(f"lab: {len(hosts)} pure-Python asyncssh hosts in a separate process")

        figures["raw_asyncssh_per_s"] = asyncio.run(raw_asyncssh(hosts, known_hosts, args.jobs))
        print(f"raw asyncssh loop:     {figures['raw_asyncssh_per_s']:8.1f} commands/s ({args.jobs} commands)")
        figures["raw_cpu_ms"] = RAW_CPU["client_ms"] + RAW_CPU["hosts_ms"]
        print(f"  CPU per command: client {RAW_CPU['client_ms']:.2f} ms, hosts {RAW_CPU['hosts_ms']:.2f} ms, "
              f"total {figures['raw_cpu_ms']:.2f} ms")
        figures["ansible_adhoc_per_s"] = ansible_adhoc(inventory, known_hosts, min(10, len(hosts)))
        print(f"ansible ad-hoc (10):   {figures['ansible_adhoc_per_s']:8.1f} commands/s")

        url, token, settings = start_fleet(work / "fleet", inventory, known_hosts)
        try:
            # Warm the connection pool and the runner bundle on every host first.
            asyncio.run(fleet_throughput(url, token, len(hosts), tag="warm"))
            lat = asyncio.run(fleet_idle_latency(url, token, args.idle))
            figures["submit_start_p50_ms"] = pct(lat, 0.5)
            figures["submit_start_p99_ms"] = pct(lat, 0.99)
            print(f"fleet submit->start:   p50 {figures['submit_start_p50_ms']:.1f} ms, "
                  f"p99 {figures['submit_start_p99_ms']:.1f} ms (idle fleet, {args.idle} jobs)")
            # One POST per job from 64 submitters (as many users' scripts), each with its own
            # keep-alive connection; one client holding 64 connections is printed after it.
            tp = asyncio.run(fleet_throughput(url, token, args.jobs, tag="single", submitters=64))
            figures["fleet_per_s"] = tp["jobs_per_s"]
            figures["fleet_submit_per_s"] = tp["submit_per_s"]
            print(f"fleet end to end:      {tp['jobs_per_s']:8.1f} jobs/s ({tp['succeeded']}/{tp['jobs']} "
                  f"succeeded; one POST /jobs per job from 64 submitters, API accepted "
                  f"{tp['submit_per_s']:.0f} jobs/s)")
            figures["fleet_server_cpu_ms"] = tp["server_cpu_ms"]
            figures["fleet_cpu_ms"] = tp["server_cpu_ms"] + tp["client_cpu_ms"] + tp["hosts_cpu_ms"]
            print(f"  CPU per job: client {tp['client_cpu_ms']:.2f} ms, server {tp['server_cpu_ms']:.2f} ms, "
                  f"hosts {tp['hosts_cpu_ms']:.2f} ms, total {figures['fleet_cpu_ms']:.2f} ms "
                  f"= {figures['fleet_cpu_ms'] / figures['raw_cpu_ms']:.2f}x raw asyncssh's")
            floor = http_floor(args.jobs, 64)
            figures["http_floor_ms"] = floor["server_ms"] + floor["client_ms"]
            print(f"  of which the HTTP round trip alone (a no-op POST /jobs on uvicorn, bench/http_floor.py): "
                  f"client {floor['client_ms']:.2f} ms, server {floor['server_ms']:.2f} ms")
            tq = asyncio.run(fleet_throughput(url, token, args.jobs, tag="pooled"))
            figures["fleet_pooled_cpu_ms"] = tq["server_cpu_ms"] + tq["client_cpu_ms"] + tq["hosts_cpu_ms"]
            print(f"  the same from one client holding 64 connections: {tq['jobs_per_s']:.1f} jobs/s; CPU per "
                  f"job: client {tq['client_cpu_ms']:.2f} ms, server {tq['server_cpu_ms']:.2f} ms, hosts "
                  f"{tq['hosts_cpu_ms']:.2f} ms, total {figures['fleet_pooled_cpu_ms']:.2f} ms = "
                  f"{figures['fleet_pooled_cpu_ms'] / figures['raw_cpu_ms']:.2f}x (httpx's pool: bench/http_floor.py)")
            tb = asyncio.run(fleet_throughput(url, token, args.jobs, batch=50, tag="batch"))
            figures["fleet_batch_per_s"] = tb["jobs_per_s"]
            print(f"fleet end to end:      {tb['jobs_per_s']:8.1f} jobs/s ({tb['succeeded']}/{tb['jobs']} "
                  f"succeeded; POST /jobs/batch of 50, API accepted {tb['submit_per_s']:.0f} jobs/s)")
            figures["fleet_batch_server_cpu_ms"] = tb["server_cpu_ms"]
            figures["fleet_batch_cpu_ms"] = tb["server_cpu_ms"] + tb["client_cpu_ms"] + tb["hosts_cpu_ms"]
            print(f"  CPU per job: client {tb['client_cpu_ms']:.2f} ms, server {tb['server_cpu_ms']:.2f} ms, "
                  f"hosts {tb['hosts_cpu_ms']:.2f} ms, total {figures['fleet_batch_cpu_ms']:.2f} ms "
                  f"= {figures['fleet_batch_cpu_ms'] / figures['raw_cpu_ms']:.2f}x raw asyncssh's")
        finally:
            stop_fleet(settings)
    finally:
        lab.send_signal(signal.SIGTERM)
        lab.wait(timeout=30)
        if LAB_GROUP:
            LAB_GROUP[0].close()

    url, token, settings = start_fleet(work / "fleet-100k", None, None)
    try:
        stop_fleet(settings)  # the schema exists now; fill it while no server holds it
        fill_jobs(work / "fleet-100k" / "fleet.db", args.rows)
        url, token, settings = start_fleet(work / "fleet-100k", None, None)
        srv, cli = jobs_page_timing(url, token, {"limit": 50})
        figures["jobs_page_ms"] = srv
        srv_s, _ = jobs_page_timing(url, token, {"limit": 50, "state": "FAILED"})
        srv_u, _ = jobs_page_timing(url, token, {"limit": 50, "user": "bob"})
        figures["jobs_page_state_ms"], figures["jobs_page_user_ms"] = srv_s, srv_u
        print(f"fleet jobs, {args.rows} rows: first page {srv:.2f} ms server-side ({cli:.2f} ms "
              f"client-side); --state {srv_s:.2f} ms; --user {srv_u:.2f} ms")
    finally:
        stop_fleet(settings)

    figures["ratio_fleet_vs_raw"] = figures["fleet_per_s"] / figures["raw_asyncssh_per_s"]
    figures["ratio_fleet_batch_vs_raw"] = figures["fleet_batch_per_s"] / figures["raw_asyncssh_per_s"]
    figures["ratio_fleet_vs_ansible"] = figures["fleet_per_s"] / figures["ansible_adhoc_per_s"]
    print(f"ratio fleet / raw asyncssh:    {figures['ratio_fleet_vs_raw']:.2f}x single submits, "
          f"{figures['ratio_fleet_batch_vs_raw']:.2f}x batched (target >= 0.3x)")
    print(f"ratio fleet / ansible ad-hoc:  {figures['ratio_fleet_vs_ansible']:.1f}x")
    verdicts = {
        "throughput >= 0.3x raw (single submits)": figures["ratio_fleet_vs_raw"] >= 0.3,
        "throughput >= 0.3x raw (batched submits)": figures["ratio_fleet_batch_vs_raw"] >= 0.3,
        "submit->start p50 <= 25 ms": figures["submit_start_p50_ms"] <= 25,
        "jobs page <= 50 ms": figures["jobs_page_ms"] <= 50,
        "CPU per job <= 2x raw asyncssh (one POST per job)": figures["fleet_cpu_ms"] <= 2 * figures["raw_cpu_ms"],
        "CPU per job <= 1.5x raw asyncssh (batched)": figures["fleet_batch_cpu_ms"] <= 1.5 * figures["raw_cpu_ms"],
        "server CPU <= 3 ms per job (one POST per job)": figures["fleet_server_cpu_ms"] <= 3,
        "server CPU <= 1.5 ms per job (batched)": figures["fleet_batch_server_cpu_ms"] <= 1.5,
    }
    for name, ok in verdicts.items():
        print(f"  {'met' if ok else 'NOT MET'}: {name}")
    if args.json:
        print(json.dumps(figures))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
