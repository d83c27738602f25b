#!/usr/bin/env python3
"""The floor of one POST per job: what the HTTP round trip alone costs, before fleet does anything.

    python bench/http_floor.py [--requests 4000] [--concurrency 8 64]

A FastAPI app whose ``POST /jobs`` returns its body at once, served by uvicorn as ``fleet serve``
serves (the same HTTP implementation, no access log), driven by the client bench/dispatch.py uses
(httpx, the same spec, a bearer header and an idempotency key), ``--concurrency`` requests at a
time in two shapes: that many clients of one keep-alive connection each (as many users' scripts
submit; bench/dispatch.py's one-POST phase), and one client holding that many connections.
Prints CPU per request of the server process and of the client(s). The two shapes differ in the
client: httpx's connection pool costs a client more per request the more connections it holds
(measured here: 64 clients of one connection 0.7-0.9 ms, one client of 64 connections 3.2-3.5 ms;
making a client, ~30 ms of loading the CA store, is not counted).
bench/dispatch.py prints the first shape beside fleet's own one-POST figures: fleet's cost per job
on that path is this floor plus fleet's work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx

APP = """
import sys
import uvicorn
from fastapi import FastAPI

app = FastAPI()

@app.post("/jobs", status_code=201)
async def submit(body: dict) -> dict:
    return {"id": "j0", **body}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def _cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _load(url: str, requests: int, concurrency: int, submitters: bool, server: int) -> tuple[float, float]:
    """``requests`` POSTs, ``concurrency`` at a time: from one client holding that many
    connections, or (``submitters``) from that many clients of one keep-alive connection each.
    Returns the CPU seconds the server process and this one spent on them: the clients are made
    before counting (making one loads the CA store, ~30 ms; bench/dispatch.py does the same)."""
    headers = {"Authorization": "Bearer flt_" + "x" * 43}  # as long as a fleet token

    def client(connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, headers=headers, timeout=60,
                                 limits=httpx.Limits(max_connections=connections))

    async def post(http: httpx.AsyncClient, i: int) -> None:
        r = await http.post("/jobs", json={"name": f"floor{i}", "run": "echo hello $FLEET_JOB_ID"},
                            headers={"Idempotency-Key": f"floor-{i:010d}"})
        r.raise_for_status()

    clients = [client(1) for _ in range(concurrency)] if submitters else [client(concurrency)]
    sem = asyncio.Semaphore(concurrency)

    async def submitter(k: int) -> None:
        for i in range(k, requests, concurrency):
            await post(clients[k], i)

    async def one(i: int) -> None:
        async with sem:
            await post(clients[0], i)

    try:
        server0, client0 = _cpu(server), time.process_time()
        if submitters:
            await asyncio.gather(*(submitter(k) for k in range(concurrency)))
        else:
            await asyncio.gather(*(one(i) for i in range(requests)))
        return _cpu(server) - server0, time.process_time() - client0
    finally:
        for c in clients:
            await c.aclose()


def http_floor(requests: int = 4000, concurrency: int = 64, submitters: bool = True) -> dict[str, float]:
    """CPU-ms per request of the server and of the client(s) for a POST that does nothing."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", APP, str(port)], stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url + "/jobs", json={}, timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the floor's server did not start") from None
                time.sleep(0.05)
        asyncio.run(_load(url, min(requests, 200), concurrency, submitters, proc.pid))  # warm both ends
        server, client = asyncio.run(_load(url, requests, concurrency, submitters, proc.pid))
        return {"server_ms": server * 1000 / requests, "client_ms": client * 1000 / requests}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    args = ap.parse_args()
    for conc in args.concurrency:
        for submitters in (True, False):
            f = http_floor(args.requests, conc, submitters)
            shape = f"{conc} clients of one connection" if submitters else f"one client of {conc} connections"
            print(f"no-op POST /jobs, {shape}: server {f['server_ms']:.2f} ms, client {f['client_ms']:.2f} ms, "
                  f"together {f['server_ms'] + f['client_ms']:.2f} ms CPU per request")


if __name__ == "__main__":
    main()
