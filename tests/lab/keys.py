"""SSH key files of the lab: generated once, persisted, reloaded on restart."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh


def load_or_create_key(path: Path, comment: str) -> asyncssh.SSHKey:
    """Return the ed25519 private key at ``path``, generating it first if the file is absent.

    The private key is written in OpenSSH format with mode 0600 (sshd and ssh refuse anything
    looser) and the public key beside it as ``<path>.pub``. Reloading keeps a host's identity
    across restarts of the host or of the whole lab.
    """
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    _write_private(path, key.export_private_key("openssh"))
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))
    return key


def public_key_text(key: asyncssh.SSHKey) -> str:
    """The public key as ``ssh-ed25519 AAAA...``, without a comment."""
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{algorithm} {blob}"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
