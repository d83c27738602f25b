#!/usr/bin/env python3
"""CPU per small SSH write by cipher (not a test): why fleet's controller asks for AES-GCM first.

    python bench/ssh_cipher.py [--writes 5000]

One asyncssh server and client in this process on loopback; the client writes ``--writes``
one-line messages (a lease renewal's size) into a session channel the server reads. Prints the
CPU per write (both ends) for each cipher, and each one's ratio to asyncssh's default,
ChaCha20-Poly1305, measured in the same run (fleet.backends.connection.ENCRYPTION_ALGS).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh

from fleet.backends.connection import ENCRYPTION_ALGS

BASELINE = "chacha20-poly1305@openssh.com"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(writes: int) -> dict[str, float]:
    key = asyncssh.generate_private_key("ssh-ed25519")

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    async def handle(proc: asyncssh.SSHServerProcess) -> None:  # type: ignore[type-arg]
        async for _line in proc.stdin:
            pass
        proc.exit(0)

    server = await asyncssh.create_server(Server, "127.0.0.1", 0, server_host_keys=[key], process_factory=handle)
    port = server.sockets[0].getsockname()[1]
    out: dict[str, float] = {}
    for alg in [BASELINE, *[a for a in ENCRYPTION_ALGS if a != BASELINE]]:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="bench",
                                    encryption_algs=[alg]) as conn:
            proc = await conn.create_process("cat")
            for _ in range(500):  # warm up: the first writes of a connection (and of a run) cost more
                proc.stdin.write('{"op": "renew"}\n')
                await asyncio.sleep(0)
            await proc.stdin.drain()
            start = cpu()
            for _ in range(writes):
                proc.stdin.write('{"op": "renew"}\n')
                await asyncio.sleep(0)  # each write its own packet, as renewals are
            await proc.stdin.drain()
            out[alg] = (cpu() - start) / writes * 1e6
            proc.stdin.write_eof()
            await proc.wait()
    server.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=5000)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.writes))
    base = figures[BASELINE]
    for alg, us in figures.items():
        print(f"{alg:32s} {us:7.0f} us CPU per write (both ends)  {us / base:5.2f}x {BASELINE}")


if __name__ == "__main__":
    main()
