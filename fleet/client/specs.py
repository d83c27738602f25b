"""Spec files as clients send them: read and checked locally first (fail fast, before any
upload), then local input paths and hook playbook files uploaded and replaced by blob refs.

The walk over a spec is written once (``_uploads``, a generator that asks for each file to be
uploaded and is told its sha256 and size); ``upload_inputs`` drives it with a sync upload,
``aupload_inputs`` with an async one.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import SpecError
from fleet.models.spec import HOOK_NAME_RE, InputRef, parse_yaml, validate_spec

if TYPE_CHECKING:
    from fleet.client.aio import AsyncClient
    from fleet.client.sync import Client

Uploaded = tuple[str, int]  # sha256, size
_Walk = Generator[Path, Uploaded, None]


def _file_ref(path: Path, sha: str, size: int) -> dict[str, Any]:
    files: dict[str, Any] = {path.name: {"sha256": sha, "size": size}}
    return InputRef(kind="file", filename=path.name, files=files).model_dump()


def _local(base: Path, value: str) -> Path:
    return (base / value).expanduser() if not os.path.isabs(value) else Path(value)


def _inputs(data: dict[str, Any], base: Path) -> _Walk:
    """Local input paths (files and directories) become uploaded blob refs."""
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        return
    for name, value in list(inputs.items()):
        if not isinstance(value, str):
            continue
        path = _local(base, value)
        if not path.exists():
            raise SpecError([(f"inputs.{name}", f"{value}: no such file or directory (looked in {path})")])
        if path.is_file():
            sha, size = yield path
            inputs[name] = _file_ref(path, sha, size)
            continue
        files: dict[str, Any] = {}
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            sha, size = yield f
            files[f.relative_to(path).as_posix()] = {"sha256": sha, "size": size}
        if not files:
            raise SpecError([(f"inputs.{name}", f"{value}: directory is empty")])
        inputs[name] = InputRef(kind="dir", filename=path.name, files=files).model_dump()


def _hooks(data: dict[str, Any], base: Path) -> _Walk:
    """Hook playbook paths become uploaded blob refs (admins only: the server refuses a
    playbook from anyone else). A bare name is a hook of the server's catalog: left as is."""
    hooks = data.get("hooks")
    if not isinstance(hooks, dict):
        return
    for which, value in list(hooks.items()):
        if not isinstance(value, str) or HOOK_NAME_RE.match(value.strip()):
            continue
        path = _local(base, value)
        if not path.is_file():
            raise SpecError([(f"hooks.{which}", f"{value}: no such playbook file (looked in {path})")])
        sha, size = yield path
        hooks[which] = _file_ref(path, sha, size)


def _uploads(data: dict[str, Any], base: Path) -> _Walk:
    """Every file the spec (and each of its steps) names, asked for in turn."""
    for part in [data, *[s for s in data.get("steps") or [] if isinstance(s, dict)]]:
        yield from _inputs(part, base)
        yield from _hooks(part, base)


def upload_inputs(upload: Callable[[Path], Uploaded], data: dict[str, Any], base: Path) -> None:
    walk = _uploads(data, base)
    try:
        path = next(walk)
        while True:
            path = walk.send(upload(path))
    except StopIteration:
        pass


async def aupload_inputs(upload: Callable[[Path], Awaitable[Uploaded]], data: dict[str, Any],
                         base: Path) -> None:
    walk = _uploads(data, base)
    try:
        path = next(walk)
        while True:
            path = walk.send(await upload(path))
    except StopIteration:
        pass


def _read_text(file: Path, kind: str) -> str:
    """A spec or matrix file's text; SpecError naming the file when it cannot be read."""
    if not file.is_file():
        what = f"is a directory, not a {kind} file" if file.is_dir() else "no such file"
        raise SpecError([("", what)], str(file))
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([("", f"cannot read the file: {exc}")], str(file)) from None


def read_spec(file: Path) -> dict[str, Any]:
    """Read and check a spec file locally; raises SpecError naming the file and the field."""
    text = _read_text(file, "spec")
    if not text.strip():
        raise SpecError([("", "the file is empty: a spec needs at least name and run (or runner)")], str(file))
    data = parse_yaml(text, str(file))
    try:
        validate_spec(data, str(file))
    except SpecError as exc:
        raise SpecError(exc.errors, str(file)) from None
    return dict(data)


def load_spec_file(client: Client | None, file: Path) -> dict[str, Any]:
    """Read and check a spec file locally (fail fast, before any upload), then upload inputs."""
    data = read_spec(file)
    if client is not None:
        upload_inputs(client.upload, data, file.parent)
    return data


async def aload_spec_file(client: AsyncClient, file: Path) -> dict[str, Any]:
    data = read_spec(file)
    await aupload_inputs(client.upload, data, file.parent)
    return data


def prepare(client: Client, spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """A spec given as data (the Ansible module's ``spec:``), checked and its inputs uploaded."""
    data = dict(spec)
    validate_spec(data, "spec")
    upload_inputs(client.upload, data, base)
    return data


def submit(client: Client, spec: dict[str, Any]) -> list[Any]:
    """Submit one prepared spec: its jobs (one, or one per step of a chain)."""
    if spec.get("steps"):
        return list(client.submit_many([spec]))
    return [client.submit(spec)]


def read_matrix(file: Path) -> tuple[dict[str, Any], Any]:
    """Read and check a matrix file locally: (its data, the checked MatrixSpec)."""
    from fleet.models.matrix import validate_matrix

    data = parse_yaml(_read_text(file, "matrix"), str(file))
    return data, validate_matrix(data, str(file))


def matrix_uploads(upload: Callable[[Path], Uploaded], spec: Any, base: Path) -> dict[str, Any]:
    """Upload every local input a matrix's points name (each path once): {path as written
    after ${{ matrix.* }} was replaced: its blob ref}."""
    from fleet.models.matrix import expand, point_specs

    uploads: dict[str, Any] = {}
    cache: dict[Path, Uploaded] = {}

    def once(path: Path) -> Uploaded:
        if path not in cache:
            cache[path] = upload(path)
        return cache[path]

    for i, point in enumerate(expand(spec)):
        for body, _ in point_specs(spec, point, i)[:1]:
            for part in [body, *[s for s in body.get("steps") or [] if isinstance(s, dict)]]:
                before = dict(part.get("inputs") or {}) if isinstance(part.get("inputs"), dict) else {}
                if not before:
                    continue
                probe = {"inputs": dict(before)}
                try:
                    upload_inputs(once, probe, base)
                except SpecError as exc:
                    raise SpecError([(f"points[{i}].{f}", m) for f, m in exc.errors]) from None
                for name, value in before.items():
                    if isinstance(value, str):
                        uploads[value] = probe["inputs"][name]
    return uploads
