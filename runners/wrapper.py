"""Device-side attempt wrapper: launch, follow, cancel (DESIGN.md §5.6).

Stdlib only, Python >= 3.8, never imports fleet. The controller runs it over SSH (or locally):

``wrapper.py launch``   payload JSON on stdin. Creates the attempt directory (the launch marker:
                        ``mkdir`` fails if it exists, so an attempt never starts twice), writes
                        job.json and the input links, then starts a detached supervisor in its
                        own session that runs setup and the command in a new process group,
                        enforces the timeout (TERM to the group, KILL after the grace period)
                        and writes ``status.json``. The launcher then follows (below). If the
                        directory already exists, launch only follows.
``wrapper.py follow DIR OFFSET``   streams the log from byte OFFSET to stdout and ends with one
                        JSON event line on stderr: ``{"event": "exit", ...}`` (status, result,
                        error records) or ``{"event": "lost", ...}`` when the supervisor died
                        without writing a status (host rebooted, process killed).
``wrapper.py cancel DIR GRACE``    marks the attempt cancelled and signals its process group.

Events on stderr are JSON lines (``started``, ``exit``, ``lost``, ``attached``); stdout carries
only log bytes. The supervisor survives the SSH channel and the controller, so a restarted
controller reattaches with ``follow`` instead of running the job again.
"""

import errno
import json
import os
import select
import signal
import subprocess
import sys
import time

CHUNK = 65536
POLL_ATTACHED = 0.05  # log poll interval while the supervisor's pipe is open
POLL_DETACHED = 0.1  # when following an attempt we did not launch (reattach)


def _write_json(path, data):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _event(**fields):
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


def _inside(base, rel):
    """True if ``rel`` stays inside ``base`` (no absolute path, no ``..`` escape)."""
    if not rel or rel.startswith("/") or "\x00" in rel:
        return False
    full = os.path.normpath(os.path.join(base, rel))
    return full == base or full.startswith(base.rstrip("/") + "/")


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except OSError:
        return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:  # a zombie is not alive
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# ---------------------------------------------------------------- supervisor (detached)


class Supervisor:
    """Runs setup and the command of one attempt; writes pid, pgid, status.json. Never raises."""

    def __init__(self, adir, payload, notify_fd):
        self.adir = adir
        self.payload = payload
        self.notify_fd = notify_fd
        self.log = None
        self.cancel_path = os.path.join(adir, "cancel")

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
        try:
            self.log = open(os.path.join(self.adir, "log"), "ab", buffering=0)
            status.update(self._run_phases(status))
        except Exception as exc:  # the wrapper must always leave a status behind
            status["error"] = "wrapper: %s: %s" % (type(exc).__name__, exc)
        status["ended_at"] = time.time()
        status["cancelled"] = status["cancelled"] or os.path.exists(self.cancel_path)
        _write_json(os.path.join(self.adir, "status.json"), status)

    def _run_phases(self, status):
        env = dict(os.environ)
        env.update(self.payload.get("env") or {})
        env["FLEET_ATTEMPT_DIR"] = self.adir
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
        if not argv:  # a runner: [python, entry script, job.json]; expand ~ in the entry
            python, entry, arg = self.payload["entry"]
            argv = [python, os.path.expanduser(entry), arg]
        code, sig, timed_out = self._run(argv, env, deadline, grace, "run")
        return {"exit_code": code, "signal": sig, "timed_out": timed_out, "phase": "run"}

    def _run(self, argv, env, deadline, grace, phase):
        if os.path.exists(self.cancel_path):
            return None, signal.SIGTERM, False
        try:
            proc = subprocess.Popen(
                argv, cwd=self.adir, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            self.log.write(("fleet: cannot start %s: %s\n" % (argv[0], exc)).encode())
            return 127, None, False
        _write_json(os.path.join(self.adir, "proc.json"), {"pgid": proc.pid, "phase": phase})
        self.notify(event="started", pid=proc.pid, phase=phase, at=time.time())
        if os.path.exists(self.cancel_path):  # cancelled between the check and the start
            _signal_group(proc.pid, signal.SIGTERM)
        timed_out = False
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                timed_out = True
                self.log.write(b"\nfleet: timeout reached; sending TERM to the process group\n")
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.log.write(b"fleet: still running after the grace period; sending KILL\n")
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
        # Leftover children in the group (daemons the job started) go with the job.
        _signal_group(proc.pid, signal.SIGKILL)
        code = proc.returncode
        if code is not None and code < 0:
            return None, -code, timed_out
        return code, None, timed_out


# ---------------------------------------------------------------- launch / follow / cancel


def _prepare(adir, payload):
    """Write job.json and link the inputs from the host's content-addressed cache."""
    _write_json(os.path.join(adir, "job.json"), payload.get("job") or {})
    cache = os.path.expanduser(payload.get("cache_dir") or "")
    for rel, sha in payload.get("inputs") or []:
        if not _inside(adir, rel) or not rel.startswith("inputs/"):
            raise ValueError("input path %r leaves the attempt directory" % rel)
        src = os.path.join(cache, sha)
        if not os.path.isfile(src):
            raise ValueError("input %s (sha256 %s) is not in the cache %s" % (rel, sha, cache))
        dst = os.path.join(adir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(src, dst)


def launch():
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    adir = os.path.expanduser(payload["attempt_dir"])
    os.makedirs(os.path.dirname(adir), exist_ok=True)
    try:
        os.mkdir(adir)  # the launch marker
    except FileExistsError:
        _event(event="attached", dir=adir)
        return follow(adir, int(payload.get("offset", 0)))
    try:
        _prepare(adir, payload)
    except Exception as exc:
        _write_json(os.path.join(adir, "status.json"), {
            "exit_code": None, "signal": None, "timed_out": False, "cancelled": False,
            "phase": "prepare", "error": "prepare: %s" % exc,
            "started_at": time.time(), "ended_at": time.time()})
        return follow(adir, 0)

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: new session, fork again so the supervisor is nobody's child here
        try:
            os.close(rfd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            with open(os.path.join(adir, "pid"), "w") as fh:
                fh.write(str(os.getpid()))
            Supervisor(adir, payload, wfd).run()
        finally:
            os._exit(0)
    os.close(wfd)
    os.waitpid(pid, 0)
    return follow(adir, 0, notify_fd=rfd)


def follow(adir, offset, notify_fd=None):
    """Stream the log from ``offset`` until the attempt ends; then print the exit event."""
    adir = os.path.expanduser(adir)
    log_path = os.path.join(adir, "log")
    status_path = os.path.join(adir, "status.json")
    out = sys.stdout.buffer
    fh = None
    pending = b""
    last_pid_check = 0.0

    def drain():
        nonlocal fh
        if fh is None:
            try:
                fh = open(log_path, "rb")
                fh.seek(offset)
            except OSError:
                return
        while True:
            data = fh.read(CHUNK)
            if not data:
                break
            out.write(data)
        out.flush()

    while True:
        if notify_fd is not None:
            ready, _, _ = select.select([notify_fd], [], [], POLL_ATTACHED)
            if ready:
                data = os.read(notify_fd, 4096)
                if not data:  # the supervisor exited: its status is written
                    os.close(notify_fd)
                    notify_fd = None
                    drain()
                    continue
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    sys.stderr.write(line.decode() + "\n")
                    sys.stderr.flush()
            drain()
            continue
        drain()
        if os.path.exists(status_path):
            drain()
            break
        now = time.monotonic()
        if now - last_pid_check > 1.0:
            last_pid_check = now
            try:
                with open(os.path.join(adir, "pid")) as pf:
                    spid = int(pf.read().strip() or 0)
            except (OSError, ValueError):
                spid = 0
            if spid and not _alive(spid) and not os.path.exists(status_path):
                drain()
                _event(event="lost", message="the attempt's supervisor (pid %d) is gone "
                       "without an exit status" % spid)
                return 0
            if not spid and not os.path.isdir(adir):
                _event(event="lost", message="attempt directory %s does not exist" % adir)
                return 0
        time.sleep(POLL_DETACHED)
    status = _read_json(status_path) or {}
    _event(event="exit", status=status,
           result=_read_json(os.path.join(adir, "result.json")),
           error=_read_json(os.path.join(adir, "error.json")),
           log_size=os.path.getsize(log_path) if os.path.exists(log_path) else 0)
    return 0


def cancel(adir, grace):
    adir = os.path.expanduser(adir)
    if not os.path.isdir(adir):
        return 0  # never launched or already collected: nothing to do
    with open(os.path.join(adir, "cancel"), "w") as fh:
        fh.write(str(time.time()))
    status_path = os.path.join(adir, "status.json")
    proc = _read_json(os.path.join(adir, "proc.json")) or {}
    pgid = proc.get("pgid")
    if not pgid or os.path.exists(status_path):
        return 0
    _signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if os.path.exists(status_path) or not _signal_group(pgid, 0):
            return 0
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    return 0


def main(argv):
    if len(argv) >= 1 and argv[0] == "launch":
        return launch()
    if len(argv) == 3 and argv[0] == "follow":
        return follow(argv[1], int(argv[2]))
    if len(argv) == 3 and argv[0] == "cancel":
        return cancel(argv[1], float(argv[2]))
    sys.stderr.write("usage: wrapper.py launch | follow DIR OFFSET | cancel DIR GRACE\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
