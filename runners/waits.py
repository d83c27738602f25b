"""Blocking waits for the host agent and its supervisors: nothing polls while nothing happens
(issue 16: fleet's own footprint on a benchmarking host must be near zero). Stdlib only, Python
>= 3.8, Linux first; every wait has a fallback that still works, only less cheaply.

* ``ProcessWaiter``: a file descriptor that becomes readable when a process ends (a pidfd on
  Linux >= 5.3 with Python >= 3.9; else a pipe written by the SIGCHLD handler, for a child).
* ``Inotify``: tells the agent when an attempt directory changed (its log grew, its status
  appeared, it was removed), through libc's inotify by ctypes; ``None`` where there is none.
* ``children``: this process's children from ``/proc/self/task/*/children``, not a scan of
  every process on the host.
"""

import errno
import os
import select
import signal
import struct

_LIBC = None  # ctypes' libc, loaded once by the agent before it forks (see preload)
# FLEET_AGENT_WAITS=poll: do without pidfd and inotify (the fallbacks of older kernels and
# Pythons), to diagnose a host or test those paths.
FALLBACK = os.environ.get("FLEET_AGENT_WAITS") == "poll"


def preload():
    """Load what the supervisors need before the agent forks them, so each fork does not pay
    for importing ctypes again. Returns libc (or None where there is no ctypes)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL(None, use_errno=True)
        except (ImportError, OSError):
            _LIBC = False
    return _LIBC or None


def become_subreaper():
    """Descendants of the job that leave it (double fork, setsid) are reparented here, not to
    init, so they can be found and stopped with the job. Elsewhere a no-op."""
    libc = preload()
    if libc is not None:
        try:
            libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass


def children():
    """Pids of this process's children (all its threads'); a scan of /proc where the kernel
    does not list them."""
    me = os.getpid()
    try:
        tids = os.listdir("/proc/%d/task" % me)
        found = []
        for tid in tids:
            with open("/proc/%d/task/%s/children" % (me, tid)) as fh:
                found += [int(p) for p in fh.read().split()]
        return found
    except (OSError, ValueError):
        return _scan_children(me)


def _scan_children(me):
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    mine = str(me)
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == mine and fields[0] != "Z":
            found.append(int(name))
    return found


class Child:
    """A job started with posix_spawn (vfork and exec: its cost does not grow with the size of
    the supervisor, as a fork's does), in a session of its own, stdout and stderr to
    ``log_fd``, stdin from /dev/null, in the current directory. Popen's ``pid``, ``poll``,
    ``wait`` and ``returncode`` (negative: the signal that ended it)."""

    def __init__(self, argv, env, log_fd):
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
        spawn = os.posix_spawnp if "/" not in argv[0] else os.posix_spawn
        self.pid = spawn(argv[0], list(argv), env, file_actions=actions, setsid=True)
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


def pidfd(pid):
    """A pidfd for ``pid`` (readable once it has ended), or None where there is none."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None or FALLBACK:
        return None
    try:
        return opener(pid)
    except OSError:
        return None


class ProcessWaiter:
    """Waits for a child to end, for at most a timeout, without polling. Make it before the
    child is started (the SIGCHLD fallback must be in place first), then ``watch(pid)``."""

    def __init__(self):
        self.fd = None
        self.pipe = None
        if getattr(os, "pidfd_open", None) is None or FALLBACK:
            self._sigchld()

    def _sigchld(self):
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.pipe = (r, w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler: the job starts with the default
        signal.set_wakeup_fd(w)

    def watch(self, pid):
        if self.pipe is None:
            self.fd = pidfd(pid)
            if self.fd is None:  # an old kernel under a new Python
                self._sigchld()

    def wait(self, timeout):
        """Until the child may have ended or ``timeout`` seconds (None: no limit) passed.
        The caller checks which (``Popen.poll``)."""
        fd = self.fd if self.fd is not None else self.pipe[0]
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            return
        if ready and self.pipe is not None:
            try:
                while os.read(self.pipe[0], 512):
                    pass
            except OSError:
                pass

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.pipe is not None:
            signal.set_wakeup_fd(-1)
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


# inotify(7)
IN_MODIFY = 0x2
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
_EVENT = struct.Struct("iIII")


class Inotify:
    """Which watched directories changed. ``create()`` returns None where inotify is missing."""

    MASK = IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF

    def __init__(self, libc, fd):
        self.libc, self.fd = libc, fd

    @classmethod
    def create(cls):
        libc = preload()
        if libc is None or FALLBACK:
            return None
        try:
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except AttributeError:
            return None
        return cls(libc, fd) if fd >= 0 else None

    def watch(self, path):
        """A watch descriptor for the directory ``path``, or None (no room for more watches:
        ``fs.inotify.max_user_watches``; the caller polls that one instead)."""
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.MASK)
        return wd if wd >= 0 else None

    def unwatch(self, wd):
        self.libc.inotify_rm_watch(self.fd, wd)

    def read(self):
        """``{wd: gone}`` for every watch with news; ``gone``: its directory was removed."""
        changed = {}
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return changed
                raise
            if not data:
                return changed
            at = 0
            while at + _EVENT.size <= len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, at)
                at += _EVENT.size + size
                gone = bool(mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))
                changed[wd] = changed.get(wd, False) or gone
