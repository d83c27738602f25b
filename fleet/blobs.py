"""Content-addressed store of job inputs on the controller: ``<dir>/<sha[:2]>/<sha>``."""

from __future__ import annotations

from pathlib import Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()
