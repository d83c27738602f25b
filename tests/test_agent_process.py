"""One agent process serves a channel and supervises every attempt it launched (issue 16): the
real agent (``runners/wrapper.py agent``) over its stdin/stdout, as the SSH backend drives it.
What that process must get right where each attempt once had a process of its own: processes
a job leaves behind go with their own attempt only, a broken channel takes nothing with it,
jobs get the signals' defaults back, and its death loses its attempts without leaving their
jobs running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.agent_driver import WRAPPER, record, started
from tests.helpers import eventually, pid_alive


def _escaping(pidfile: Path, fifo: Path) -> list[str]:
    """A job that leaves a process outside its process group (setsid), then waits on ``fifo``."""
    return ["sh", "-c", f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' </dev/null >/dev/null 2>&1 & "
                        f"while [ ! -s {pidfile} ]; do sleep 0.02; done; read _ < {fifo}"]


def test_a_process_left_behind_goes_with_its_own_attempt_not_with_another(agents, tmp_path):
    agent = agents()
    for name in ("one", "two"):
        os.mkfifo(tmp_path / f"{name}.go")
        agent.launch(name, _escaping(tmp_path / f"{name}.pid", tmp_path / f"{name}.go"), lease=60)
    left = {name: int(eventually(lambda n=name: (tmp_path / f"{n}.pid").exists()
                                 and (tmp_path / f"{n}.pid").read_text().strip(), what=f"{name}'s daemon"))
            for name in ("one", "two")}
    (tmp_path / "one.go").write_text("go\n")
    assert agent.end("one")["status"]["exit_code"] == 0  # type: ignore[index]
    eventually(lambda: not pid_alive(left["one"]), what="attempt one's daemon stopped")
    assert pid_alive(left["two"]), "attempt two's daemon was stopped with attempt one"
    (tmp_path / "two.go").write_text("go\n")
    agent.end("two")
    eventually(lambda: not pid_alive(left["two"]), what="attempt two's daemon stopped")


def test_a_broken_channel_takes_no_attempt_with_it(tmp_path):
    """The controller's end of stdout goes away while an attempt runs: the agent must not die
    of SIGPIPE (every attempt it supervises would be lost); the attempt ends with its status."""
    proc = subprocess.Popen([sys.executable, "-S", "-B", str(WRAPPER), "agent"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    adir = tmp_path / "a"
    request = {"op": "launch", "id": "a", "attempt_dir": str(adir), "job": {}, "grace": 1,
               "argv": ["sh", "-c", f"read _ < {fifo}; echo done"], "cache_dir": str(tmp_path), "inputs": []}
    proc.stdin.write((json.dumps(request) + "\n").encode())
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["t"] == "started"
    supervisor = record(adir)[0]
    proc.stdout.close()  # the channel's output is gone
    proc.stdin.write(b'{"op": "ping", "id": "p"}\n')  # its answer meets the broken pipe
    proc.stdin.flush()
    proc.wait(10)  # the channel's process has left
    time.sleep(0.2)
    assert pid_alive(supervisor), "the agent died with its channel"
    fifo.write_text("go\n")
    status = eventually(lambda: (adir / "status.json").exists() and json.loads((adir / "status.json").read_text()),
                        what="the attempt's status")
    assert status["exit_code"] == 0 and (adir / "log").read_bytes() == b"done\n"
    proc.stdin.close()
    eventually(lambda: not pid_alive(supervisor), what="the agent gone after its last attempt")


def test_jobs_get_the_default_of_the_signals_the_agent_ignores(agents):
    """The agent ignores SIGPIPE (see above); a job must not inherit that: ``yes | head``
    would then print 'Broken pipe' errors and fail."""
    agent = agents()
    agent.launch("pipe", ["sh", "-c", "yes | head -n 1"])
    end = agent.end("pipe")
    assert end["status"]["exit_code"] == 0  # type: ignore[index]
    assert agent.logs["pipe"] == b"y\n"


def test_the_agent_killed_alone_loses_all_its_attempts_and_stops_their_jobs(agents):
    first = agents()
    dirs = [first.launch(f"k{i}", ["sleep", "300"], lease=60) for i in range(3)]
    eventually(lambda: all(started(d) for d in dirs), what="all started")
    jobs = [record(d)[1] for d in dirs]
    supervisor = record(dirs[0])[0]
    os.kill(supervisor, signal.SIGKILL)
    first.proc.wait(10)  # the channel's process follows its child out
    second = agents()
    for i, adir in enumerate(dirs):
        second.send(op="follow", id=f"k{i}", attempt_dir=str(adir), offset=0)
    for i in range(3):
        frame = second.end(f"k{i}")
        assert frame["t"] == "lost" and str(supervisor) in str(frame["message"]), frame
    for job in jobs:
        eventually(lambda j=job: not pid_alive(j), what=f"job {job} stopped")


def test_an_attempt_an_older_agent_launched_is_followed_from_its_pid_and_proc_files(agents, tmp_path):
    """Before one agent supervised its attempts, each had a supervisor process named in a
    ``pid`` file and its job's process group in ``proc.json``: an agent of this version, after
    an upgrade, must still follow those (here a stand-in supervisor and job), stop the job
    when the supervisor is gone, and say the attempt is lost."""
    adir = tmp_path / "old"
    adir.mkdir()
    supervisor = subprocess.Popen(["sleep", "300"])
    job = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (adir / "pid").write_text(str(supervisor.pid))
    (adir / "proc.json").write_text(json.dumps({"pgid": job.pid, "phase": "run"}))
    (adir / "lease").touch()
    assert record(adir) == (supervisor.pid, job.pid)
    agent = agents()
    agent.send(op="follow", id="old", attempt_dir=str(adir), offset=0)
    time.sleep(0.3)
    assert job.poll() is None  # its supervisor lives: the job runs on
    supervisor.kill()
    supervisor.wait()
    frame = agent.end("old")
    assert frame["t"] == "lost" and str(supervisor.pid) in str(frame["message"])
    assert job.wait(10) == -signal.SIGKILL


def test_a_job_that_rewrites_its_process_record_cannot_turn_a_cancel_on_another_process(agents, tmp_path):
    """The lie: a job (running as the agent's own account, isolation: none) rewrites its
    attempt's record to name another process group, then is cancelled. The agent signals the
    job it started, never the group the file names; a record replaced by a link is not read."""
    decoy = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        agent = agents()
        # Told again and again: the agent appends its own line for the job's start, which may
        # come after the job's first write (a loaded machine ran the job first).
        adir = agent.launch("liar", ["sh", "-c", f"ln -sf /proc/self/stat lease2; while :; do "
                                                  f"printf '1\\n{decoy.pid} run\\n' > lease; sleep 0.2; done"], lease=60)
        eventually(lambda: record(adir) == (1, decoy.pid), what="the job's lie in place")
        agent.send(op="cancel", id="liar", attempt_dir=str(adir), grace=1)
        end = agent.end("liar")
        assert end["status"]["cancelled"] is True  # type: ignore[index]
        time.sleep(1.5)  # past the grace: a KILL would have been sent by now
        assert decoy.poll() is None, "the cancel reached the process group the job named"
        (adir / "lease").unlink()
        (adir / "lease").symlink_to(adir / "lease2")
        assert record(adir) == (0, None)  # a link in the record's place is not followed
    finally:
        decoy.kill()
        decoy.wait()
