"""The controller's log store: per attempt, under ``$FLEET_HOME/logs/<bucket>/``.

Writers append bytes as they arrive from the host; followers wait on a per-attempt condition
instead of polling, so ``fleet logs -f`` sees a line as soon as the controller has it.

**Layout.** An attempt's files live in a bucket named by the time part of its id (ids are
time-ordered: a bucket holds the attempts of about 17 minutes, see :func:`bucket`), so a new
attempt costs one file, not a directory per job as well (a mkdir per job was a third of the
controller's CPU per job where file metadata is slow). Logs written before this layout, under
``logs/<job>/``, are still read, resumed and collected where they are.

**Cap.** An attempt's log keeps at most ``cap`` bytes: its head (the first ``cap/2`` bytes, in
``<attempt>.log``) and its tail (the newest bytes, in at most two segments of ``cap/4`` bytes,
``<attempt>.tail/<start>`` where ``start`` is the segment's offset in the host's log). Offsets
are those of the host's log: what the controller received is the end of the newest segment
(or the head's size), which is the data itself, so it stays right across a ``kill -9`` and a
reattach resumes at exactly that byte. A reader that reaches dropped bytes gets one marker line
saying how many were dropped, then the tail. When an attempt ends its files are gzipped into
``<attempt>.log.gz`` (not a tiny log: see ``TINY``).

**Tiny logs.** Most attempts log a few lines. Such a log lives in memory while its attempt runs
(up to ``TINY`` bytes, and ``FLUSH_AFTER`` seconds: then it goes to its file as above, for the
other replicas' readers) and, when the attempt ends, is appended as one record to its bucket's
pack, ``<bucket>/tiny.pack``: no file, no inode per attempt (a new inode cost 0.3-0.8 ms of the
controller's CPU on an ext4 without a journal, a quarter of its CPU per job; bench/dispatch.py).
The record is written before the attempt's end is (``close`` comes before the end's
transaction); if it cannot be, the log goes to its file instead. A controller stopped or killed
while a log is in its memory only has nothing of it on disk: the next one resumes at offset 0
and the host, which keeps the whole log, sends it again. Logs no host keeps (a hook's, which the
controller writes itself: ``own``) are files from their first byte.

Records and their reading: fleet.logpack. Files win over a record (an attempt followed again
after its record was written, whose log then grew; such an attempt's record is voided, so
retention removing its files does not bring the old record back).

**Retention.** :meth:`collect` removes the logs of ended attempts older than an age, then the
oldest until the store is under a size limit; the controller runs it on a timer and when the
store grows past its limit.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fleet.ids import floor_at
from fleet.logpack import PACK, VOID, Packs, Record
from fleet.secrets import Redactor

MiB = 1 << 20
COLLECTED = b"[fleet: this log was removed by the log retention (see log_retention_days, log_store_limit)]\n"

TINY = 4096  # bytes: an ended attempt's log this small is not gzipped (and is packed: see above)
FLUSH_AFTER = 1.0  # seconds a running attempt's tiny log may be in memory only (see above)


def bucket(attempt_id: str) -> str:
    """The directory of an attempt's log: the first five characters of its id's time part
    (milliseconds << 10 in base32: 2^20 ms, about 17.5 minutes, per bucket)."""
    return attempt_id[1:6] or "_"


@dataclass(frozen=True)
class _Loc:
    """Where an attempt's files are: its head, its compressed log, and its tail segments (in a
    directory of their own; in the old layout beside the head as ``<head>.<start>``)."""

    head: Path
    legacy: bool = False

    @property
    def gz(self) -> Path:
        return self.head.with_name(self.head.name + ".gz")

    @property
    def tail(self) -> Path:
        return self.head.with_name(self.head.name[:-len(".log")] + ".tail")

    def segment(self, start: int) -> Path:
        if self.legacy:
            return self.head.with_name(f"{self.head.name}.{start}")
        return self.tail / str(start)

    def segments(self) -> list[tuple[int, Path]]:
        where = self.head.parent if self.legacy else self.tail
        prefix = self.head.name + "." if self.legacy else ""
        found: list[tuple[int, Path]] = []
        try:
            for entry in os.scandir(where):
                start = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
                if start.isdigit():
                    found.append((int(start), Path(entry.path)))
        except FileNotFoundError:
            pass
        found.sort()
        return found


@dataclass
class _Files:
    """What is on disk for one attempt."""

    head: int  # bytes in the head file
    segments: list[tuple[int, Path]]  # (start offset, path), oldest first
    gz: Path | None  # the compressed log of an ended attempt
    has_head: bool = False  # the head file is there (empty or not)

    @property
    def none(self) -> bool:
        """No file of the attempt's own (its log is in a pack's record, or nowhere)."""
        return not self.has_head and not self.segments and self.gz is None

    def received(self) -> int:
        if not self.segments:
            return self.head
        start, path = self.segments[-1]
        return start + path.stat().st_size


class _Writer:
    """An open attempt's log: its files, or (``mem`` not None) its bytes in memory only (a tiny
    log; ``frozen``: bytes after them were dropped, a gap, so nothing more goes into ``mem``)."""

    def __init__(self, loc: _Loc, head_fh: BinaryIO | None, files: _Files) -> None:
        self.loc = loc
        self.head_fh = head_fh
        self.mem: bytearray | None = None
        self.frozen = False
        self.timer: asyncio.TimerHandle | None = None
        self.voids: str | None = None  # resumed from this attempt's pack record: voided when it goes to files
        self.head = files.head
        self.segments = list(files.segments)
        self.seg_fh: BinaryIO | None = None
        self.seg_size = 0
        self.received = files.received()
        if self.segments:
            self.seg_fh = self.segments[-1][1].open("ab", buffering=0)
            self.seg_size = self.received - self.segments[-1][0]

    @classmethod
    def memory(cls, loc: _Loc, data: bytes = b"", received: int = 0) -> _Writer:
        w = cls(loc, None, _Files(0, [], None))
        w.mem, w.received = bytearray(data), max(received, len(data))
        w.frozen = w.received > len(data)
        return w


class LogStore:
    def __init__(self, root: Path, cap: int = 100 * MiB) -> None:
        self.root = root
        self.cap = max(int(cap), 4096)
        self.head_limit = self.cap // 2
        self.segment = self.cap // 4
        self._open: dict[str, _Writer] = {}
        self._mem_limit = min(TINY, self.head_limit)
        self._packs = Packs(root)
        self._waiters: dict[str, asyncio.Event] = {}
        self._redactors: dict[str, Redactor] = {}
        self.appended = 0  # bytes written since start (the GC looks at the store when it grows)
        # A full disk (fleet.disk): while ``paused()`` says so, arriving bytes are dropped, a gap
        # the reader shows as a marker; ``on_error`` hears of a write that failed for space.
        self.paused: Callable[[], bool] = lambda: False
        self.on_error: Callable[[BaseException], None] = lambda exc: None
        # Called before a write nothing else fenced (a tiny log's flush, on a timer): the
        # scheduler's fence, which leaves the process if another replica leads now.
        self.fence: Callable[[], None] = lambda: None
        self.lost = 0  # bytes dropped because the disk was full
        # Logs of the old layout (a directory per job) are looked for only for attempts made
        # before this store started (with a minute's margin for a clock set back), and only
        # while some are left; a later attempt looked for there too is found in its bucket.
        self._legacy_before = floor_at("a", time.time() + 60) if self._has_legacy() else None

    def _has_legacy(self) -> bool:
        try:
            with os.scandir(self.root) as entries:
                return any(e.name.startswith("j") and len(e.name) > 6 and e.is_dir() for e in entries)
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ paths and sizes

    def _loc(self, job_id: str, attempt_id: str) -> _Loc:
        name = f"{attempt_id}.log"
        if self._legacy_before is not None and attempt_id < self._legacy_before:
            old = _Loc(self.root / job_id / name, legacy=True)
            if old.head.exists() or old.gz.exists():
                return old
        return _Loc(self.root / bucket(attempt_id) / name)

    def files(self, job_id: str, attempt_id: str) -> list[Path]:
        """Every file the store holds for the attempt (diagnostics, tests): its own, or the pack
        its record is in."""
        loc = self._loc(job_id, attempt_id)
        own = [p for p in (loc.head, loc.gz) if p.exists()] + [p for _s, p in loc.segments()]
        if not own and self._packed(attempt_id) is not None:
            return [self._packs.path(bucket(attempt_id))]
        return own

    def _packed(self, attempt_id: str) -> Record | None:
        """The attempt's record in its bucket's pack, or None."""
        return self._packs.find(bucket(attempt_id), attempt_id)

    def _read_packed(self, attempt_id: str, record: Record) -> bytes:
        return self._packs.read(bucket(attempt_id), record)

    def _files(self, loc: _Loc) -> _Files:
        try:
            head_size, has_head = loc.head.stat().st_size, True
        except FileNotFoundError:
            head_size, has_head = 0, False
        gz = loc.gz
        return _Files(head_size, loc.segments(), gz if gz.exists() else None, has_head)

    def size(self, job_id: str, attempt_id: str) -> int:
        """Bytes of the host's log the controller has received (where a reattach resumes)."""
        writer = self._open.get(attempt_id)
        if writer is not None:
            return writer.received
        loc = self._loc(job_id, attempt_id)
        files = self._files(loc)
        if files.gz is not None:
            return self._gz_header(files.gz)[0]
        if files.none:
            entry = self._packed(attempt_id)
            if entry is not None:
                return entry.received
        return files.received()

    # ------------------------------------------------------------------ writing

    def redact(self, attempt_id: str, secrets: Iterable[str]) -> None:
        """Mask these values (a job's secrets) in everything appended to the attempt's log."""
        secrets = [s for s in secrets if s]
        if secrets and attempt_id not in self._redactors:
            self._redactors[attempt_id] = Redactor(secrets)

    def append(self, job_id: str, attempt_id: str, data: bytes, own: bool = False) -> None:
        """Append bytes to an attempt's log and wake its followers. Never blocks for long.
        ``own``: a log no host keeps a copy of (a hook's): on disk from its first byte."""
        redactor = self._redactors.get(attempt_id)
        if redactor is not None:
            data = redactor.feed(data)
        writer = self._open.get(attempt_id)
        before = writer.received if writer is not None else 0
        try:
            if writer is None:
                writer = self._open[attempt_id] = self._writer(job_id, attempt_id, own)
                before = writer.received
            self._put(job_id, attempt_id, writer, data)
        except OSError as exc:  # never raise into the stream: the host keeps the whole log
            self.on_error(exc)
            if writer is not None:  # what was written stays; the rest becomes a gap
                self._drop(writer, len(data) - (writer.received - before))
            else:
                self.lost += len(data)
        self._wake(attempt_id)

    def _put(self, job_id: str, attempt_id: str, w: _Writer, data: bytes) -> None:
        if self.paused():
            self._drop(w, len(data))
        elif w.mem is not None and not w.frozen and len(w.mem) + len(data) <= self._mem_limit:
            w.mem += data
            w.received += len(data)
            self.appended += len(data)
        else:
            if w.mem is not None:  # no longer tiny: to its files
                self._materialize(w)
            self._write(job_id, attempt_id, w, data)

    def _drop(self, w: _Writer, n: int) -> None:
        """Skip ``n`` bytes (a full disk): the next bytes go to a new segment at their host
        offset, and readers see a marker for the gap."""
        w.received += n
        self.lost += n
        if w.mem is not None:
            w.frozen = True  # the gap comes after the bytes in memory (see _materialize)
            return
        w.head = max(w.head, self.head_limit)
        w.seg_size = self.segment  # the next write starts a segment at the new offset

    def _materialize(self, w: _Writer) -> None:
        """A log in memory goes to its head file (it grew past tiny, or lived long enough, or
        the controller stops). On an error it stays in memory, whole."""
        assert w.mem is not None
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        head = w.loc.head
        # O_EXCL: a file made meanwhile is another writer's (a replica that leads now); its
        # bytes are not ours to overwrite (the error stops this one, see _flush_due and append).
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(head, flags, 0o666)
        except FileNotFoundError:  # a new bucket (or retention removed it just now)
            head.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(head, flags, 0o666)
        try:
            if os.write(fd, w.mem) != len(w.mem):
                raise OSError(28, "no space left for the log (a short write)")
        except OSError:
            os.close(fd)
            head.unlink(missing_ok=True)
            raise
        if w.voids is not None:  # its record is the past now: void it (retention may remove the files)
            aid, w.voids = w.voids, None
            try:
                self._packs.append(bucket(aid), aid, VOID, b"")
            except OSError:  # the files win while they are there; only a collect could show it
                pass
        w.head_fh, w.head, w.mem = os.fdopen(fd, "ab", buffering=0), len(w.mem), None
        if w.frozen:  # bytes were dropped after these: the next ones start a segment (_drop)
            w.head = max(w.head, self.head_limit)
            w.seg_size = self.segment

    def _flush_due(self, attempt_id: str, w: _Writer) -> None:
        w.timer = None
        if self._open.get(attempt_id) is w and w.mem is not None:
            self.fence()  # a leader deposed while it hung writes nothing (nor a file that would win)
            try:
                self._materialize(w)
            except FileExistsError:  # another writer's file: ours stays in memory
                pass
            except OSError as exc:  # stays in memory; packed (or written) at its end
                self.on_error(exc)

    def _pack(self, attempt_id: str, w: _Writer) -> None:
        """An ended attempt's tiny log: one record appended to its bucket's pack, with every
        byte it received (a full disk too: a record of a few KiB is what fleet's reserve is for;
        bytes that arrived while the disk was full were dropped then, a gap). If the record
        cannot be written, the log goes to its file; the error goes to the caller if that
        fails too."""
        assert w.mem is not None
        try:
            self._packs.append(bucket(attempt_id), attempt_id, w.received, bytes(w.mem))
        except (OSError, ValueError):
            self._materialize(w)

    def _writer(self, job_id: str, attempt_id: str, own: bool = False) -> _Writer:
        loc = self._loc(job_id, attempt_id)
        try:
            loop: asyncio.AbstractEventLoop | None = None if own else asyncio.get_running_loop()
        except RuntimeError:  # no loop to flush on: files from the first byte
            loop = None
        if loop is not None and not loc.legacy and self._files(loc).none:
            entry = self._packed(attempt_id)  # ended before and followed again: from its record
            w = (_Writer.memory(loc) if entry is None
                 else _Writer.memory(loc, self._read_packed(attempt_id, entry), entry.received))
            w.voids = attempt_id if entry is not None else None
            w.timer = loop.call_later(FLUSH_AFTER, self._flush_due, attempt_id, w)
            return w
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for tries in range(3):
            try:
                fd = os.open(loc.head, flags, 0o666)  # as open() does: the umask decides
                break
            except FileNotFoundError:  # a new bucket (or the root is new; or retention
                if tries == 2:  # removed the empty bucket just now: make it again)
                    raise
                loc.head.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # the attempt has a log already (a restart, a reattach)
                fd = -1
                break
        if fd >= 0:
            if not loc.gz.exists():  # a new attempt: nothing else of it can be on disk
                return _Writer(loc, os.fdopen(fd, "ab", buffering=0), _Files(0, [], None))
            os.close(fd)  # ended before and followed again: its compressed log is the truth
            loc.head.unlink()
        files = self._files(loc)
        if files.gz is not None:  # ended before, followed again: back to plain files
            self._gunzip(loc)
            files = self._files(loc)
        return _Writer(loc, loc.head.open("ab", buffering=0), files)

    def _write(self, job_id: str, attempt_id: str, w: _Writer, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if w.head < self.head_limit:
                n = min(len(view), self.head_limit - w.head)
                assert w.head_fh is not None
                w.head_fh.write(view[:n])
                w.head += n
            else:
                if w.seg_fh is None or w.seg_size >= self.segment:
                    self._new_segment(job_id, attempt_id, w)
                assert w.seg_fh is not None
                n = min(len(view), self.segment - w.seg_size)
                w.seg_fh.write(view[:n])
                w.seg_size += n
            w.received += n
            self.appended += n
            view = view[n:]

    def _new_segment(self, job_id: str, attempt_id: str, w: _Writer) -> None:
        if w.seg_fh is not None:
            w.seg_fh.close()
        new = w.loc.segment(w.received)
        if not w.loc.legacy:
            new.parent.mkdir(exist_ok=True)
        w.seg_fh, w.seg_size = new.open("ab", buffering=0), 0
        w.segments.append((w.received, new))
        while len(w.segments) > 2:  # the tail: the newest one or two segments
            _start, old = w.segments.pop(0)
            old.unlink(missing_ok=True)

    def close(self, attempt_id: str, job_id: str | None = None) -> None:
        """The attempt ended: flush, close, compress its files (not a tiny log: gzip would
        cost more than it saves); release followers."""
        redactor = self._redactors.pop(attempt_id, None)
        tail = redactor.flush() if redactor is not None else b""
        writer = self._open.pop(attempt_id, None)
        if writer is None:
            self._wake(attempt_id)
            return
        if writer.timer is not None:
            writer.timer.cancel()
            writer.timer = None
        try:
            if tail and job_id is not None and not self.paused():
                self._put(job_id, attempt_id, writer, tail)
        except OSError as exc:
            self.on_error(exc)
        if writer.mem is not None and job_id is not None:
            try:  # a tiny log, at its attempt's end: packed
                self._pack(attempt_id, writer)
            except OSError as exc:  # neither a record nor a file: lost here (the host's copy stays)
                self.on_error(exc)
        # At a stop (no job_id: the attempt goes on) a tiny log is let go: nothing of it is on
        # disk, so the next controller resumes at 0 and the host sends it again.
        if writer.head_fh is not None:
            writer.head_fh.close()
            if writer.seg_fh is not None:
                writer.seg_fh.close()
            # A tiny log that is whole (no bytes dropped) stays plain; one with a gap is
            # compressed, its header says where the gap is.
            tiny = writer.received <= TINY and not writer.segments and writer.head == writer.received
            if job_id is not None and not tiny:
                try:
                    self._compress(writer.loc, writer.received)
                except OSError as exc:  # a full disk: the plain files stay, readable as they are
                    self.on_error(exc)
                    writer.loc.gz.with_name(writer.loc.gz.name + ".tmp").unlink(missing_ok=True)
        self._wake(attempt_id)

    def _compress(self, loc: _Loc, received: int) -> None:
        """One gzip file per ended attempt: a header ``fleet-log <received> <head> <tail
        start>``, the head, then the tail (host offsets stay readable, see :meth:`_read_gz`)."""
        files = self._files(loc)
        tmp = loc.gz.with_name(loc.gz.name + ".tmp")
        tail_start = files.segments[0][0] if files.segments else files.head
        with gzip.open(tmp, "wb", compresslevel=5) as out:
            out.write(b"fleet-log %d %d %d\n" % (received, files.head, tail_start))
            for part in [loc.head] + [seg for _start, seg in files.segments]:
                if part.exists():
                    with part.open("rb") as fh:
                        shutil.copyfileobj(fh, out)
        os.replace(tmp, loc.gz)
        loc.head.unlink(missing_ok=True)
        for _start, seg in files.segments:
            seg.unlink(missing_ok=True)
        if files.segments and not loc.legacy:
            _rmdir(loc.tail)

    @staticmethod
    def _gz_header(gz: Path) -> tuple[int, int, int]:
        with gzip.open(gz, "rb") as fh:
            _magic, received, head, tail_start = fh.readline().split()
        return int(received), int(head), int(tail_start)

    def _gunzip(self, loc: _Loc) -> None:
        """Undo a compression (an ended attempt followed again): head and tail files again."""
        received, head, tail_start = self._gz_header(loc.gz)
        with gzip.open(loc.gz, "rb") as fh:
            fh.readline()
            loc.head.write_bytes(fh.read(head))
            if received > head:
                seg = loc.segment(tail_start)
                seg.parent.mkdir(exist_ok=True)
                seg.write_bytes(fh.read())
        loc.gz.unlink()

    # ------------------------------------------------------------------ reading

    def read(self, job_id: str, attempt_id: str, offset: int, limit: int = MiB) -> tuple[bytes, int]:
        """Bytes from ``offset`` (host-log offsets) and the offset after them. A reader that
        reaches bytes dropped by the cap gets a marker line instead, and then the tail."""
        writer = self._open.get(attempt_id)
        if writer is not None and writer.mem is not None:
            return self._read_mem(writer.mem, writer.received, offset, limit)
        loc = self._loc(job_id, attempt_id)
        files = self._files(loc)
        if files.gz is not None and writer is None:
            return self._read_gz(files.gz, offset, limit)
        if writer is None and files.none:
            entry = self._packed(attempt_id)
            if entry is not None:
                return self._read_mem(self._read_packed(attempt_id, entry), entry.received, offset, limit)
        return self._read_plain(loc, offset, limit, files)

    def _read_mem(self, data: bytes | bytearray, received: int, offset: int, limit: int) -> tuple[bytes, int]:
        """A tiny log (in memory, or its record): its bytes, then a marker for any it dropped."""
        if offset < len(data):
            chunk = bytes(data[offset:offset + limit])
            return chunk, offset + len(chunk)
        if offset < received:
            return self._marker(received - offset), received
        return b"", offset

    def _read_plain(self, loc: _Loc, offset: int, limit: int, files: _Files | None = None) -> tuple[bytes, int]:
        files = files or self._files(loc)
        if offset < files.head:
            with loc.head.open("rb") as fh:
                fh.seek(offset)
                data = fh.read(min(limit, files.head - offset))
            return data, offset + len(data)
        if not files.segments:
            return b"", offset
        first = files.segments[0][0]
        if offset < first:
            return self._marker(first - offset), first
        for start, seg in reversed(files.segments):
            if offset >= start:
                try:
                    with seg.open("rb") as fh:
                        fh.seek(offset - start)
                        data = fh.read(limit)
                except FileNotFoundError:  # rotated away meanwhile: read again
                    return self._read_plain(loc, offset, limit)
                if data:
                    return data, offset + len(data)
        return b"", offset

    def _read_gz(self, gz: Path, offset: int, limit: int) -> tuple[bytes, int]:
        """An ended attempt's log, with the same host offsets as before it was compressed."""
        with gzip.open(gz, "rb") as fh:
            fields = fh.readline().split()
            received, head, tail_start = (int(x) for x in fields[1:4])
            stored = fh.read()  # head + tail: bounded by the cap
        if offset < head:
            data = stored[offset:min(head, offset + limit)]
        elif offset < tail_start:
            return self._marker(tail_start - offset), tail_start
        else:
            pos = head + (offset - tail_start)
            data = stored[pos:pos + limit]
            if not data and offset < received:  # bytes the controller never got (a full disk)
                return self._marker(received - offset), received
        return data, offset + len(data)

    def _marker(self, dropped: int) -> bytes:
        return (b"\n[fleet: %d bytes dropped here: the log cap keeps %d bytes of head and tail "
                b"(or the controller's disk was full)]\n" % (dropped, self.cap))

    def exists(self, job_id: str, attempt_id: str) -> bool:
        if attempt_id in self._open:
            return True
        loc = self._loc(job_id, attempt_id)
        files = self._files(loc)
        return not files.none or self._packed(attempt_id) is not None

    # ------------------------------------------------------------------ followers

    def _wake(self, attempt_id: str) -> None:
        event = self._waiters.pop(attempt_id, None)
        if event is not None:
            event.set()

    async def wait(self, attempt_id: str, timeout: float) -> None:
        """Wait until the attempt's log grows or ends, or ``timeout`` passes."""
        event = self._waiters.setdefault(attempt_id, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it may swallow a cancel (3.11)
                await event.wait()
        except TimeoutError:
            pass

    def close_all(self) -> None:
        # Shutdown: attempts go on without us. Bytes held back for redaction are not written;
        # the next controller reads them again from the host (it resumes at the log's size).
        # Tiny logs in memory are let go the same way (and not written: this process may no
        # longer lead, and the next leader's record of the log must not be shadowed by a file).
        self._redactors.clear()
        for attempt_id in list(self._open):
            self.close(attempt_id)

    # ------------------------------------------------------------------ retention

    def collect(self, max_age: float | None, max_bytes: int | None) -> tuple[int, int]:
        """Remove logs of ended attempts: older than ``max_age`` seconds, then the oldest until
        the store holds at most ``max_bytes``. Logs being written are never touched; a bucket's
        pack of tiny logs goes as a whole (its time is its newest record's). Returns (attempts
        removed, bytes freed)."""
        open_names = {f"{a}.log" for a in self._open}
        groups: dict[tuple[str, str], list[os.DirEntry[str]]] = {}
        try:
            dirs = [e for e in os.scandir(self.root) if e.is_dir()]  # buckets (and old job dirs)
        except FileNotFoundError:
            return 0, 0
        for top in dirs:
            for entry in os.scandir(top.path):
                if entry.name.endswith(".tail") and entry.is_dir():  # an attempt's tail segments
                    base = entry.name[:-len(".tail")] + ".log"
                    try:
                        found = list(os.scandir(entry.path))
                    except FileNotFoundError:  # compressed meanwhile (its attempt ended)
                        found = []
                    if not found and base not in open_names:
                        _rmdir(Path(entry.path))  # left empty by a crash between two unlinks
                elif entry.name == PACK:
                    base, found = PACK, [entry]
                else:
                    base, found = entry.name.split(".log", 1)[0] + ".log", [entry]
                if base not in open_names:
                    groups.setdefault((top.path, base), []).extend(found)
        items = []
        for key, entries in groups.items():
            stats = []
            for e in entries:
                try:
                    stats.append(e.stat())
                except FileNotFoundError:  # removed meanwhile (a segment rotated away)
                    pass
            if stats:
                items.append((max(s.st_mtime for s in stats), sum(s.st_size for s in stats), key, entries))
        items.sort()  # oldest first
        total = sum(size for _m, size, _k, _e in items)
        now, removed, freed = time.time(), 0, 0
        for mtime, size, (top_path, base), entries in items:
            old = max_age is not None and now - mtime > max_age
            over = max_bytes is not None and total > max_bytes
            if not (old or over):
                continue
            if base == PACK:
                removed += self._packs.remove(Path(top_path).name)
            else:
                for entry in entries:
                    Path(entry.path).unlink(missing_ok=True)
                _rmdir(Path(top_path, base[:-len(".log")] + ".tail"))
                removed += 1
            total -= size
            freed += size
        for top in dirs:
            _rmdir(Path(top.path))  # only if empty
        return removed, freed

    def total_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
        return total


def _rmdir(path: Path) -> None:
    """Remove a directory if it is empty (and exists)."""
    try:
        os.rmdir(path)
    except OSError:
        pass
