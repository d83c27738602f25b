"""Secrets a job is given (``envs: {NAME: {secret: ...}}``; DESIGN.md §7).

They never rest in clear on the controller: the API seals them (Fernet: AES-128-CBC with an
HMAC) before the spec reaches the database, the scheduler opens them only to build the attempt's
environment, and the log store masks them in what it keeps. The key lives in
``$FLEET_HOME/secret.key`` (or the ``shared_dir`` replicas share), created on first use, mode 0600.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from fleet.errors import FleetError
from fleet.models.spec import JobSpec, SecretValue

PREFIX = "fleet-sealed:v1:"


class SecretError(FleetError):
    """A sealed secret cannot be opened (the key changed or the value was damaged)."""


class SecretBox:
    """Seals and opens secret values with the controller's key (read or made on first use)."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()

    def _key(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                self._fernet = Fernet(read_or_create_key(self.key_file))
            return self._fernet

    def seal(self, value: str) -> str:
        return PREFIX + self._key().encrypt(value.encode()).decode()

    def open(self, value: str) -> str:
        """The clear text of a sealed value. A value without the prefix was stored by a fleet
        that did not seal secrets yet and is returned as it is."""
        if not value.startswith(PREFIX):
            return value
        try:
            return self._key().decrypt(value[len(PREFIX):].encode()).decode()
        except (InvalidToken, ValueError):
            raise SecretError(
                f"a secret of this job cannot be decrypted with the key in {self.key_file} "
                "(was the key replaced, or do replicas use different keys?)"
            ) from None

    def seal_spec(self, spec: JobSpec) -> JobSpec:
        """A copy of ``spec`` whose secret env values are sealed (other values unchanged)."""
        if not any(isinstance(v, SecretValue) for v in spec.envs.values()):
            return spec
        envs = {k: SecretValue(value=self.seal(v.value)) if isinstance(v, SecretValue) else v
                for k, v in spec.envs.items()}
        return spec.model_copy(update={"envs": envs})

    def open_envs(self, spec: JobSpec) -> tuple[dict[str, str], list[str]]:
        """(environment in clear, the secret values among it) of a spec sealed by seal_spec."""
        env: dict[str, str] = {}
        secrets: list[str] = []
        for key, value in spec.envs.items():
            if isinstance(value, SecretValue):
                env[key] = self.open(value.value)
                secrets.append(env[key])
            else:
                env[key] = value
        return env, secrets


def read_or_create_key(path: Path) -> bytes:
    """The key in ``path``, made (0600, once, whichever process is first) if it is missing."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(Fernet.generate_key() + b"\n")
    try:
        os.link(tmp, path)  # fails if another process made the key first: use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes().strip()


class Redactor:
    """Masks secret values in a byte stream that arrives in chunks.

    Every byte that is part of an occurrence of a secret becomes ``*`` (overlapping secrets
    included). A secret may be split across two chunks, so the longest end of what arrived
    that could still grow into a secret is held back until the next chunk (or ``flush``). The
    mask keeps the length: the controller's log then stays as long as the host's, which is
    where a restarted controller resumes reading.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self.held = b""
        self.held_spans: list[tuple[int, int]] = []  # masked ranges within ``held``

    def feed(self, data: bytes) -> bytes:
        if not self.secrets:
            return data
        buf = self.held + data
        spans = list(self.held_spans)
        for secret in self.secrets:
            i = buf.find(secret)
            while i != -1:
                spans.append((i, i + len(secret)))
                i = buf.find(secret, i + 1)
        keep = 0
        for secret in self.secrets:
            for n in range(min(len(secret) - 1, len(buf)), keep, -1):
                if buf.endswith(secret[:n]):
                    keep = n
                    break
        cut = len(buf) - keep
        out = bytearray(buf[:cut])
        self.held, self.held_spans = buf[cut:], []
        for a, b in spans:
            if a < cut:
                out[a:min(b, cut)] = b"*" * (min(b, cut) - a)
            if b > cut:
                self.held_spans.append((max(a, cut) - cut, b - cut))
        return bytes(out)

    def flush(self) -> bytes:
        """What is held back, masked where a secret covers it (the stream ended)."""
        out = bytearray(self.held)
        for a, b in self.held_spans:
            out[a:b] = b"*" * (b - a)
        self.held, self.held_spans = b"", []
        return bytes(out)


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of a secret replaced by ``*`` of its length."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "*" * len(secret))
    return text


def mask_value(value: object, secrets: list[str]) -> object:
    """A JSON-like value (a result record) with secrets masked in every string, keys too."""
    if not secrets:
        return value
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, dict):
        return {mask_text(k, secrets) if isinstance(k, str) else k: mask_value(v, secrets)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v, secrets) for v in value]
    return value


def redact_file(src: Path, dst: Path, secrets: list[str]) -> None:
    """Copy ``src`` to ``dst`` with every secret masked (streamed; the length is kept)."""
    redactor = Redactor(secrets)
    with src.open("rb") as fin, dst.open("wb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            fout.write(redactor.feed(block))
        fout.write(redactor.flush())
