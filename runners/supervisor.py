"""An attempt's supervision (DESIGN.md §5.6), driven by the host agent's loop (``wrapper.py``:
the process that serves a channel detaches from it and lives on while any attempt it started
runs). It runs setup and the command in a new process group, enforces the timeout (TERM to the
group, KILL after the grace period) and the attempt lease, and writes ``status.json``. Nothing
blocks and nothing polls: the agent sleeps in select on the jobs' pidfds and wakes for the next
deadline, lease look or KILL (``due``).

One process supervises all of a channel's attempts; there is no process per attempt (issue 16:
a fork of Python and the pages it then copies cost ~2 ms of host CPU per attempt, more than
starting the job itself). The price: an agent killed alone takes the supervision of all its
running attempts with it; a later agent then stops their jobs and reports the attempts lost
(as one supervisor's death did for one attempt), they never run on unsupervised.

Stdlib only, Python >= 3.8, never imports fleet."""

import errno
import os
import signal
import subprocess
import time

from hostfs import _NOFOLLOW, _read_json, _record_phase, _reserve, _write_reserved
from jobenv import job_env
from waits import POLL, orphans, pidfd

# The jobs this process started and has not reaped yet, and the attempt directories it
# supervises. Processes a job left behind are reparented here (a child subreaper, see
# waits.become_subreaper): those are killed with their attempt and reaped, jobs never (their
# supervision reaps them, for their exit status).
_JOBS = set()
_ACTIVE = set()


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except OSError:
        return False


_BASE = {}


def _base_env(keep, account):
    """``job_env`` of this process's environment (which does not change): filtered once per
    ``keep`` list, not read again for every job."""
    key = tuple(keep or ())
    base = _BASE.get(key)
    if base is None:
        base = _BASE[key] = job_env(os.environ, keep, None)
    return job_env(base, keep, account)


_HERE = []  # this process's working directory, held open (see Child)


class Child:
    """A job started with posix_spawn (vfork and exec: no copy of this process, whatever its
    size; Popen on Python 3.8 forks) in its attempt directory, in a session of its own, stdout
    and stderr to ``log_fd``, stdin from /dev/null, SIGPIPE at its default. Popen's ``pid``,
    ``poll``, ``wait`` and ``returncode`` (negative: the signal that ended it).

    posix_spawn has no working directory of its own in Python, so this process steps into the
    attempt directory for the spawn and back (it is single-threaded; nothing else runs then)."""

    def __init__(self, argv, env, log_fd, cwd):
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
        spawn = os.posix_spawnp if "/" not in argv[0] else os.posix_spawn
        if not _HERE:
            try:
                _HERE.append(os.open(".", os.O_RDONLY))
            except OSError:  # a working directory gone or unreadable: then the root
                _HERE.append(os.open("/", os.O_RDONLY))
        os.chdir(cwd)
        try:
            self.pid = spawn(argv[0], list(argv), env, file_actions=actions, setsid=True,
                             setsigdef=(signal.SIGPIPE,))
        finally:
            os.fchdir(_HERE[0])
        self.returncode = None

    def _reaped(self, status):
        self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 255  # reaped elsewhere: its status is unknown
                return self.returncode
            if pid:
                self._reaped(status)
        return self.returncode

    def wait(self):
        while self.returncode is None:
            try:
                _pid, status = os.waitpid(self.pid, 0)
            except InterruptedError:
                continue
            except ChildProcessError:
                self.returncode = 255
                break
            self._reaped(status)
        return self.returncode


class Supervisor:
    """Runs setup and the command of one attempt; records each phase's process group (in the
    attempt's ``lease``: see ``hostfs._record_phase``) and writes ``status.json``. ``start`` begins; the agent then calls ``wake`` when ``fd`` is readable
    (the job ended) or ``due`` has come. ``events`` gets ("started", fields); ``done`` is true
    once the status is written. Never raises out of ``start`` or ``wake``."""

    def __init__(self, adir, payload, events=None):
        self.adir = adir
        self.payload = payload
        self.events = events
        self.cancel_path = os.path.join(adir, "cancel")
        self.lease_path = os.path.join(adir, "lease")
        self.lease = float(payload.get("lease") or 0)  # 0: no attempt lease
        self.fenced = False
        self.account = None  # {name, uid, gid, home} when the job runs as another account
        self.status = None
        self.reserved = None
        self.env = None
        self.phase = None
        self.proc = None  # the running phase's process
        self.fd = None  # its pidfd (None: looked at every POLL seconds)
        self.deadline = None  # monotonic: the attempt's timeout
        self.grace = float(payload.get("grace", 10))
        self.timed_out = False
        self.kill_at = None  # monotonic: stopping, KILL the group then
        self.look_at = None  # monotonic: look at the lease again then
        self.poll_at = None  # monotonic: without a pidfd, look whether the job ended then
        self.done = False

    # -- driven by the agent ---------------------------------------------------------------

    def start(self):
        """Prepare and start the first phase (the agent made the attempt's record naming it)."""
        _ACTIVE.add(self.adir)
        self.status = {"exit_code": None, "signal": None, "timed_out": False, "cancelled": False,
                       "phase": "run", "error": None, "started_at": time.time(), "ended_at": None}
        try:
            # The end must be recordable even if the job fills the disk: the status file's
            # space is taken now and written in place at the end (else the attempt would look
            # lost and the job run again elsewhere).
            self.reserved = _reserve(os.path.join(self.adir, "status.json"))
            problem = self._prepare()
            if problem:
                self._finish({"exit_code": None, "signal": None, "timed_out": False, "phase": "setup",
                              "error": problem})
                return
            if self.payload.get("timeout"):
                self.deadline = time.monotonic() + float(self.payload["timeout"])
            setup = self.payload.get("setup")
            if setup:
                self._begin(["/bin/sh", "-c", setup], "setup")
            else:
                self._begin(self._argv(), "run")
        except Exception as exc:  # the supervisor must always leave a status behind
            self._failed(exc)

    def due(self, now):
        """When to ``wake`` with no news from ``fd`` (None: only news)."""
        if self.proc is None:
            return None
        times = [t for t in (self.kill_at, self.deadline, self.look_at, self.poll_at) if t is not None]
        return min(times) if times else None

    def wake(self, now):
        try:
            self._wake(now)
        except Exception as exc:
            self._failed(exc)

    # -- the phases ------------------------------------------------------------------------

    def _prepare(self):
        """The job's environment; a problem that stops it before it starts, or None."""
        self.account = _read_json(os.path.join(self.adir, "account.json")) if self.payload.get("run_as") else None
        if self.account is not None and not self.account["home"]:
            self.account["home"] = self.adir
        if self.payload.get("container"):
            env = self._engine_env()
        else:
            env = _base_env(self.payload.get("env_keep"), self.account)
            env.update(self.payload.get("env") or {})
        env["FLEET_ATTEMPT_DIR"] = self.adir
        # Where a job's own benchmark writes its result record (a runner writes it there too).
        env["FLEET_RESULT"] = os.path.join(self.adir, "result.json")
        self.env = env
        if self.account is not None:
            return self._unreachable()
        return None

    def _argv(self):
        argv = self.payload.get("argv")
        if not argv:  # a runner: [python, flags..., entry script, job.json]; expand ~ in the entry
            argv = list(self.payload["entry"])
            argv[-2] = os.path.expanduser(argv[-2])
        return argv

    def _begin(self, argv, phase):
        self.phase = phase
        if os.path.exists(self.cancel_path) or os.path.exists(os.path.join(self.adir, "fence")):
            self._ended(None, signal.SIGTERM)
            return
        left = self._lease_left()
        if left is not None and left <= 0:
            self.fenced = True
            self._ended(None, signal.SIGTERM)
            return
        log = self._log()  # open only while the job starts: two descriptors per running attempt
        try:
            if self.account is None:
                proc = Child(argv, self.env, log, self.adir)
            else:  # the job's own account: a fork that drops to it before the exec
                proc = subprocess.Popen(
                    argv, cwd=self.adir, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                    preexec_fn=self._drop,
                )
        except (OSError, subprocess.SubprocessError) as exc:
            os.write(log, ("fleet: cannot start %s: %s\n" % (argv[0], exc)).encode())
            os.close(log)
            self._ended(127, None)
            return
        os.close(log)
        _JOBS.add(proc.pid)
        self.proc, self.fd = proc, pidfd(proc.pid)
        if self.fd is None:
            self.poll_at = time.monotonic() + POLL
        self.look_at = None if left is None else time.monotonic() + left + 0.01
        _record_phase(self.adir, proc.pid, phase)
        if self.events is not None:
            self.events("started", pid=proc.pid, phase=phase, at=time.time())
        if os.path.exists(self.cancel_path):  # cancelled between the check and the start
            _signal_group(proc.pid, signal.SIGTERM)

    def _wake(self, now):
        proc = self.proc
        if proc is None:
            return
        if self.fd is None:
            self.poll_at = now + POLL
        if proc.poll() is not None:
            self._exited()
            return
        if self.kill_at is not None:  # stopping
            if now >= self.kill_at:
                self._say(b"fleet: still running after the grace period; sending KILL\n")
                _signal_group(proc.pid, signal.SIGKILL)
                self.kill_at = None
            return
        if self.deadline is not None and now >= self.deadline:
            self.timed_out = True
            self._say(b"\nfleet: timeout reached; sending TERM to the process group\n")
            self._stop(now)
            return
        left = self._lease_left()
        if left is not None and left <= 0:
            # No word from the controller for the lease: it gave this attempt up (or is down
            # longer than it promised): stop, so the job never runs twice.
            self.fenced = True
            self._say(("\nfleet: no word from the controller for %g s (attempt lease); "
                            "stopping the job so that it never runs twice\n" % self.lease).encode())
            self._stop(now)
            return
        self.look_at = None if left is None else now + left + 0.01

    def _stop(self, now):
        _signal_group(self.proc.pid, signal.SIGTERM)
        self.kill_at, self.deadline, self.look_at = now + self.grace, None, None

    def _exited(self):
        proc = self.proc
        self.proc, self.kill_at, self.look_at, self.poll_at = None, None, None, None
        self._unwatch()
        _JOBS.discard(proc.pid)
        # Leftover children in the group (daemons the job started) go with the job, and so do
        # those that left the group (setsid): as a subreaper, they became this process's.
        _signal_group(proc.pid, signal.SIGKILL)
        kill_orphans(self.adir)
        code = proc.returncode
        if code is not None and code < 0:
            self._ended(None, -code)
        else:
            self._ended(code, None)

    def _ended(self, code, sig):
        """The current phase ended (or never started): the next one, or the attempt's end."""
        if self.phase == "setup" and code == 0 and not self.timed_out:
            self._begin(self._argv(), "run")
            return
        self._finish({"exit_code": code, "signal": sig, "timed_out": self.timed_out, "phase": self.phase})

    def _failed(self, exc):
        if self.proc is not None:  # never leave a job running unsupervised
            _signal_group(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait()
            except OSError:
                pass
            _JOBS.discard(self.proc.pid)
            self.proc = None
        self._unwatch()
        if not self.done:
            self._finish({"error": "wrapper: %s: %s" % (type(exc).__name__, exc)})

    def _unwatch(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _finish(self, result):
        status = self.status
        status.update(result)
        status["ended_at"] = time.time()
        status["cancelled"] = status["cancelled"] or os.path.exists(self.cancel_path)
        status["fenced"] = self.fenced or os.path.exists(os.path.join(self.adir, "fence"))
        status["cancelled"] = status["cancelled"] and not status["fenced"]
        try:
            _write_reserved(os.path.join(self.adir, "status.json"), self.reserved, status)
        except OSError:
            pass  # the directory is gone: nobody is left to read it
        self.done = True
        _ACTIVE.discard(self.adir)

    # -- helpers ---------------------------------------------------------------------------

    def _log(self):
        return os.open(os.path.join(self.adir, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)

    def _say(self, text):
        """A line of fleet's own in the attempt's log."""
        try:
            fd = self._log()
        except OSError:
            return
        try:
            os.write(fd, text)
        except OSError:
            pass
        finally:
            os.close(fd)

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



def _belongs(pid, marker):
    """Whether the process ``pid`` started with ``marker`` (FLEET_ATTEMPT_DIR=...) in its
    environment: which attempt a process left behind by its job came from. None if unknown."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:
        return None


def kill_orphans(adir, rounds=50):
    """KILL the processes the attempt in ``adir`` left behind (they left its process group,
    were reparented here, and started with its FLEET_ATTEMPT_DIR), and theirs as they are
    reparented in turn; reap them. Orphans whose attempt cannot be told (their environment is
    unreadable or replaced) go when no other attempt of this process runs."""
    marker = ("FLEET_ATTEMPT_DIR=%s" % adir).encode()
    for _ in range(rounds):
        last = not (_ACTIVE - {adir})
        doomed = [pid for pid in orphans() if pid not in _JOBS and (last or _belongs(pid, marker))]
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap_orphans()
        if not doomed:
            return
        time.sleep(0.01)


def reap_orphans():
    """Reap the processes reparented here that have ended (never a job: its supervision does)."""
    for pid in orphans():
        if pid in _JOBS:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
