"""Device-side attempt wrapper: launch, follow, cancel (DESIGN.md §5.6).

Stdlib only, Python >= 3.8, never imports fleet. The controller runs it over SSH (or locally):

``wrapper.py agent`` serves one controller over one long-lived channel per host (see ``Agent``):
the controller sends launch/follow/cancel requests; the agent answers with framed log bytes and
events of every attempt it follows. The process the channel started forks once: the child, in a
session of its own, serves the channel and supervises the attempts it launches; the parent only
waits until the channel ends, then exits (so the channel closes as it always did), while the
child lives on until the last attempt it supervises has ended. Launching an attempt costs the
job's own start (posix_spawn) and a few small files, not a fork of Python nor a Python start.

``launch`` creates the attempt directory (the launch marker: ``mkdir`` fails if it exists, so an
attempt never starts twice; a second launch follows instead), writes job.json and the input
links, then supervises the attempt (``supervisor.py``): it runs setup and the command in a new
process group, enforces the timeout (TERM to the group, KILL after the grace period) and writes
``status.json``. It survives the channel and the controller, so a restarted controller reattaches
with ``follow`` instead of running the job again; ``lost`` is reported when the attempt's
supervising process died without a status (host rebooted, process killed).
"""

import errno
import json
import os
import select
import signal
import sys
import time

from hostfs import (  # noqa: F401  (the agent's file rules; tests reach them through here)
    _NOFOLLOW,
    STATUS_BYTES,
    _inside,
    _mark,
    _process_record,
    _read_job_json,
    _read_json,
    _record_start,
    _reserve,
    _sha256_fh,
    _sha256_file,
    _touch,
    _write_json,
    _write_new,
    _write_reserved,
    open_inside,
    open_regular,
)
from jobenv import account
from supervisor import Supervisor, _signal_group
from waits import Inotify, become_subreaper, pidfd, preload, readable

CHUNK = 65536
MAX_REQUEST = 64 << 20  # bytes of one request line from the controller
POLL = 0.05  # log poll interval where there is no inotify watch
QUIET = 0.02  # after news of a log, the next look waits this long (a chatty job: few wake-ups)
CHECK_SUPERVISOR = 1.0  # without a pidfd: how often to look whether a supervisor still lives
NO_SUPERVISOR = 10.0  # an attempt dir without a supervisor pid this long was never started


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


def _tree_bytes(path):
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except OSError as exc:
        return exc.errno == errno.EPERM


def _attempt_ended_at(adir):
    """When the attempt in ``adir`` ended, or None while anything of it may still run."""
    try:
        return os.stat(os.path.join(adir, "status.json")).st_mtime
    except OSError:
        pass
    spid, pgid = _process_record(adir)
    if (spid and _alive(spid)) or (pgid and _group_alive(pgid)):
        return None
    try:  # never finished (power cut, supervisor killed): its last sign of life
        last = max(os.stat(os.path.join(adir, name)).st_mtime
                   for name in ("", "log", "lease") if os.path.exists(os.path.join(adir, name)))
    except (OSError, ValueError):
        return None
    # ...unless that is recent: another controller's agent may be launching it right now
    return last if time.time() - last > 2 * NO_SUPERVISOR else None


def gc_attempts(root, max_age, max_bytes, keep, now=None):
    """Remove ended attempt directories under ``root``: those ended more than ``max_age``
    seconds ago, then the oldest ended ones until the whole of ``root`` is at most ``max_bytes``.
    Never an attempt in ``keep`` (the controller has not collected it yet) or one that may still
    run. Returns ``(removed ids, bytes freed, bytes left)``."""
    import shutil

    now = time.time() if now is None else now
    try:
        names = os.listdir(root)
    except OSError:
        return [], 0, 0
    ended, total = [], 0
    for name in names:
        adir = os.path.join(root, name)
        if not os.path.isdir(adir) or os.path.islink(adir):
            continue
        size = _tree_bytes(adir)
        total += size
        at = None if name in keep else _attempt_ended_at(adir)
        if at is not None:
            ended.append((at, name, size))
    ended.sort()
    removed, freed = [], 0
    for at, name, size in ended:
        if now - at <= max_age and total - freed <= max_bytes:
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        if not os.path.exists(os.path.join(root, name)):
            removed.append(name)
            freed += size
    return removed, freed, total - freed


MAX_OUTPUTS = 1000


def collect_outputs(adir, globs, result, owner=None):
    """The files an ended attempt hands to the controller: its ``outputs`` globs and the
    artifact its runner declared in result.json. Regular files inside the attempt directory
    only, opened without following links (inputs are links into the cache; a job's link to a
    file elsewhere is not an output), owned by ``owner`` when given (isolation: user).
    Returns ``(files, problem)`` where files are ``{"path", "size", "sha256"}`` and problem
    says what was refused or missing."""
    import glob as globmod

    wanted, problems = [], []
    for pattern in globs or []:
        matches = sorted(globmod.glob(os.path.join(adir, pattern), recursive=True))
        if not matches:
            problems.append("output %r matched no file" % pattern)
        wanted += matches
    artifact = (result or {}).get("artifact") if isinstance(result, dict) else None
    if isinstance(artifact, dict) and isinstance(artifact.get("path"), str):
        if _inside(adir, artifact["path"]):
            wanted.append(os.path.join(adir, artifact["path"]))
        else:
            problems.append("artifact path %r leaves the attempt directory" % artifact["path"])
    files, seen = [], set()
    for path in wanted:
        rel = os.path.relpath(path, adir)
        if rel in seen or os.path.islink(path) or not os.path.isfile(path) or not _inside(adir, rel):
            continue
        seen.add(rel)
        if len(files) >= MAX_OUTPUTS:
            problems.append("more than %d output files; the rest were not collected" % MAX_OUTPUTS)
            break
        try:
            with open_regular(adir, rel, owner) as fh:
                sha, size = _sha256_fh(fh)
        except (OSError, ValueError) as exc:
            problems.append("output %r refused: %s" % (rel, exc))
            continue
        files.append({"path": rel, "size": size, "sha256": sha})
    return files, "; ".join(problems) or None


# ---------------------------------------------------------------- agent


def _prepare(adir, payload):
    """Write job.json and link the inputs from the host's content-addressed cache. Refuses
    input and output paths that would leave the attempt directory, whatever the controller
    checked."""
    job = payload.get("job") or {}
    for glob in job.get("outputs") or []:
        if not isinstance(glob, str) or ".." in glob.split("/") or not _inside(adir, glob):
            raise ValueError("output path %r leaves the attempt directory" % (glob,))
    if payload.get("run_as"):
        # The job's own account: the directory is root's, the job's group may add files to it
        # but not remove or replace root's (sticky), and nobody else may enter.
        acct = account(payload["run_as"], payload.get("isolation"))
        os.chown(adir, 0, acct["gid"])
        os.chmod(adir, 0o1770)
        _write_json(os.path.join(adir, "account.json"), acct)
    # The directory is new and ours: job.json and lease are created in it, no rename needed
    # (nothing reads them before the job starts).
    _write_new(os.path.join(adir, "job.json"), json.dumps(job).encode())
    _record_start(adir)  # the lease, naming this process as the attempt's supervisor
    cache = os.path.expanduser(payload.get("cache_dir") or "")
    for rel, sha in payload.get("inputs") or []:
        if not _inside(adir, rel) or not rel.startswith("inputs/"):
            raise ValueError("input path %r leaves the attempt directory" % rel)
        src = os.path.join(cache, sha)
        if not os.path.isfile(src):
            raise ValueError("input %s (sha256 %s) is not in the cache %s" % (rel, sha, cache))
        dst = os.path.join(adir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not _inside(adir, rel):  # a directory made above may be a link placed by an input
            raise ValueError("input path %r leaves the attempt directory" % rel)
        os.symlink(src, dst)


class Follow:
    """One attempt the agent streams: its log from an offset, its events, its end.

    How the agent learns that something changed, cheapest first: an inotify watch on the
    attempt directory (the log grew, status.json appeared, the directory went), its own
    supervision (``sup``: an attempt this process launched) or a pidfd on the process that
    supervises it (one we reattached to). Without a watch the log is polled."""

    def __init__(self, aid, adir, offset, sup=None):
        self.aid, self.adir, self.offset, self.sup = aid, adir, offset, sup
        self.fh = None
        self.since = time.monotonic()
        self.wd = None  # inotify watch
        self.pidfd = None  # on the supervisor of an attempt we did not launch
        self.next_check = time.monotonic()  # when to look again without news (polling)
        self.dirty = True  # something may have changed: read the log, look for the status


class Agent:
    """Serves one controller over one channel: JSON requests on stdin, frames on stdout.

    Requests: ``{"op": "launch", "id": A, ...payload}``, ``{"op": "follow", "id": A,
    "attempt_dir": D, "offset": N}``, ``{"op": "cancel", "id": A, "attempt_dir": D,
    "grace": S}``, ``{"op": "gc", "root": R, "max_age": S, "max_bytes": B, "keep": [A...]}``,
    ``{"op": "ping"}``, ``{"op": "renew"}`` (answered with a pong too). Frames: a JSON header
    line ``{"a": A, "t": TYPE, ...}``; a ``log`` header has ``"n": N`` and N raw bytes follow.
    Types: log, started, attached, exit, lost, error, pong, gc.
    When stdin closes (or stdout breaks) ``run`` returns; the attempts it launched keep running,
    supervised by this process (see ``serve``).
    """

    def __init__(self):
        self.out = sys.stdout.buffer
        self.follows = {}
        self.kills = []  # (monotonic deadline, pgid, attempt dir): KILL after a cancel's grace
        self.inbuf = []  # chunks of the request line being read (none holds a newline)
        self.inlen = 0
        self.skipping = False  # dropping the rest of a request line that was too long
        self.verified = {}  # sha256 -> stat of the cache file when its content was last hashed
        preload()  # ctypes once, for inotify and the pidfds
        self.inotify = Inotify.create()
        self.by_wd = {}  # inotify watch -> Follow
        self.quiet_until = 0.0
        self.sups = {}  # attempt dir -> Supervisor: the attempts this process supervises
        self.detach = None  # called once the channel has ended (see serve)
        self.broken = False  # a write to the channel met a broken pipe

    def frame(self, aid, kind, data=None, **fields):
        if self.out is None or self.broken:  # the channel has ended
            return
        fields["a"], fields["t"] = aid, kind
        if data is not None:
            fields["n"] = len(data)
        try:
            self.out.write((json.dumps(fields) + "\n").encode())
            if data:
                self.out.write(data)
        except BrokenPipeError:  # the controller's end is gone; the loop ends the channel
            self.broken = True

    def run(self):
        """Sleeps in poll until a request, a supervised job's end, an inotify event, another
        agent's end (one that supervised an attempt we follow), or the next thing due (a KILL
        after a cancel's grace, a timeout, a look at a lease; polling where there is no watch). When the channel ends it stops serving it and returns once
        the last attempt it supervises has ended."""
        stdin = sys.stdin.buffer.fileno()
        while True:
            now = time.monotonic()
            if self.out is None:
                if not self.sups:
                    return 0
                fds = []
            else:
                fds = [stdin]
            by_fd = {}
            for follow in self.follows.values():
                if follow.pidfd is not None:
                    fds.append(follow.pidfd)
                    by_fd[follow.pidfd] = follow
            for sup in self.sups.values():
                if sup.fd is not None:
                    fds.append(sup.fd)
                    by_fd[sup.fd] = sup
            if self.inotify is not None and now >= self.quiet_until:
                fds.append(self.inotify.fd)
            due = self.due(now)
            poller = select.poll()  # not select(): no limit at descriptor 1024
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                ready = [fd for fd, _ in poller.poll(None if due is None else max(0.0, due - now) * 1000)]
            except InterruptedError:
                continue
            if self.out is not None and stdin in ready:
                data = os.read(stdin, CHUNK)
                if data:
                    self.received(data)
                else:
                    self.ended()
                    continue
            if self.inotify is not None and self.inotify.fd in ready:
                for wd, gone in self.inotify.read().items():
                    follow = self.by_wd.get(wd)
                    if follow is not None:
                        follow.dirty = True
                        if gone:
                            self.unwatch(follow)
                            follow.next_check = 0.0
                self.quiet_until = time.monotonic() + QUIET
            now = time.monotonic()
            for fd in ready:
                got = by_fd.get(fd)
                if isinstance(got, Follow):
                    if got.aid in self.follows:  # the supervisor of an attempt we reattached to ended
                        got.dirty, got.next_check = True, 0.0
                elif got is not None:  # a job we supervise ended
                    got.wake(now)
            for sup in list(self.sups.values()):
                when = sup.due(now)
                if when is not None and when <= now:
                    sup.wake(now)
                if sup.done:
                    del self.sups[sup.adir]
            self.tick()
            try:
                if self.out is not None and not self.broken:
                    self.out.flush()
            except BrokenPipeError:
                self.broken = True
            if self.broken and self.out is not None:  # the controller's end is gone
                self.ended()

    def ended(self):
        """The channel has ended: stop following (nobody is left to tell), let the channel's
        process go, go on supervising."""
        self.out = None
        for follow in list(self.follows.values()):
            self.drop(follow)
        if self.detach is not None:
            self.detach()
            self.detach = None

    def due(self, now):
        """When the loop must look again with no news (None: only news wakes it)."""
        times = [k[0] for k in self.kills]
        for sup in self.sups.values():
            when = sup.due(now)
            if when is not None:
                times.append(when)
        if self.quiet_until > now:  # then inotify is listened to again
            times.append(self.quiet_until)
        for follow in self.follows.values():
            if follow.dirty:
                times.append(now)
            elif follow.wd is None or follow.sup is None:
                times.append(follow.next_check)
        times = [t for t in times if t != float("inf")]
        return min(times) if times else None

    def watch(self, follow):
        if self.inotify is not None and follow.wd is None:
            follow.wd = self.inotify.watch(follow.adir)
            if follow.wd is not None:
                self.by_wd[follow.wd] = follow
        follow.dirty = True

    def unwatch(self, follow):
        if follow.wd is not None:
            self.by_wd.pop(follow.wd, None)
            if self.inotify is not None:
                try:
                    self.inotify.unwatch(follow.wd)
                except OSError:
                    pass
            follow.wd = None

    def add(self, follow):
        old = self.follows.get(follow.aid)
        if old is not None:  # followed anew: it keeps the supervision of an attempt we launched
            if follow.sup is None:
                follow.sup = old.sup
            self.drop(old)
        self.follows[follow.aid] = follow
        self.watch(follow)
        return follow

    def drop(self, follow):
        """Stop following (ended, lost, or followed anew)."""
        self.unwatch(follow)
        if follow.pidfd is not None:
            os.close(follow.pidfd)
            follow.pidfd = None
        if follow.fh is not None:
            follow.fh.close()
            follow.fh = None
        if self.follows.get(follow.aid) is follow:
            del self.follows[follow.aid]

    def received(self, data):
        """Split what arrived into request lines. Linear in the bytes: only the new chunk is
        searched for a newline. A line longer than MAX_REQUEST is refused and skipped."""
        while data:
            i = data.find(b"\n")
            if i < 0:
                if not self.skipping:
                    self.inbuf.append(data)
                    self.inlen += len(data)
                    if self.inlen > MAX_REQUEST:
                        self.inbuf, self.inlen, self.skipping = [], 0, True
                        self.frame(None, "error", message="request longer than %d bytes" % MAX_REQUEST)
                return
            head, data = data[:i], data[i + 1:]
            if self.skipping:
                self.skipping = False
                continue
            if self.inlen + len(head) > MAX_REQUEST:
                self.inbuf, self.inlen = [], 0
                self.frame(None, "error", message="request longer than %d bytes" % MAX_REQUEST)
                continue
            self.inbuf.append(head)
            line = b"".join(self.inbuf)
            self.inbuf, self.inlen = [], 0
            if line.strip():
                self.request(line)

    def request(self, line):
        aid = None
        try:
            req = json.loads(line.decode("utf-8"))
            aid = req.get("id")
            op = req.get("op")
            if op == "launch":
                self.launch(aid, req)
            elif op == "follow":
                adir = os.path.expanduser(req["attempt_dir"])
                self.add(Follow(aid, adir, int(req.get("offset", 0))))
                _touch(os.path.join(adir, "lease"))
            elif op == "renew":  # the controller still follows: extend every attempt's lease
                for follow in self.follows.values():
                    _touch(os.path.join(follow.adir, "lease"))
                # Answered: what the controller receives keeps its SSH keepalive quiet, so a
                # quiet host costs one round trip per renewal instead of two.
                self.frame(aid, "pong")
            elif op in ("cancel", "fence"):  # fence: the controller gave the attempt up
                self.cancel(aid, os.path.expanduser(req["attempt_dir"]), float(req.get("grace", 10)), op)
            elif op == "ping":
                self.frame(aid, "pong")
            elif op == "gc":  # retention of ended attempt directories (and their raw files)
                keep = set(req.get("keep") or ()) | set(self.follows)
                removed, freed, left = gc_attempts(
                    os.path.expanduser(req["root"]), float(req["max_age"]), int(req["max_bytes"]), keep)
                self.frame(aid, "gc", removed=removed, freed=freed, left=left)
            else:
                raise ValueError("unknown op %r" % op)
        except Exception as exc:
            self.frame(aid, "error", message="%s: %s" % (type(exc).__name__, exc))

    def check_inputs(self, cache, inputs):
        """The sha256 of inputs the cache lacks or holds altered (those are removed): a file is
        hashed again whenever its inode, size or times changed since it was last hashed, so
        a job that wrote into a cached input cannot hand the next job its version."""
        import stat

        bad = []
        for _rel, sha in inputs:
            if not isinstance(sha, str) or len(sha) != 64 or sha.strip("0123456789abcdef"):
                raise ValueError("input hash %r is not a sha256" % (sha,))
            path = os.path.join(cache, sha)
            try:
                st = os.lstat(path)
            except OSError:
                bad.append(sha)
                continue
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
            if stat.S_ISREG(st.st_mode) and self.verified.get(sha) == key:
                continue
            ok = False
            if stat.S_ISREG(st.st_mode):
                try:
                    ok = _sha256_file(path) == sha
                except OSError:
                    pass
            if ok:
                self.verified[sha] = key
                continue
            self.verified.pop(sha, None)
            try:
                os.unlink(path)
            except OSError:
                pass
            bad.append(sha)
        return sorted(set(bad))

    def launch(self, aid, payload):
        adir = os.path.expanduser(payload["attempt_dir"])
        if payload.get("follow_only") and not os.path.isdir(adir):
            self.frame(aid, "lost", message="attempt %s was never launched on this host" % aid)
            return
        if not os.path.isdir(adir) and payload.get("inputs"):
            missing = self.check_inputs(os.path.expanduser(payload.get("cache_dir") or ""),
                                        payload["inputs"])
            if missing:  # before the launch marker: the controller uploads and asks again
                self.frame(aid, "missing", inputs=missing)
                return
        parent = os.path.dirname(adir)
        os.makedirs(parent, exist_ok=True)
        try:  # nobody but fleet lists the attempts; each job reaches only its own
            os.chmod(parent, 0o711)
        except OSError:
            pass
        try:
            os.mkdir(adir, 0o700)  # the launch marker: never start an attempt twice
        except FileExistsError:
            self.frame(aid, "attached", dir=adir)
            self.add(Follow(aid, adir, int(payload.get("offset", 0))))
            _touch(os.path.join(adir, "lease"))
            return
        offset = int(payload.get("offset", 0))
        preamble = (payload.get("preamble") or "").encode()
        if preamble:  # lines the controller wrote into its copy of the log: the host's starts so too
            fd = os.open(os.path.join(adir, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
            try:
                os.write(fd, preamble)
            finally:
                os.close(fd)
        try:
            _prepare(adir, payload)
        except Exception as exc:
            _write_json(os.path.join(adir, "status.json"), {
                "exit_code": None, "signal": None, "timed_out": False, "cancelled": False,
                "phase": "prepare", "error": "prepare: %s" % exc,
                "started_at": time.time(), "ended_at": time.time()})
            self.add(Follow(aid, adir, offset))
            return
        sup = Supervisor(adir, payload, lambda kind, **fields: self.supervised(aid, sup, kind, fields))
        self.sups[adir] = sup
        self.add(Follow(aid, adir, offset, sup))  # the controller holds the preamble already
        sup.start()

    def supervised(self, aid, sup, kind, fields):
        """An event of an attempt we supervise ("started"): to the controller, if it follows."""
        follow = self.follows.get(aid)
        if follow is not None and follow.sup is sup:
            self.frame(aid, kind, **fields)

    def cancel(self, aid, adir, grace, marker="cancel"):
        if not os.path.isdir(adir):
            return  # never launched, or already cleaned up
        _mark(os.path.join(adir, marker), str(time.time()))
        sup = self.sups.get(adir)
        if sup is not None:  # supervised here: its job's group is known, whatever the files say
            pgid = sup.proc.pid if sup.proc is not None else None
        else:
            _spid, pgid = _process_record(adir)
        if pgid and not os.path.exists(os.path.join(adir, "status.json")):
            _signal_group(pgid, signal.SIGTERM)
            self.kills.append((time.monotonic() + grace, pgid, adir))

    def drain(self, follow):
        if follow.fh is None:
            try:
                follow.fh = open(os.path.join(follow.adir, "log"), "rb")
                follow.fh.seek(follow.offset)
            except OSError:
                return
        while True:
            data = follow.fh.read(CHUNK)
            if not data:
                return
            follow.offset += len(data)
            self.frame(follow.aid, "log", data)

    def finish(self, follow):
        self.drain(follow)
        sup = follow.sup
        if sup is not None:  # supervised here: its status and job are known without a read
            status, job = dict(sup.status or {}), sup.payload.get("job") or {}
            acct = _read_json(os.path.join(follow.adir, "account.json")) if sup.payload.get("run_as") else None
        else:
            status = _read_json(os.path.join(follow.adir, "status.json")) or {}
            acct = _read_json(os.path.join(follow.adir, "account.json"))
            job = _read_json(os.path.join(follow.adir, "job.json")) or {}
        owner = acct["uid"] if isinstance(acct, dict) and isinstance(acct.get("uid"), int) else None
        result = _read_job_json(follow.adir, "result.json", owner)
        try:
            outputs, problem = collect_outputs(follow.adir, job.get("outputs"), result, owner)
        except OSError as exc:
            outputs, problem = [], "outputs: %s" % exc
        self.frame(follow.aid, "exit", status=status, result=result,
                   error=_read_job_json(follow.adir, "error.json", owner),
                   log_size=follow.offset, outputs=outputs, outputs_problem=problem)
        self.drop(follow)

    def lost(self, follow, message):
        self.frame(follow.aid, "lost", message=message)
        self.drop(follow)

    def tick(self):
        now = time.monotonic()
        for kill in [k for k in self.kills if now >= k[0]]:
            self.kills.remove(kill)
            if not os.path.exists(os.path.join(kill[2], "status.json")):
                _signal_group(kill[1], signal.SIGKILL)
        for follow in list(self.follows.values()):
            polled = follow.wd is None and now >= follow.next_check
            news = follow.dirty or polled
            follow.dirty = False
            if news:
                self.drain(follow)
            if follow.sup is not None:  # ours: we know when it ends
                if follow.sup.done:
                    self.finish(follow)
                elif polled:
                    follow.next_check = now + POLL
                continue
            if news and os.path.exists(os.path.join(follow.adir, "status.json")):
                self.finish(follow)
            elif news or now >= follow.next_check:
                self.check(follow, now)

    def check(self, follow, now):
        """An attempt we did not launch, without its status yet: is its supervisor still
        there? Asks the kernel to tell us when it ends (pidfd) where it can."""
        follow.next_check = now + (POLL if follow.wd is None else CHECK_SUPERVISOR)
        if not os.path.isdir(follow.adir):
            self.lost(follow, "attempt directory %s does not exist" % follow.adir)
            return
        if follow.pidfd is not None:
            if not readable(follow.pidfd):
                if follow.wd is not None:
                    follow.next_check = float("inf")  # the pidfd and the watch wake us
                return
            os.close(follow.pidfd)  # it ended: see below how
            follow.pidfd = None
        spid, pgid = _process_record(follow.adir)
        if spid and follow.pidfd is None and _alive(spid):
            follow.pidfd = pidfd(spid)
            if follow.pidfd is not None and follow.wd is not None:
                follow.next_check = float("inf")
            return
        if spid and not _alive(spid):
            if os.path.exists(os.path.join(follow.adir, "status.json")):
                self.finish(follow)
                return
            # The job may have outlived its supervisor (an OOM kill of the supervisor
            # alone): stop it, or it would run on unsupervised while a retry runs too.
            if pgid:
                _signal_group(pgid, signal.SIGKILL)
            self.drain(follow)
            self.lost(follow, "the attempt's supervisor (pid %d) is gone without an exit status" % spid)
        elif not spid and now - follow.since > NO_SUPERVISOR:
            self.lost(follow, "the attempt never got a supervisor (its launch was cut short)")


def cat(adir, rel):
    """Copy an attempt's file to stdout (the controller fetching an output): a regular file
    inside the attempt directory, reached without following links, and the job's own when it
    ran as another account."""
    adir = os.path.expanduser(adir)
    acct = _read_json(os.path.join(adir, "account.json"))
    owner = acct.get("uid") if isinstance(acct, dict) else None
    try:
        with open_regular(adir, rel, owner if isinstance(owner, int) else None) as fh:
            out = sys.stdout.buffer
            for block in iter(lambda: fh.read(CHUNK), b""):
                out.write(block)
            out.flush()
    except (OSError, ValueError) as exc:
        sys.stderr.write("%s\n" % exc)
        return 1
    return 0


def serve():
    """Serve the channel on stdin/stdout in a child that outlives it (see the module's text).
    Returns the exit status of the channel's process: 0 once the child has left the channel."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):  # the channel is the child's now; its end is the child's to tell
            os.dup2(null, fd)
        os.close(null)
        while True:
            try:
                if not os.read(rfd, 64):
                    break
            except InterruptedError:
                continue
        done, status = os.waitpid(pid, os.WNOHANG)
        if done and os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        return 0 if not done else 128 + os.WTERMSIG(status)
    left = []

    def leave():  # the channel has ended: let the channel's process exit
        if left:
            return
        left.append(True)
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # sshd ends a channel once every holder closed its output
            os.dup2(null, fd)
        os.close(null)
        os.close(wfd)

    code = 1
    try:
        os.close(rfd)
        os.setsid()  # a hangup of the channel's session never reaches the attempts' supervision
        # A channel gone while a frame is written must not take the supervision of every
        # running attempt with it (jobs get the default back: see Supervisor._begin).
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        become_subreaper()
        agent = Agent()
        agent.detach = leave
        code = agent.run()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        leave()
        os._exit(code)


def main(argv):
    if argv[:1] == ["agent"]:
        if argv[1:2] == ["--path"] and len(argv) == 3:  # started by sudo: the login's PATH
            os.environ["PATH"] = argv[2]
        # What the agent makes (input links, job.json) is readable by a job that runs as
        # another account; the attempt directory's own mode keeps other users out.
        os.umask(0o022)
        return serve()
    if argv[:1] == ["cat"] and len(argv) == 3:
        return cat(argv[1], argv[2])
    sys.stderr.write("usage: wrapper.py agent   (JSON requests on stdin, frames on stdout)\n"
                     "       wrapper.py cat ATTEMPT_DIR PATH\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
