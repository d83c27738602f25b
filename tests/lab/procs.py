"""Finding and killing the processes that belong to lab hosts, through /proc.

A lab host's processes are recognised by what they cannot shed easily: commands started on a
host inherit ``HOME=<that host's home>``; an OpenSSH host's sshd processes share its private
mount namespace (or, without namespaces, descend from its listener).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def all_pids() -> list[int]:
    """PIDs of every process visible in /proc."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def environ(pid: int) -> list[bytes] | None:
    """The ``NAME=value`` entries of a process's initial environment, or None if unreadable."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None


def environ_home(pid: int) -> str | None:
    """The HOME in a process's initial environment, or None if unreadable or unset."""
    for entry in environ(pid) or []:
        if entry.startswith(b"HOME="):
            return os.fsdecode(entry[5:])
    return None


def pids_with_home_in(homes: Iterable[Path]) -> list[int]:
    """PIDs (other than ours) whose HOME is one of ``homes`` or lies below one of them."""
    roots = [str(home) for home in homes]
    found = []
    for pid in all_pids():
        home = environ_home(pid)
        if pid == os.getpid() or home is None:
            continue
        if any(home == root or home.startswith(root + "/") for root in roots):
            found.append(pid)
    return found


def pids_with_env(name: str, value: str) -> list[int]:
    """PIDs (other than ours) whose initial environment holds ``name=value``."""
    entry = os.fsencode(f"{name}={value}")
    return [pid for pid in all_pids() if pid != os.getpid() and entry in (environ(pid) or [])]


def pids_in(root: Path) -> list[int]:
    """PIDs (other than ours) working in ``root`` (their cwd there) or naming a path in it (an
    argument). The argv is read first: a process of another account may hide its cwd."""
    inside = str(root.resolve()) + "/"
    found = []
    for pid in all_pids():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0")
            if pid != os.getpid() and (any(inside in arg + "/" for arg in args)
                                       or (os.readlink(f"/proc/{pid}/cwd") + "/").startswith(inside)):
                found.append(pid)
        except OSError:  # gone, a zombie, or not ours to read
            continue
    return found


def mount_namespace(pid: int) -> str | None:
    """The mount namespace id of ``pid`` (``mnt:[4026...]``), or None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def namespace_members(namespace: str) -> list[int]:
    """PIDs of every process in the mount namespace ``namespace``."""
    return [pid for pid in all_pids() if mount_namespace(pid) == namespace]


def descendants(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants, by walking PPid links once."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = parent_pid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def executable(pid: int) -> str | None:
    """The path of the program ``pid`` runs, or None if unreadable."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def kill_all(pids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGKILL each pid and wait until all have exited (zombies count as exited).

    Waits on pidfds, not on a timer; processes already gone are skipped. Raises TimeoutError if
    some process is still alive after ``timeout`` seconds.
    """
    pidfds = []
    try:
        for pid in set(pids):
            try:
                pidfds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue
        # Stop them all first, then kill: like a power cut, no process sees another die (a
        # supervisor must not get to record its job's death as the job's own failure).
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pidfd in pidfds:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, sig)
        poller = select.poll()
        for pidfd in pidfds:
            poller.register(pidfd, select.POLLIN)  # readable once the process has exited
        waiting, deadline = len(pidfds), time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            events = poller.poll(max(0, int(left * 1000))) if left > 0 else []
            if not events:
                raise TimeoutError(f"{waiting} killed processes did not exit in {timeout} s")
            for pidfd, _ in events:
                poller.unregister(pidfd)
                waiting -= 1
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def kill_homes(homes: list[Path], rounds: int = 10) -> None:
    """Kill every process whose HOME is one of ``homes``, again until none is left: a process
    forked between a snapshot and the kill (a supervisor starting its job) must not survive
    what is meant as a power cut."""
    _kill_until_none(lambda: pids_with_home_in(homes), rounds)


def kill_in(root: Path, rounds: int = 10) -> None:
    """Kill every process working in ``root`` or naming a path in it (``pids_in``), again until
    none is left."""
    _kill_until_none(lambda: pids_in(root), rounds)


def _kill_until_none(find: Callable[[], list[int]], rounds: int) -> None:
    for _ in range(rounds):
        pids = find()
        if not pids:
            return
        kill_all(pids)
