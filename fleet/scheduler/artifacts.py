"""Outputs of an ended attempt become artifacts: files copied from the host into the
controller's content-addressed blob store (once per content), with a row that says which job,
host class and tool made them and the key that makes two of them interchangeable."""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import time
from typing import Any

from fleet.backends.base import AttemptPlan, Backend, Outcome, OutputUnreadable
from fleet.blobs import BlobStore, file_digest
from fleet.ids import new_id
from fleet.models.spec import BlobRef, InputRef
from fleet.secrets import redact_file


async def collect(backend: Backend, blobs: BlobStore, plan: AttemptPlan, outcome: Outcome,
                  secrets: list[str] | None = None) -> list[dict[str, Any]]:
    """Copy the attempt's outputs into the blob store; returns them as ``{path, sha256, size}``.

    Nothing the host said is taken on trust (DESIGN.md §7): the frame's fields were checked
    (fleet.backends.frames), every file is copied to a temporary file and hashed here, and it
    enters the store under that hash only if it is what the host reported. Content already in
    the store is not copied again: only the hash the host reported names it, and that content
    was hashed here when it came. With ``secrets``, every file is copied and stored with
    them masked (a job's ``outputs: [log]`` must not keep them in clear), under the hash of
    what is stored. Raises BackendError (HostLost if the host went away) when a
    file cannot be copied or is not what the host said."""
    files = []
    for out in outcome.outputs:
        path, sha, size = str(out["path"]), str(out["sha256"]), int(out["size"])
        if secrets or not blobs.has(sha):
            tmp, masked = blobs.temp(), blobs.temp()
            try:
                await backend.fetch(plan, path, tmp, size)
                if secrets:
                    got, got_size = await asyncio.to_thread(file_digest, tmp)
                    if got == sha and got_size == size:
                        await asyncio.to_thread(redact_file, tmp, masked, secrets)
                        sha, size = await asyncio.to_thread(blobs.add, masked)
                else:
                    got, got_size = await asyncio.to_thread(blobs.add, tmp, sha)
            finally:
                tmp.unlink(missing_ok=True)
                masked.unlink(missing_ok=True)
            if got != str(out["sha256"]) or got_size != int(out["size"]):
                raise OutputUnreadable(f"host {plan.host.name}: output {path} is not what its agent "
                                   f"reported (sha256 {got[:12]}, {got_size} bytes; reported "
                                   f"{str(out['sha256'])[:12]}, {out['size']} bytes)")
        files.append({"path": path, "sha256": sha, "size": size})
    return files


def key_of(basis: dict[str, Any] | None) -> str | None:
    """The artifact key: a hash of what must match for two artifacts to be interchangeable."""
    if not basis:
        return None
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:24]


def rows(files: list[dict[str, Any]], record: dict[str, Any] | None, *, job_id: str, attempt_id: str,
         user: str, host: str, device_class: str) -> list[dict[str, Any]]:
    """Artifact rows for collected files. The runner's declared artifact (``artifact.path`` in
    its result) gets its kind, tool and key; other outputs are plain files."""
    declared = (record or {}).get("artifact") or {}
    tool = (record or {}).get("tool") or {}
    out = []
    for f in files:
        main = declared.get("path") == f["path"]
        basis = declared.get("key") if main else None
        out.append(dict(
            id=new_id("f"), name=posixpath.basename(f["path"]) if main else f["path"],
            kind=str(declared.get("kind") or "file") if main else "file",
            sha256=f["sha256"], size=f["size"], job_id=job_id, attempt_id=attempt_id, user=user,
            host=host, device_class=device_class,
            tool=(declared.get("compiler") or tool.get("name")) if main else None,
            tool_version=(declared.get("compiler_version") or tool.get("version")) if main else None,
            key=key_of(basis), key_json=json.dumps(basis, sort_keys=True) if basis else None,
            created_at=time.time(),
        ))
    return out


def artifact_input(art: Any) -> InputRef:
    """An artifact as a job input: one file, already in the blob store."""
    filename = posixpath.basename(art.name) or art.id
    return InputRef(kind="file", filename=filename,
                    files={filename: BlobRef(sha256=art.sha256, size=art.size)})
