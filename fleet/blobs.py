"""Content-addressed store of job inputs and artifacts on the controller:
``<dir>/<sha[:2]>/<sha>``.

A name is always a sha256 that fleet checked (64 lowercase hex digits): a path taken from a
host or a request never becomes a path here (DESIGN.md §7).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from fleet.models.spec import SHA256_RE


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha: str) -> Path:
        """Where the content with this sha256 lives. Raises ValueError for anything that is not
        a sha256."""
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise ValueError(f"not a sha256: {str(sha)[:80]!r}")
        return self.root / sha[:2] / sha

    def has(self, sha: str) -> bool:
        try:
            return self.path(sha).is_file()
        except ValueError:
            return False

    def temp(self) -> Path:
        """A new temporary file name inside the store (same file system: a rename adds it)."""
        tmp = self.root / ".incoming"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{os.getpid()}.{uuid.uuid4().hex}"

    def stale_temp_files(self) -> list[Path]:
        """Temporary files of copies and uploads (finished or not): ``.incoming/*`` and the
        ``.<sha>.*`` files older servers wrote beside the blobs."""
        found = list((self.root / ".incoming").glob("*")) if (self.root / ".incoming").is_dir() else []
        if self.root.is_dir():
            for sub in self.root.iterdir():
                if sub.is_dir() and len(sub.name) == 2:
                    found.extend(sub.glob(".*"))
        return found

    def add(self, tmp: Path, expect: str | None = None) -> tuple[str, int]:
        """Move a finished temporary file into the store under the hash of its content (read
        back and hashed here, whatever anyone said it was). With ``expect``, only if the
        content hashes to it (else the file stays where it is). Returns (sha256, size)."""
        digest, size = hashlib.sha256(), 0
        with tmp.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        sha = digest.hexdigest()
        if expect is not None and sha != expect:
            return sha, size
        dest = self.path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        return sha, size


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """sha256 and size of a file, read in 1 MiB blocks (what an upload or a blob is named by)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
