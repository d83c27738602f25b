"""Packs of tiny logs (fleet.logstore): a bucket's ended attempts' small logs, one record each
appended to ``<bucket>/tiny.pack``, so that an attempt costs the controller no file of its own.

A record is a NUL byte, ``fleet-tiny <attempt> <received> <length> <crc32>`` and a newline,
then the bytes (``received`` > ``length``: bytes after them were dropped, a gap; ``received`` =
-1 voids the attempt's earlier record). A reader takes an attempt's last whole record, waits for
one still being written (never looks inside it: a job's log cannot pass for another's record)
and skips a damaged one. One writer at a time (the leader, fenced); readers anywhere.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import NamedTuple

PACK = "tiny.pack"
MAGIC = b"\0fleet-tiny "
HEADER_MAX = 200  # bytes of a record's header line, at most
VOID = -1  # a record's "received" that voids the attempt's earlier record
HOT = 4  # buckets whose index is kept besides the two newest (others are read again)
SCAN_CHUNK = 1 << 20  # bytes a pack is read in


class Record(NamedTuple):
    received: int  # bytes of the host's log the record stands for
    offset: int  # where its bytes are in the pack
    length: int


class _Index:
    """Where each attempt's last whole record is in one bucket's pack: (received, offset of its
    bytes, length), read from the file up to ``scanned`` (a record still being written is read
    on a later look)."""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.scanned = 0
        self.entries: dict[str, Record] = {}
        self.signature: bytes | None = None  # the first record's header: which file this is

    def scan(self, path: Path) -> bool:
        """Read what was appended since the last scan. False if the file is not the one this
        index was made from (removed and made again on a reused inode): start a new index."""
        with path.open("rb") as fh:
            first = fh.read(HEADER_MAX)
            if self.signature is None:
                self.signature = first[:first.find(b"\n") + 1] if b"\n" in first else None
            elif not first.startswith(self.signature):
                return False
            fh.seek(self.scanned)
            buf = b""
            while True:
                more = fh.read(SCAN_CHUNK)
                if not more:
                    return True
                buf += more
                pos = self._parse(buf)
                self.scanned += pos
                buf = buf[pos:]

    def _parse(self, buf: bytes) -> int:
        """Index the whole records in ``buf`` (read from ``scanned``); returns the bytes used."""
        pos = 0
        while pos < len(buf):
            at = buf.find(MAGIC, pos)
            if at < 0:
                return len(buf) - len(MAGIC) if len(buf) - pos > len(MAGIC) else pos
            end = buf.find(b"\n", at, at + HEADER_MAX)
            if end < 0:
                if len(buf) - at < HEADER_MAX:
                    return at  # a header still being read or written
                pos = at + 1  # no header fits there: damaged
                continue
            try:
                name, received_s, length, crc = buf[at + len(MAGIC):end].split(b" ")
                received, n, sum32 = int(received_s), int(length), int(crc, 16)
            except ValueError:
                pos = at + 1  # a damaged header: look for the next record
                continue
            if n < 0 or (received < n and received != VOID):
                pos = at + 1
                continue
            start = end + 1
            if start + n > len(buf):
                return at  # still being written (or read): never looked inside, waited for
            if zlib.crc32(buf[start:start + n]) != sum32:
                pos = at + 1  # damaged (a crash of the machine mid-write)
                continue
            if received == VOID:
                self.entries.pop(name.decode(), None)
            else:
                self.entries[name.decode()] = Record(received, self.scanned + start, n)
            pos = start + n
        return pos


class Packs:
    """The packs under a log store's root, by bucket, with an index of the most recently used
    (the two newest buckets always: where this controller's attempts end)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, _Index] = {}  # bucket -> index, the most recently used last

    def path(self, bucket: str) -> Path:
        return self.root / bucket / PACK

    def find(self, bucket: str, attempt_id: str) -> Record | None:
        """The attempt's last record in its bucket's pack, or None."""
        path = self.path(bucket)
        index = self._index.pop(bucket, None)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if index is None or index.ino != st.st_ino or st.st_size < index.scanned:
            index = _Index(st.st_ino)  # new, or the pack was removed and made again
        try:
            if st.st_size > index.scanned and not index.scan(path):
                index = _Index(st.st_ino)  # another file on the same inode
                index.scan(path)
        except OSError:  # not readable (not a file): no record can be there
            return None
        self._index[bucket] = index  # the most recently used last
        if len(self._index) > HOT + 2:
            # The least recently used goes, never one of the two newest buckets (readers of old
            # logs must not make the controller read those again for every new attempt).
            newest = sorted(self._index)[-2:]
            del self._index[next(b for b in self._index if b not in newest)]
        return index.entries.get(attempt_id)

    def read(self, bucket: str, record: Record) -> bytes:
        with self.path(bucket).open("rb") as fh:
            fh.seek(record.offset)
            return fh.read(record.length)

    def append(self, bucket: str, attempt_id: str, received: int, data: bytes) -> None:
        """Append one record; one cut short (a full disk) is cut off again, if nothing came
        after it, and raises OSError."""
        if any(c in attempt_id for c in " \n\0") or not attempt_id:
            raise ValueError(f"not an attempt id for a pack record: {attempt_id!r}")
        record = (MAGIC + b"%s %d %d %08x\n" % (attempt_id.encode(), received, len(data), zlib.crc32(data))
                  + data)
        path = self.path(bucket)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o666)
        try:
            st = os.fstat(fd)
            written = os.write(fd, record)
            if written != len(record):
                try:
                    if os.fstat(fd).st_size == st.st_size + written:
                        os.ftruncate(fd, st.st_size)
                except OSError:
                    pass
                raise OSError(28, "no space left for the log (a short write)")
        finally:
            os.close(fd)
        index = self._index.get(bucket)
        if index is not None and index.ino == st.st_ino and index.scanned == st.st_size:
            if received == VOID:
                index.entries.pop(attempt_id, None)
            else:
                index.entries[attempt_id] = Record(received, st.st_size + len(record) - len(data), len(data))
            index.scanned += len(record)

    def remove(self, bucket: str) -> int:
        """Remove a bucket's pack; returns how many attempts had a record in it."""
        path = self.path(bucket)
        self._index.pop(bucket, None)
        try:
            index = _Index(path.stat().st_ino)
            index.scan(path)
        except FileNotFoundError:
            return 0
        path.unlink(missing_ok=True)
        return len(index.entries)
