"""Images a lab host lacks, shipped from the controller: the controller's engine saves the
image and the stream goes over the SSH connection fleet already holds into the host's engine
(``save | load``), with no registry anywhere. Used for a container job whose image is not on
its host when the controller has it (DESIGN.md §5.8; ``fleet.containers`` runs the job).

Progress is the job's log: a line when shipping starts, at each quarter and at the end, the
same bytes the host's log starts with (the setup phase prints them there), so a log read from
the host after a controller restart lines up with what the controller already holds."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fleet import images

CHUNK = 1 << 20


class ShipError(Exception):
    """The controller could not save the image (its engine failed)."""


@dataclass(frozen=True)
class LocalImage:
    """An image in the controller's own engine."""

    ref: str
    engine: str
    size: int  # bytes, as the engine reports the image (the archive is about as large)
    labelled: bool = False  # carries dev.fleet.runner (an image built FROM a runner image does too)

    def may_ship(self, patterns: list[str]) -> bool:
        """The controller ships fleet's runner images (by their name, ``fleet-runner-NAME``, and
        label) and what the operator names (``ship_images``), nothing else of its engine: a user
        names the image, and the controller's other images are not theirs to take."""
        return (self.labelled and runner_name(self.ref)) or any(fnmatch.fnmatchcase(self.ref, p) for p in patterns)

    @property
    def save(self) -> list[str]:
        return [self.engine, "save", self.ref]


def runner_name(ref: str) -> bool:
    """Whether ``ref`` names one of fleet's runner images (``[localhost/]fleet-runner-NAME:TAG``)."""
    repo = ref.split("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    repo = repo.removeprefix("localhost/")
    return repo in {f"fleet-runner-{name}" for name in images.IMAGES}


def controller_engine() -> str | None:
    return shutil.which("podman") or shutil.which("docker")


async def on_controller(ref: str) -> LocalImage | None:
    """``ref`` in the controller's engine, or None (no engine here, or no such image)."""
    engine = controller_engine()
    if engine is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        engine, "image", "inspect", "--format", "{{.Size}} {{json .Labels}}", ref,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return None
    size_text, _, labels_text = out.decode().strip().partition(" ")
    try:
        size = int(size_text)
    except ValueError:
        size = 0
    try:
        labels = json.loads(labels_text or "null") or {}
    except ValueError:
        labels = {}
    return LocalImage(ref, engine, size, labelled=isinstance(labels, dict) and "dev.fleet.runner" in labels)


async def save_stream(image: LocalImage, progress: Callable[[int], None]) -> AsyncIterator[bytes]:
    """The image's archive in chunks, from the controller's engine; ``progress(bytes so far)``
    after each. Raises ShipError at the end if the engine failed (the host then loads a short
    archive and fails too)."""
    proc = await asyncio.create_subprocess_exec(
        *image.save, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    sent = 0
    try:
        while chunk := await proc.stdout.read(CHUNK):
            sent += len(chunk)
            progress(sent)
            yield chunk
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise ShipError(f"{image.engine} save {image.ref} failed: "
                            f"{err.decode(errors='replace').strip()[-300:] or proc.returncode}")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Progress:
    """The lines a shipping writes to the job's log (and keeps, for the host's copy)."""

    def __init__(self, image: LocalImage, host: str, emit: Callable[[bytes], None]) -> None:
        self.image, self.host, self.emit = image, host, emit
        self.lines: list[bytes] = []
        self.began = time.monotonic()
        self.quarter = 0
        self.sent = 0
        self.note(f"image {image.ref} is not on host {host}: shipping it from the controller "
                  f"({mib(image.size)})")

    def note(self, text: str) -> None:
        line = f"fleet: {text}\n".encode()
        self.lines.append(line)
        self.emit(line)

    def __call__(self, sent: int) -> None:
        self.sent = sent
        if self.image.size <= 0:
            return
        quarter = min(3, sent * 4 // self.image.size)
        if quarter > self.quarter:
            self.quarter = quarter
            self.note(f"shipping image {self.image.ref}: {quarter * 25}% ({mib(sent)})")

    def done(self) -> bytes:
        sent, took = self.sent, time.monotonic() - self.began
        rate = sent / took / (1 << 20) if took > 0 else 0.0
        self.note(f"image {self.image.ref} loaded on host {self.host}: {mib(sent)} in {took:.1f} s "
                  f"({rate:.0f} MiB/s)")
        return b"".join(self.lines)


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
