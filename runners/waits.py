"""Blocking waits for the host agent and its supervisors: nothing polls while nothing happens
(issue 16: fleet's own footprint on a benchmarking host must be near zero). Stdlib only, Python
>= 3.8, Linux first; every wait has a fallback that still works, only less cheaply.

* ``pidfd``: a file descriptor that becomes readable when a process ends (Linux >= 5.3, through
  ``os.pidfd_open`` or, on Python 3.8, the system call by ctypes); where there is none, the
  agent looks at its jobs every ``POLL`` seconds.
* ``Inotify``: tells the agent when an attempt directory changed (its log grew, its status
  appeared, it was removed), through libc's inotify by ctypes; ``None`` where there is none.
* ``orphans``: the processes reparented to this one, from ``/proc/self/task/<pid>/children``,
  not a scan of every process on the host.
"""
import errno
import os
import select
import struct

_LIBC = None  # ctypes' libc, loaded once (see preload)
# FLEET_AGENT_WAITS=poll: do without pidfd and inotify (the fallbacks of older kernels and
# Pythons), to diagnose a host or test those paths.
FALLBACK = os.environ.get("FLEET_AGENT_WAITS") == "poll"


def preload():
    """libc through ctypes (loaded once; None where there is no ctypes): inotify, the
    subreaper flag, pidfd_open on Python 3.8."""
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


def orphans():
    """Pids of the processes reparented to this one (a subreaper's orphans go to its main
    thread: only that thread's children are read, not those the other threads started)."""
    me = os.getpid()
    try:
        with open("/proc/%d/task/%d/children" % (me, me)) as fh:
            return [int(p) for p in fh.read().split()]
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


POLL = 0.05  # without a pidfd: how often a supervisor looks whether its job ended
_PIDFD_OPEN = 434  # the system call's number on every architecture (Linux >= 5.3)


def pidfd(pid):
    """A pidfd for ``pid`` (readable once it has ended), or None where there is none."""
    if FALLBACK:
        return None
    opener = getattr(os, "pidfd_open", None)
    try:
        if opener is not None:
            return opener(pid)
        libc = preload()
        if libc is None:
            return None
        fd = libc.syscall(_PIDFD_OPEN, pid, 0)
        return fd if fd >= 0 else None
    except (OSError, AttributeError):
        return None


def readable(fd):
    """Whether ``fd`` is readable now (a pidfd: its process has ended). poll(), not select():
    no limit at descriptor 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


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
