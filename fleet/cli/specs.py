"""Spec files as the CLI sends them: read and checked locally first (fail fast, before any
upload), then local input paths and hook playbook files uploaded and replaced by blob refs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fleet.api.client import Client
from fleet.errors import SpecError
from fleet.models.spec import HOOK_NAME_RE, InputRef, parse_yaml, validate_spec


def _upload_inputs(client: Client, data: dict[str, Any], base: Path) -> None:
    """Replace local input paths in a spec with uploaded blob refs (files and directories)."""
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        return
    for name, value in list(inputs.items()):
        if not isinstance(value, str):
            continue
        path = (base / value).expanduser() if not os.path.isabs(value) else Path(value)
        if not path.exists():
            raise SpecError([(f"inputs.{name}", f"{value}: no such file or directory (looked in {path})")])
        if path.is_file():
            sha, size = client.upload(path)
            ref = InputRef(kind="file", filename=path.name, files={path.name: {"sha256": sha, "size": size}})  # type: ignore[dict-item]
        else:
            files: dict[str, Any] = {}
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                sha, size = client.upload(f)
                files[f.relative_to(path).as_posix()] = {"sha256": sha, "size": size}
            if not files:
                raise SpecError([(f"inputs.{name}", f"{value}: directory is empty")])
            ref = InputRef(kind="dir", filename=path.name, files=files)
        inputs[name] = ref.model_dump()


def _upload_hooks(client: Client, data: dict[str, Any], base: Path) -> None:
    """Replace hook playbook paths with uploaded blob refs (admins only: the server refuses a
    playbook from anyone else). A bare name is a hook of the server's catalog: left as is."""
    hooks = data.get("hooks")
    if not isinstance(hooks, dict):
        return
    for which, value in list(hooks.items()):
        if not isinstance(value, str) or HOOK_NAME_RE.match(value.strip()):
            continue
        path = (base / value).expanduser() if not os.path.isabs(value) else Path(value)
        if not path.is_file():
            raise SpecError([(f"hooks.{which}", f"{value}: no such playbook file (looked in {path})")])
        sha, size = client.upload(path)
        hooks[which] = InputRef(kind="file", filename=path.name,
                                files={path.name: {"sha256": sha, "size": size}}).model_dump()  # type: ignore[dict-item]


def load_spec_file(client: Client | None, file: Path) -> dict[str, Any]:
    """Read and check a spec file locally (fail fast, before any upload), then upload inputs."""
    if not file.is_file():
        what = "is a directory, not a spec file" if file.is_dir() else "no such file"
        raise SpecError([("", what)], str(file))
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([("", f"cannot read the file: {exc}")], str(file)) from None
    if not text.strip():
        raise SpecError([("", "the file is empty: a spec needs at least name and run (or runner)")], str(file))
    data = parse_yaml(text, str(file))
    try:
        validate_spec(data, str(file))
    except SpecError as exc:
        raise SpecError(exc.errors, str(file)) from None
    if client is not None:
        _upload_inputs(client, data, file.parent)
        _upload_hooks(client, data, file.parent)
        for step in data.get("steps") or []:
            if isinstance(step, dict):
                _upload_inputs(client, step, file.parent)
                _upload_hooks(client, step, file.parent)
    return dict(data)
