#!/usr/bin/env python3
"""What fleet's host agent costs its host in CPU (not a test).

    python bench/agent_cost.py [--attempts 200] [--running 50] [--seconds 10] [--wrapper PATH]
                               [--root DIR] [--json]

Starts the real agent (``runners/wrapper.py agent``) in a cgroup of its own, so everything it
starts (the attempt supervisors, detached from it, and the jobs) is counted, and speaks the
controller's protocol to it over its stdin/stdout, as the SSH backend does over a channel:

* **start/end**: ``--attempts`` attempts of ``true``, ten at a time; CPU of the whole cgroup per
  attempt. Baseline in the same run: a Python process that fork/execs ``true`` as often
  (``subprocess.run``), in a cgroup of its own: the least any runner must spend.
* **running**: ``--running`` attempts of ``sleep``, with a 60 s attempt lease renewed as the
  controller does (every 15 s); the cgroup's CPU over ``--seconds`` per attempt per second.
* **idle**: the agent with nothing to follow, over ``--seconds``: percent of a core.

Needs root for the cgroup (cgroup v1 ``cpuacct`` or v2). CPU time, unlike rates, hardly moves
with the machine's load (../shared/NOTES-machine.md), but it does move with the filesystem the
attempt directories are on: an attempt creates a handful of files, and on an ext4 *without a
journal* that has seen many files created and removed (this machine's root filesystem after a
few test runs) the kernel's inode allocator alone took 0.3-1 ms per file (``perf``:
``recently_deleted``, ``find_inode_bit``: ext4 skips inodes freed in the last seconds only when
it has no journal, ``fs/ext4/ialloc.c``). An ext4 with a journal (mkfs.ext4's default, and
what a Jetson's or an Ubuntu host's root is) does not: measured on loop-mounted 1 GiB images
after 100,000 files created and removed, a directory and four files cost 0.15 ms with a
journal and 1.1-1.6 ms without, and this bench 1.4-1.6 ms per attempt against 8.5.
Beside it, the same run prints what an attempt's directory and files cost made by a plain
loop in the same root (no agent, no process): the filesystem's part of the figure.
``--root`` puts the attempt directories elsewhere (``/dev/shm``: fleet's own cost without the
filesystem's); the report names the root, its filesystem and, for ext4, whether it has a
journal. ``--wrapper`` measures another
wrapper.py (e.g. ``git show REV:runners/...`` into a directory) for a comparison in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRAPPER = REPO / "runners" / "wrapper.py"


class CGroup:
    """A cgroup that counts the CPU of every process put in it and of their descendants."""

    def __init__(self, name: str) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        base = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/cpuacct")
        self.v2 = v2
        self.path = base / f"fleet-bench-{name}-{uuid.uuid4().hex[:6]}"
        self.path.mkdir()
        self.procs = self.path / "cgroup.procs"

    def join(self) -> None:
        """Put the calling process in (used in a child before exec)."""
        self.procs.write_text(str(os.getpid()))

    def usage_ms(self) -> float:
        if self.v2:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1000.0
            raise RuntimeError("no usage_usec in cpu.stat")
        return int((self.path / "cpuacct.usage").read_text()) / 1e6

    def kernel_ms(self) -> float:
        """The part of ``usage_ms`` spent in the kernel (system calls: the filesystem, spawning)."""
        if self.v2:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("system_usec "):
                    return int(line.split()[1]) / 1000.0
            raise RuntimeError("no system_usec in cpu.stat")
        return int((self.path / "cpuacct.usage_sys").read_text()) / 1e6

    def close(self) -> None:
        for pid in self.procs.read_text().split():
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)


class Agent:
    """The agent as the controller sees it: requests in, frames out."""

    def __init__(self, wrapper: Path, group: CGroup) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", "-B", str(wrapper), "agent"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, preexec_fn=group.join)
        self.ended: dict[str, dict[str, object]] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            line = out.readline()
            if not line:
                return
            frame = json.loads(line)
            if frame.get("n"):
                out.read(frame["n"])
            if frame["t"] in ("exit", "lost", "error"):
                with self.cond:
                    self.ended[str(frame.get("a"))] = frame
                    self.cond.notify_all()

    def send(self, request: dict[str, object]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def launch(self, aid: str, root: Path, argv: list[str]) -> None:
        self.send({"op": "launch", "id": aid, "attempt_dir": str(root / aid), "job": {}, "argv": argv,
                   "lease": 60, "grace": 1, "cache_dir": str(root / "cache"), "inputs": []})

    def wait(self, ids: list[str], timeout: float = 120) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: all(i in self.ended for i in ids), timeout):
                raise SystemExit(f"attempts did not end in {timeout} s: "
                                 f"{[i for i in ids if i not in self.ended][:5]}")
        bad = [self.ended[i] for i in ids if self.ended[i]["t"] != "exit"
               or (self.ended[i].get("status") or {}).get("exit_code") not in (0, None)]  # type: ignore[union-attr]
        if bad:
            raise SystemExit(f"attempts failed: {bad[:2]}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def start_end(wrapper: Path, attempts: int, root: Path) -> tuple[float, float]:
    """CPU per attempt, and the kernel's part of it."""
    group = CGroup("start")
    try:
        agent = Agent(wrapper, group)
        agent.send({"op": "ping", "id": "warm"})
        time.sleep(0.3)
        before, kernel = group.usage_ms(), group.kernel_ms()
        ids = [f"a{i:05d}" for i in range(attempts)]
        for i in range(0, attempts, 10):
            batch = ids[i:i + 10]
            for aid in batch:
                agent.launch(aid, root, ["true"])
            agent.wait(batch)
        took, kernel = group.usage_ms() - before, group.kernel_ms() - kernel
        agent.close()
        return took / attempts, kernel / attempts
    finally:
        group.close()


def baseline(attempts: int) -> tuple[float, float]:
    group = CGroup("base")
    try:
        code = ("import subprocess, sys\n"
                "sys.stdin.readline()\n"
                f"for _ in range({attempts}): subprocess.run(['true'], check=True)\n"
                "print('done', flush=True)\n")
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                preexec_fn=group.join)
        time.sleep(0.3)
        before, kernel = group.usage_ms(), group.kernel_ms()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        proc.stdout.readline()
        took, kernel = group.usage_ms() - before, group.kernel_ms() - kernel
        proc.wait()
        return took / attempts, kernel / attempts
    finally:
        group.close()


def files_alone(attempts: int, root: Path) -> tuple[float, float]:
    """What the filesystem alone costs for an attempt's files, in a cgroup of its own: a
    Python process that makes, in the same root, what the agent makes per attempt (a directory;
    job.json; the lease; the status file's reserved space, written and renamed at the end; the
    log), and nothing else. On an ext4 without a journal, within minutes of many files removed,
    this is most of the figure above (see the module's doc)."""
    group = CGroup("files")
    base = root / "files-alone"
    try:
        code = ("import os, sys\n"
                "root = sys.argv[1]\n"
                "os.mkdir(root)\n"
                "sys.stdin.readline()\n"
                f"for i in range({attempts}):\n"
                "    d = os.path.join(root, 'f%05d' % i)\n"
                "    os.mkdir(d, 0o700)\n"
                "    for name, data in (('job.json', b'{}'), ('lease', b'1\\n'), ('log', b'')):\n"
                "        fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n"
                "        os.write(fd, data)\n"
                "        os.close(fd)\n"
                "    fd = os.open(os.path.join(d, 'status.json.reserved'), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n"
                "    os.posix_fallocate(fd, 0, 4096)\n"
                "    os.write(fd, b'{}')\n"
                "    os.close(fd)\n"
                "    os.replace(os.path.join(d, 'status.json.reserved'), os.path.join(d, 'status.json'))\n"
                "print('done', flush=True)\n")
        proc = subprocess.Popen([sys.executable, "-c", code, str(base)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, preexec_fn=group.join)
        time.sleep(0.3)
        before, kernel = group.usage_ms(), group.kernel_ms()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        if proc.stdout.readline() != b"done\n":
            raise SystemExit("the files-alone baseline failed")
        took, kernel = group.usage_ms() - before, group.kernel_ms() - kernel
        proc.wait()
        return took / attempts, kernel / attempts
    finally:
        group.close()


def running(wrapper: Path, n: int, seconds: float, root: Path) -> float:
    group = CGroup("run")
    try:
        agent = Agent(wrapper, group)
        ids = [f"r{i:05d}" for i in range(n)]
        for aid in ids:
            agent.launch(aid, root, ["sleep", str(seconds + 30)])
        time.sleep(2.0)  # all started, the launches' own cost is behind us
        before, start = group.usage_ms(), time.monotonic()
        renewed = start
        while time.monotonic() - start < seconds:
            time.sleep(0.5)
            if time.monotonic() - renewed >= 15:  # the SSH backend renews every lease/4
                agent.send({"op": "renew"})
                renewed = time.monotonic()
        took = group.usage_ms() - before
        elapsed = time.monotonic() - start
        for aid in ids:
            agent.send({"op": "cancel", "id": aid, "attempt_dir": str(root / aid), "grace": 1})
        agent.wait(ids)
        agent.close()
        return took / elapsed / n
    finally:
        group.close()


def idle(wrapper: Path, seconds: float) -> float:
    group = CGroup("idle")
    try:
        agent = Agent(wrapper, group)
        time.sleep(0.5)
        before, start = group.usage_ms(), time.monotonic()
        time.sleep(seconds)
        took = group.usage_ms() - before
        pct = took / ((time.monotonic() - start) * 1000) * 100
        agent.close()
        return pct
    finally:
        group.close()


def filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (from /proc/mounts: the longest mount prefix);
    for ext4, whether it has a journal (a journaled ext4 has a jbd2 entry for its device)."""
    best, kind = "", "?"
    real = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, fields[2]
    if kind == "ext4":
        dev = os.stat(real).st_dev
        try:
            name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
        except OSError:
            return kind
        journal = Path(f"/proc/fs/jbd2/{name}-8").exists()
        return f"ext4, {'with a journal' if journal else 'no journal'}"
    return kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=200)
    parser.add_argument("--running", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--wrapper", type=Path, default=WRAPPER,
                        help="another wrapper.py to measure (e.g. an older release's)")
    parser.add_argument("--root", type=Path, default=None,
                        help="where the attempt directories go (default: a new temporary directory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/agent_cost.py needs root (it makes cgroups to count CPU)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="fleet-agent-cost-", dir=args.root))
    try:
        (root / "cache").mkdir()
        per_attempt, per_attempt_kernel = start_end(args.wrapper, args.attempts, root)
        floor, floor_kernel = files_alone(args.attempts, root)
        base, base_kernel = baseline(args.attempts)
        per_running = running(args.wrapper, args.running, args.seconds, root)
        idle_pct = idle(args.wrapper, args.seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = {
        "root": str(root.parent), "filesystem": filesystem(root.parent),
        "start_end_ms_per_attempt": round(per_attempt, 3),
        "start_end_kernel_ms_per_attempt": round(per_attempt_kernel, 3),
        "baseline_fork_exec_ms": round(base, 3),
        "baseline_fork_exec_kernel_ms": round(base_kernel, 3),
        "ratio_to_baseline": round(per_attempt / base, 2) if base else None,
        "files_alone_ms": round(floor, 3),
        "files_alone_kernel_ms": round(floor_kernel, 3),
        "running_ms_per_s_per_attempt": round(per_running, 4),
        "idle_agent_pct_of_core": round(idle_pct, 4),
        "targets": {"start_end_ms_per_attempt": 2.0, "running_ms_per_s_per_attempt": 0.2,
                    "idle_agent_pct_of_core": 0.05},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"attempt directories under {figures['root']} ({figures['filesystem']})")
        print(f"start/end   {per_attempt:7.3f} ms CPU per attempt (target <= 2), {per_attempt_kernel:.3f} in the "
              f"kernel; baseline fork/exec {base:.3f} ms ({base_kernel:.3f} in the kernel); ratio "
              f"{figures['ratio_to_baseline']}x")
        print(f"            the attempt's directory and files alone, made by a plain loop: {floor:.3f} ms "
              f"({floor_kernel:.3f} in the kernel)")
        print(f"running     {per_running:7.4f} ms CPU per second per running attempt (target <= 0.2), "
              f"{args.running} attempts over {args.seconds:g} s")
        print(f"idle agent  {idle_pct:7.4f} % of a core (target <= 0.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
