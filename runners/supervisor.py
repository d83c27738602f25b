"""An attempt's supervisor (DESIGN.md §5.6): started by the agent (``wrapper.py``) in a
session of its own, it runs setup and the command in a new process group, enforces the
timeout (TERM to the group, KILL after the grace period) and the attempt lease, and writes
``status.json``. It outlives the agent and the channel. It waits on the kernel (the job's
pidfd, see ``waits``), it does not poll. Stdlib only, Python >= 3.8, never imports fleet."""

import errno
import gc
import json
import os
import signal
import time

from hostfs import _NOFOLLOW, _read_json, _reserve, _write_json, _write_reserved
from jobenv import _kill_children, job_env
from waits import Child, ProcessWaiter, become_subreaper


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except OSError:
        return False


class Supervisor:
    """Runs setup and the command of one attempt; writes pid, pgid, status.json. Never raises."""

    def __init__(self, adir, payload, notify_fd):
        self.adir = adir
        self.payload = payload
        self.notify_fd = notify_fd
        self.log = None
        self.cancel_path = os.path.join(adir, "cancel")
        self.lease_path = os.path.join(adir, "lease")
        self.lease = float(payload.get("lease") or 0)  # 0: no attempt lease
        self.fenced = False
        self.account = None  # {name, uid, gid, home} when the job runs as another account

    def notify(self, **fields):
        if self.notify_fd is None:
            return
        try:
            os.write(self.notify_fd, (json.dumps(fields) + "\n").encode())
        except OSError:
            pass  # the launcher went away (controller or channel gone): keep running

    def run(self):
        status = {"exit_code": None, "signal": None, "timed_out": False, "cancelled": False,
                  "phase": "run", "error": None, "started_at": time.time(), "ended_at": None}
        # The end must be recordable even if the job fills the disk: the status file's space
        # is taken now and written in place at the end (else the attempt would look lost and
        # the job run again elsewhere).
        reserved = _reserve(os.path.join(self.adir, "status.json"))
        become_subreaper()
        try:
            fd = os.open(os.path.join(self.adir, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
            self.log = os.fdopen(fd, "ab", buffering=0)
            status.update(self._run_phases(status))
        except Exception as exc:  # the wrapper must always leave a status behind
            status["error"] = "wrapper: %s: %s" % (type(exc).__name__, exc)
        status["ended_at"] = time.time()
        status["cancelled"] = status["cancelled"] or os.path.exists(self.cancel_path)
        status["fenced"] = self.fenced or os.path.exists(os.path.join(self.adir, "fence"))
        status["cancelled"] = status["cancelled"] and not status["fenced"]
        _write_reserved(os.path.join(self.adir, "status.json"), reserved, status)

    def _run_phases(self, status):
        self.account = _read_json(os.path.join(self.adir, "account.json"))
        if self.account is not None and not self.account["home"]:
            self.account["home"] = self.adir
        if self.payload.get("container"):
            env = self._engine_env()
        else:
            env = job_env(os.environ, self.payload.get("env_keep"), self.account)
            env.update(self.payload.get("env") or {})
        env["FLEET_ATTEMPT_DIR"] = self.adir
        # Where a job's own benchmark writes its result record (a runner writes it there too).
        env["FLEET_RESULT"] = os.path.join(self.adir, "result.json")
        if self.account is not None:
            problem = self._unreachable()
            if problem:
                return {"exit_code": None, "signal": None, "timed_out": False, "phase": "setup",
                        "error": problem}
        deadline = None
        if self.payload.get("timeout"):
            deadline = time.monotonic() + float(self.payload["timeout"])
        grace = float(self.payload.get("grace", 10))
        setup = self.payload.get("setup")
        if setup:
            code, sig, timed_out = self._run(["/bin/sh", "-c", setup], env, deadline, grace, "setup")
            if code != 0 or timed_out:
                return {"exit_code": code, "signal": sig, "timed_out": timed_out, "phase": "setup"}
        argv = self.payload.get("argv")
        if not argv:  # a runner: [python, flags..., entry script, job.json]; expand ~ in the entry
            argv = list(self.payload["entry"])
            argv[-2] = os.path.expanduser(argv[-2])
        code, sig, timed_out = self._run(argv, env, deadline, grace, "run")
        return {"exit_code": code, "signal": sig, "timed_out": timed_out, "phase": "run"}

    def _engine_env(self):
        """A container job (fleet.containers): the engine runs as the agent, the container as
        the job's account. The engine's environment is the agent's basics and none of the
        job's variables (a job's PATH, LD_PRELOAD or CONTAINERS_CONF must never steer an engine
        that may run as root): they travel as FLEET_ENV_<i>=NAME=VALUE, which the engine passes
        on unread and a prologue in the container exports."""
        env = job_env(os.environ, self.payload.get("env_keep"), None)
        items = [(k, v) for k, v in sorted((self.payload.get("env") or {}).items())
                 if k not in ("FLEET_ATTEMPT_DIR", "FLEET_RESULT")]
        for i, (key, value) in enumerate(items):
            env["FLEET_ENV_%d" % i] = "%s=%s" % (key, value)
        env["FLEET_ENV_COUNT"] = str(len(items))
        who = self.account or {"uid": os.getuid(), "gid": os.getgid()}
        env["FLEET_CONTAINER_USER"] = "%d:%d" % (who["uid"], who["gid"])
        self.account = None  # nothing here drops to the account: the container is its
        return env

    def _drop(self):
        """In the job's child, before exec: become the job's account (isolation)."""
        os.setgroups([])
        os.setgid(self.account["gid"])
        os.setuid(self.account["uid"])
        os.umask(0o077)

    def _unreachable(self):
        """Why the job's account cannot reach its attempt directory, or None (checked in a
        child that has become the account: the path must be traversable by it)."""
        pid = os.fork()
        if pid == 0:
            try:
                self._drop()
                os.stat(os.path.join(self.adir, "job.json"))
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, code = os.waitpid(pid, 0)
        if code == 0:
            return None
        return ("account %s cannot reach its attempt directory %s: fleet_workdir must lie where "
                "every job account can pass through (e.g. /var/lib/fleet)" % (self.account["name"], self.adir))

    def _lease_left(self):
        """Seconds until the attempt lease runs out (None: no lease). The agent touches
        ``lease`` whenever the controller renews it; no renewal for ``lease`` seconds means the
        controller gave this attempt up (or is down for longer than it promised to be): stop,
        so the job never runs twice. One stat per look: the supervisor looks when the lease
        would run out, not on a timer."""
        if not self.lease:
            return None
        try:
            return self.lease - (time.time() - os.stat(self.lease_path).st_mtime)
        except OSError as exc:
            # Written when the attempt started: gone, it can never be renewed again (its
            # directory was removed), so the job must not run on with no one to stop it.
            return 0.0 if exc.errno == errno.ENOENT else self.lease

    def _lease_expired(self):
        left = self._lease_left()
        return left is not None and left <= 0

    def _stop(self, proc, grace, waiter):
        _signal_group(proc.pid, signal.SIGTERM)
        until = time.monotonic() + grace
        while proc.poll() is None:
            left = until - time.monotonic()
            if left <= 0:
                self.log.write(b"fleet: still running after the grace period; sending KILL\n")
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            waiter.wait(left)

    def _wait(self, proc, deadline, waiter):
        """Until the job ends ("exit"), its deadline passes ("timeout") or its lease runs out
        ("lease"). Blocks in select on the job's pidfd: no wake-ups while the job runs, but
        when the timeout or the lease could run out."""
        while proc.poll() is None:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return "timeout"
            left = self._lease_left()
            if left is not None:
                if left <= 0:
                    return "lease"
                timeout = left + 0.01 if timeout is None else min(timeout, left + 0.01)
            waiter.wait(timeout)
        return "exit"

    def _run(self, argv, env, deadline, grace, phase):
        if os.path.exists(self.cancel_path) or os.path.exists(os.path.join(self.adir, "fence")):
            return None, signal.SIGTERM, False
        if self._lease_expired():
            self.fenced = True
            return None, signal.SIGTERM, False
        waiter = ProcessWaiter()
        try:
            if self.account is None:  # posix_spawn: no fork of this Python process
                proc = Child(argv, env, self.log.fileno())
            else:  # the job's own account: a fork that drops to it before the exec
                import subprocess  # here only: the agent stays small, so forking it is cheap

                proc = subprocess.Popen(
                    argv, cwd=self.adir, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                    preexec_fn=self._drop,
                )
        except OSError as exc:
            waiter.close()
            self.log.write(("fleet: cannot start %s: %s\n" % (argv[0], exc)).encode())
            return 127, None, False
        waiter.watch(proc.pid)
        _write_json(os.path.join(self.adir, "proc.json"), {"pgid": proc.pid, "phase": phase})
        self.notify(event="started", pid=proc.pid, phase=phase, at=time.time())
        if os.path.exists(self.cancel_path):  # cancelled between the check and the start
            _signal_group(proc.pid, signal.SIGTERM)
        timed_out = False
        why = self._wait(proc, deadline, waiter)
        if why == "timeout":
            timed_out = True
            self.log.write(b"\nfleet: timeout reached; sending TERM to the process group\n")
            self._stop(proc, grace, waiter)
        elif why == "lease":
            self.fenced = True
            self.log.write(("\nfleet: no word from the controller for %g s (attempt lease); "
                            "stopping the job so that it never runs twice\n" % self.lease).encode())
            self._stop(proc, grace, waiter)
        waiter.close()
        # Leftover children in the group (daemons the job started) go with the job, and so do
        # those that left the group (setsid): as a subreaper, they became our children.
        _signal_group(proc.pid, signal.SIGKILL)
        _kill_children()
        code = proc.returncode
        if code is not None and code < 0:
            return None, -code, timed_out
        return code, None, timed_out


def _spawn_supervisor(adir, payload):
    """Start the supervisor: one fork, in a session of its own (a closed channel's hangup
    never reaches it; it outlives the agent). Returns ``(pid, fd)``: the read end of a pipe
    that carries its events and reaches EOF when it exits; the agent reaps it then."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            os.setsid()
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            # Nothing of the agent's (its channel, other attempts' pipes and logs) stays open.
            os.closerange(3, wfd)
            os.closerange(wfd + 1, 65536)
            fd = os.open(os.path.join(adir, "pid"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o644)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            gc.disable()  # a collection would touch (copy) the pages shared with the agent
            os.chdir(adir)  # the job's working directory (posix_spawn starts it here)
            Supervisor(adir, payload, wfd).run()
        finally:
            os._exit(0)
    os.close(wfd)
    return pid, rfd
