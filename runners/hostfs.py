"""Files in attempt directories, written and read so that a job cannot misdirect fleet.

Stdlib only, Python >= 3.8 (shipped to hosts with the wrapper). A job may own files in its
attempt directory and, on a host with ``isolation: none``, everything fleet has there; the
agent may run as root. So files fleet writes are created new (never through a link a job put
under their name), files a job wrote are opened without following links and only if they are
regular files of the job's own account, and paths never leave the attempt directory.
"""

import json
import os

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _create(path, mode=0o644):
    """A new file at ``path`` for writing, never through a link a job may have planted under
    its name (one syscall when nothing is there, as is usual)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, mode)


def _write_json(path, data):
    """Write atomically (temp file, rename). The temp file is created new and never through a
    link a job may have planted under its name."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    _write_new(tmp, json.dumps(data).encode())
    os.replace(tmp, path)


def _write_new(path, data):
    """Create ``path`` new (see ``_create``) holding ``data`` (bytes)."""
    fd = _create(path)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


STATUS_BYTES = 4096


def _reserve(path):
    """Take the disk space of a small JSON file now (its temporary file, filled with spaces);
    returns that file's name, or None if there was no room even now."""
    tmp = "%s.reserved.%d" % (path, os.getpid())
    try:
        fd = _create(tmp)
        try:
            try:  # the blocks are the filesystem's promise now; no journal flush needed
                os.posix_fallocate(fd, 0, STATUS_BYTES)
            except (OSError, AttributeError):  # a filesystem without fallocate
                os.write(fd, b" " * STATUS_BYTES)
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp
    except OSError:
        return None


def _write_reserved(path, tmp, data):
    """Write ``data`` as JSON into the space ``_reserve`` took (in place: no new blocks), then
    rename it to ``path``. Falls back to a plain write."""
    text = json.dumps(data).encode()
    if tmp is None or len(text) > STATUS_BYTES:
        if len(text) > STATUS_BYTES and data.get("error"):
            data = dict(data, error=str(data["error"])[:STATUS_BYTES // 2])
        if tmp is None or len(json.dumps(data).encode()) > STATUS_BYTES:
            _write_json(path, data)
            return
        text = json.dumps(data).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | _NOFOLLOW)
        try:
            os.write(fd, text + b" " * (STATUS_BYTES - len(text)))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        _write_json(path, data)


def open_inside(base, rel, flags=os.O_RDONLY):
    """A file descriptor of ``rel`` inside the directory ``base``, opened without following a
    link at any step (a job cannot point an output or a log at a file outside its attempt
    directory). Raises OSError, or ValueError for a path that leaves ``base``."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise ValueError("path %r is not inside the attempt directory" % rel)
    fd = os.open(base, os.O_RDONLY | _DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | _NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)


def open_regular(base, rel, owner=None):
    """``open_inside`` for reading a regular file (not a FIFO, device or directory), owned by
    ``owner`` when given. Returns a binary file object."""
    import stat

    fd = open_inside(base, rel)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError("%s is not a regular file" % rel)
    if owner is not None and st.st_uid != owner:
        os.close(fd)
        raise ValueError("%s is not the job's own file" % rel)
    return os.fdopen(fd, "rb")


def _read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read_job_json(adir, name, owner):
    """A JSON file the job wrote (result.json, error.json): read without following a link,
    and only if the job's own account owns it (the agent may run as root)."""
    try:
        with open_regular(adir, name, owner) as fh:
            return json.loads(fh.read(64 << 20).decode("utf-8"))
    except (OSError, ValueError):
        return None


def _mark(path, text=""):
    """Create or replace a small file the agent owns (cancel, fence) without following a link
    a job may have put under its name."""
    try:
        os.unlink(path)
    except OSError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _inside(base, rel):
    """True if ``rel`` stays inside ``base``: no absolute path, no ``..`` escape, and no
    symlink on the way that leads out (what exists of the path is resolved)."""
    if not rel or rel.startswith(("/", "~")) or "\x00" in rel:
        return False
    full = os.path.normpath(os.path.join(base, rel))
    if not (full == base or full.startswith(base.rstrip("/") + "/")):
        return False
    real_base = os.path.realpath(base)
    real = os.path.realpath(os.path.dirname(full))
    return real == real_base or real.startswith(real_base.rstrip("/") + "/")


def _touch(path):
    try:
        os.utime(path, follow_symlinks=False)
    except (OSError, NotImplementedError):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o644))
        except OSError:
            pass


def _sha256_fh(fh):
    import hashlib

    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _sha256_file(path):
    with open(path, "rb") as fh:
        return _sha256_fh(fh)[0]


# An attempt's process record is its ``lease`` file: the agent that supervises the attempt
# creates it with its pid on the first line, and appends "<pgid> <phase>" when it starts each
# phase's process group. Its mtime is the attempt lease (renewals touch it). One file where
# there were three (``pid``, ``proc.json`` and ``lease``): every file an attempt creates costs
# an inode allocation, which on a filesystem with much created and removed was most of what
# an attempt cost its host (issue 16).


def _record_start(adir):
    """Create the attempt's lease and process record, naming this process as its supervisor."""
    _write_new(os.path.join(adir, "lease"), ("%d\n" % os.getpid()).encode())


def _record_phase(adir, pgid, phase):
    """Add a phase's process group to the record without renewing the lease (a supervisor
    never extends its own lease: only its controller does)."""
    path = os.path.join(adir, "lease")
    before = os.stat(path, follow_symlinks=False)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | _NOFOLLOW)
    try:
        _write_all(fd, ("%d %s\n" % (pgid, phase)).encode())
    finally:
        os.close(fd)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _process_record(adir):
    """``(supervisor pid, process group of the job's current phase)`` of an attempt, 0 and
    None where not known (yet). Reads the record above, or the ``pid`` and ``proc.json``
    files of attempts an older agent launched. Only complete lines count."""
    try:  # never through a link a job put in its place
        fd = os.open(os.path.join(adir, "lease"), os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)
        try:
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
    except OSError:
        data = b""
    lines = [line.split() for line in data.split(b"\n")[:-1]]
    if lines and len(lines[0]) == 1 and lines[0][0].isdigit():
        pgid = None
        for fields in lines[1:]:
            if len(fields) == 2 and fields[0].isdigit():
                pgid = int(fields[0])
        return int(lines[0][0]), pgid
    try:
        with open(os.path.join(adir, "pid")) as fh:
            spid = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        spid = 0
    pgid = (_read_json(os.path.join(adir, "proc.json")) or {}).get("pgid")
    return spid, pgid if isinstance(pgid, int) else None

