"""The host agent waits, it does not poll (runners/waits.py, issue 16): the real agent
(``runners/wrapper.py agent``) driven over its stdin/stdout as the SSH backend drives it, with
the kernel's waits (pidfd, inotify) and with their fallbacks (``FLEET_AGENT_WAITS=poll``, what
an old kernel or Python gets). Whether a process woke up is read from the kernel's count of
its voluntary context switches, not from a clock."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.agent_driver import record, started
from tests.helpers import eventually

WAITS = ["kernel", "poll"]


def woke(pid: int) -> int:
    """How often any thread of ``pid`` went to sleep voluntarily so far (each wake-up ends
    in one)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "status").read_text().split("voluntary_ctxt_switches:")[1].split()[0])
    return total


@pytest.mark.parametrize("waits", WAITS)
def test_log_exit_timeout_and_a_lapsed_lease(agents, waits):
    agent = agents(waits)
    agent.launch("talks", ["sh", "-c", "echo one; sleep 0.3; echo two; sleep 0.3; exit 3"])
    agent.launch("slow", ["sleep", "30"], timeout=0.5)
    agent.launch("unrenewed", ["sleep", "30"], lease=1)
    talks = agent.end("talks")
    assert talks["status"]["exit_code"] == 3  # type: ignore[index]
    assert agent.logs["talks"] == b"one\ntwo\n"
    assert agent.end("slow")["status"]["timed_out"] is True  # type: ignore[index]
    unrenewed = agent.end("unrenewed")["status"]
    assert unrenewed["fenced"] is True and unrenewed["exit_code"] is None  # type: ignore[index]
    assert b"attempt lease" in agent.logs["unrenewed"]


@pytest.mark.parametrize("waits", WAITS)
def test_a_second_agent_follows_an_attempt_the_first_one_launched(agents, waits):
    first = agents(waits)
    fifo = first.root / "go"
    os.mkfifo(fifo)
    adir = first.launch("long", ["sh", "-c", f"echo before; read _ < {fifo}; echo after; exit 7"], lease=60)
    eventually(lambda: started(adir), what="started")
    first.close()  # the channel is gone; the attempt runs on
    second = agents(waits)
    second.send(op="follow", id="long", attempt_dir=str(adir), offset=0)
    eventually(lambda: second.logs.get("long") == b"before\n", what="the log so far")
    with open(fifo, "w") as fh:
        fh.write("go\n")
    assert second.end("long")["status"]["exit_code"] == 7  # type: ignore[index]
    assert second.logs["long"] == b"before\nafter\n"


@pytest.mark.parametrize("waits", WAITS)
def test_a_reattached_attempt_whose_supervisor_died_is_lost_and_its_job_stopped(agents, waits):
    first = agents(waits)
    adir = first.launch("orphan", ["sleep", "300"], lease=60)
    eventually(lambda: started(adir), what="started")
    first.close()
    second = agents(waits)
    second.send(op="follow", id="orphan", attempt_dir=str(adir), offset=0)
    supervisor, job = record(adir)
    os.kill(supervisor, signal.SIGKILL)
    frame = second.end("orphan")
    assert frame["t"] == "lost" and "supervisor" in str(frame["message"])
    eventually(lambda: not Path(f"/proc/{job}").exists() or "Z" in Path(f"/proc/{job}/stat").read_text().split(")")[1][:3],
               what="the job stopped")


def _settled(pids: list[int]) -> None:
    """Return once none of ``pids`` woke up for half a second, or after 10 s."""
    last = [woke(p) for p in pids]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = [woke(p) for p in pids]
        if now == last:
            return
        last = now


def test_nothing_wakes_while_attempts_run_quietly(agents):
    """Ten running attempts: neither the channel's process nor the agent that serves the
    channel and supervises them (one thread per attempt) wake up at all in a second and a
    half (they sleep in select until something happens). With the polling fallback the same
    agent wakes up many times: the count can tell the difference."""
    counts = {}
    for waits in WAITS:
        agent = agents(waits)
        dirs = [agent.launch(f"{waits}{i}", ["sleep", "60"], lease=60) for i in range(10)]
        eventually(lambda: all(started(d) for d in dirs), what="all started")
        supervisors = {record(d)[0] for d in dirs}
        assert len(supervisors) == 1 and agent.proc.pid not in supervisors  # the detached agent
        pids = [agent.proc.pid, *supervisors]
        if waits == "kernel":  # their start-up behind them, however slow the machine: no wake
            _settled(pids)     # in half a second (10 s at most; a process that keeps waking fails below)
        else:
            time.sleep(0.3)
        before = [woke(p) for p in pids]
        time.sleep(1.5)
        counts[waits] = [woke(p) - b for p, b in zip(pids, before, strict=True)]
        for i in range(10):
            agent.send(op="cancel", id=f"{waits}{i}", attempt_dir=str(dirs[i]), grace=1)
        for i in range(10):
            agent.end(f"{waits}{i}")
    assert counts["kernel"] == [0, 0], counts
    assert counts["poll"][1] > 10, counts  # the agent's 50 ms log poll
