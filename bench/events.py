#!/usr/bin/env python3
"""Event stream benchmark: how soon a state change reaches a client over ``GET /events``, with
no other subscriber and with many idle ones, against polling the job every 0.2 s (the way
clients waited before the stream), measured in the same run.

    python bench/events.py [--subscribers 1000] [--jobs 40] [--json]

Each job's ``job.state`` events carry the time the change was written (``at``); the delay is
the client's clock when the event arrives minus that (same machine, same clock). The idle
subscribers are raw HTTP connections that take every event and discard it. Prints p50/p99
delay alone and with the subscribers, the poll baseline's p50, the ratio, the subscribers
held and the server's memory. Target: 1,000 subscribers, p50 delay <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def subscriber(host: str, port: int, token: str, query: str, ready: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /events{query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    seen = b""
    while b"event: ready" not in seen:
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError(f"subscriber closed before ready: {seen[:200]!r}")
        seen += chunk
    ready[0] += 1
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


def subscribers_process(host: str, port: int, token: str, query: str, n: int, conn: Any) -> None:
    """In a process of its own (its reading is not the server's time): hold ``n`` streams."""

    async def hold() -> None:
        ready = [0]
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(subscriber(host, port, token, query, ready)) for _ in range(n)]
        while ready[0] < n:
            await asyncio.sleep(0.01)
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()  # type: ignore[misc]
        conn.send(time.perf_counter() - t0)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(hold())


async def measure(url: str, token: str, jobs: int) -> tuple[list[float], list[float]]:
    """(event delays in ms for every job.state event, poll-baseline delays in ms for the end)."""
    headers = {"Authorization": f"Bearer {token}"}
    delays: list[float] = []
    polled: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        for _ in range(jobs):
            ended_at: float | None = None
            seen_end = asyncio.get_running_loop().create_future()
            poller: asyncio.Task[None] | None = None
            async with http.stream("GET", "/events", params={"type": "job.state"},
                                   timeout=httpx.Timeout(60, read=60)) as resp:
                data, job = None, None
                async for line in resp.aiter_lines():
                    if line.startswith("event: ready"):
                        # Subscribed: now make the changes to be told of.
                        job = (await http.post("/jobs", json={"name": "ev", "run": "true"})).json()["id"]

                        async def poll(job: str = job) -> None:  # the baseline: look every 0.2 s
                            while True:
                                state = (await http.get(f"/jobs/{job}")).json()["state"]
                                if state == "SUCCEEDED":
                                    seen_end.set_result(time.time())
                                    return
                                await asyncio.sleep(0.2)

                        poller = asyncio.create_task(poll())
                    elif line.startswith("data:"):
                        data = json.loads(line[5:])
                    elif line == "" and data is not None:
                        if data.get("type") == "job.state" and data.get("job") == job:
                            delays.append((time.time() - data["at"]) * 1000)
                            if data["state"] == "SUCCEEDED":
                                ended_at = data["at"]
                                break
                        data = None
            assert poller is not None
            end_seen = await seen_end
            await poller
            if ended_at is not None:
                polled.append((end_seen - ended_at) * 1000)
    return delays, polled


async def run(args: argparse.Namespace) -> dict[str, object]:
    home = Path(tempfile.mkdtemp(prefix="fleet-bench-events-"))
    os.environ["FLEET_HOME"] = str(home)
    from fleet.client import discovery as local
    from fleet.config import load_settings

    settings = load_settings()
    info = local.start_local(settings, None)
    try:
        base = rss_mib(info.pid)
        # Warm-up and the stream alone. The ``after=0`` streams start from a recent event id
        # anyway: only the live part is timed (delays are per event, when it arrives).
        await measure(info.url, info.token, 3)
        alone, polled = await measure(info.url, info.token, args.jobs)
        host, port = info.url.removeprefix("http://").rsplit(":", 1)
        results: dict[str, Any] = {}
        # idle: waiting for a job that never changes (fleet status --wait); all: every event.
        for kind, query in (("idle", "?job=j-never"), ("all", "")):
            parent, child = multiprocessing.Pipe()
            proc = multiprocessing.Process(target=subscribers_process,
                                           args=(host, int(port), info.token, query, args.subscribers, child))
            proc.start()
            connect_s = parent.recv()
            held_rss = rss_mib(info.pid)
            crowded, _ = await measure(info.url, info.token, args.jobs)
            parent.send("stop")
            proc.join(30)
            results[kind] = (connect_s, held_rss, crowded)
    finally:
        local.stop_local(settings)
    poll_p50 = statistics.median(polled)

    def figures(delays: list[float]) -> dict[str, float]:
        return {"p50": round(pct(delays, 0.5), 2), "p99": round(pct(delays, 0.99), 2), "n": len(delays)}

    out: dict[str, Any] = {
        "subscribers": args.subscribers,
        "server_rss_mib_idle": round(base, 1),
        "event_delay_ms_alone": figures(alone),
        "poll_0.2s_delay_ms_baseline": {"p50": round(poll_p50, 2), "p99": round(pct(polled, 0.99), 2)},
    }
    for kind, (connect_s, held_rss, crowded) in results.items():
        out[f"with_{kind}_subscribers"] = {
            "subscribe_all_s": round(connect_s, 2), "server_rss_mib": round(held_rss, 1),
            "event_delay_ms": figures(crowded),
            "ratio_poll_p50_over_event_p50": round(poll_p50 / max(pct(crowded, 0.5), 0.01), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.subscribers + 256)), hard))
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return
    a, p = out["event_delay_ms_alone"], out["poll_0.2s_delay_ms_baseline"]
    print(f"event delay, no other subscriber:      p50 {a['p50']:6.1f} ms  p99 {a['p99']:6.1f} ms  ({a['n']} events)")
    for kind, what in (("idle", "idle (waiting on another job)"), ("all", "taking every event")):
        w = out[f"with_{kind}_subscribers"]
        d = w["event_delay_ms"]
        print(f"event delay, {out['subscribers']} subscribers {what}: p50 {d['p50']:6.1f} ms  "
              f"p99 {d['p99']:6.1f} ms  (subscribed in {w['subscribe_all_s']} s; server "
              f"{w['server_rss_mib']} MiB, {out['server_rss_mib_idle']} MiB before; "
              f"poll/event p50 {w['ratio_poll_p50_over_event_p50']}x)")
    print(f"baseline, polling every 0.2 s:          p50 {p['p50']:6.1f} ms  p99 {p['p99']:6.1f} ms")


if __name__ == "__main__":
    main()
