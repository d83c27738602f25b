"""The listener pods talk back to: they fetch fleet's runners, their plan and their inputs,
and hand in their status, result record and outputs. The controller's API stays out of it.

Each attempt has its own token (an HMAC of its id under a key kept 0600 beside fleet's other
state), given to the pod through its Secret; a token opens that attempt's files and nothing
else. What a pod hands in is size-capped, its paths checked, its outputs hashed here; nothing a
pod says is trusted beyond being that attempt's own claim (DESIGN.md §7).

Files per attempt, under ``ROOT/ATTEMPT/``: ``plan.json`` (what to run), what the pod handed in
(``status.json``, ``result.json``, ``error.json``, ``out/...``) and ``outcome.json``, how fleet
saw the attempt end (written before the pod is deleted, read again after a controller restart).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from fleet.runners import bundle
from fleet.secrets import read_or_create_key

log = logging.getLogger(__name__)

FILES = {"status.json", "result.json", "error.json"}
MAX_FILE = 16 << 20  # a status, result record or error report
MAX_OUTPUTS = 1000
ATTEMPT_RE = re.compile(r"^[a-z0-9]{4,40}$")


class Callback:
    def __init__(self, root: Path, key_file: Path, blob_path: Callable[[str], Path], max_upload: int) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key = read_or_create_key(key_file)
        self.blob_path = blob_path
        self.max_upload = max_upload
        self.url = ""
        self._runner: web.AppRunner | None = None

    def token(self, attempt_id: str) -> str:
        return hmac.new(self.key, attempt_id.encode(), hashlib.sha256).hexdigest()

    def dir(self, attempt_id: str) -> Path:
        return self.root / attempt_id

    # ---------------------------------------------------------------- controller side

    def write_plan(self, attempt_id: str, plan: dict[str, Any]) -> None:
        d = self.dir(attempt_id)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_json(d / "plan.json", plan)

    def read(self, attempt_id: str, name: str) -> Any:
        """A JSON file of the attempt (None if absent or unreadable)."""
        try:
            return json.loads((self.dir(attempt_id) / name).read_text())
        except (OSError, ValueError):
            return None

    def write_outcome(self, attempt_id: str, outcome: dict[str, Any]) -> None:
        _write_json(self.dir(attempt_id) / "outcome.json", outcome)

    def output_path(self, attempt_id: str, rel: str) -> Path:
        return self.dir(attempt_id) / "out" / rel

    def outputs(self, attempt_id: str) -> list[dict[str, Any]]:
        """The outputs the pod handed in, as hashed here."""
        index = self.read(attempt_id, "outputs.json")
        return list(index.values()) if isinstance(index, dict) else []

    # ---------------------------------------------------------------- the listener

    async def start(self, listen: str, url: str | None) -> None:
        app = web.Application(client_max_size=MAX_FILE)
        app.router.add_get("/v1/{aid}/bundle", self._bundle)
        app.router.add_get("/v1/{aid}/plan", self._plan)
        app.router.add_get("/v1/{aid}/inputs/{sha}", self._input)
        app.router.add_put("/v1/{aid}/files/{name}", self._file)
        app.router.add_put("/v1/{aid}/outputs", self._output)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        if url is None:
            import socket

            shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
            url = f"http://{shown}:{bound[1]}"
        self.url = url.rstrip("/")
        log.info("kubernetes callback listener on %s:%s (pods reach it at %s)", host, bound[1], self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _auth(self, request: web.Request) -> str:
        aid = request.match_info["aid"]
        if not ATTEMPT_RE.match(aid):
            raise web.HTTPNotFound()
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given, self.token(aid)):
            raise web.HTTPForbidden(text="not this attempt's token\n")
        if not (self.dir(aid) / "plan.json").exists():
            raise web.HTTPServiceUnavailable(text="no such attempt here (yet)\n")
        if (self.dir(aid) / "outcome.json").exists() and request.method == "PUT":
            raise web.HTTPConflict(text="the attempt has ended\n")
        return aid

    async def _bundle(self, request: web.Request) -> web.StreamResponse:
        self._auth(request)
        return web.Response(body=bundle().tarball, content_type="application/gzip")

    async def _plan(self, request: web.Request) -> web.StreamResponse:
        aid = self._auth(request)
        return web.json_response(self.read(aid, "plan.json"))

    async def _input(self, request: web.Request) -> web.StreamResponse:
        aid = self._auth(request)
        sha = request.match_info["sha"]
        plan = self.read(aid, "plan.json") or {}
        if sha not in {s for _, s in plan.get("inputs", [])}:
            raise web.HTTPNotFound(text="not an input of this attempt\n")
        path = self.blob_path(sha)
        if not path.exists():
            raise web.HTTPGone(text="the input is gone from the controller's store\n")
        return web.FileResponse(path)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        aid = self._auth(request)
        name = request.match_info["name"]
        if name not in FILES:
            raise web.HTTPNotFound()
        body = await request.read()
        try:
            json.loads(body)
        except ValueError:
            raise web.HTTPBadRequest(text=f"{name} is not JSON\n") from None
        await asyncio.to_thread(_write_bytes, self.dir(aid) / name, body)
        return web.Response(status=204)

    async def _output(self, request: web.Request) -> web.StreamResponse:
        aid = self._auth(request)
        rel = request.query.get("path", "")
        norm = posixpath.normpath(rel)
        if not rel or rel.startswith("/") or norm.startswith("..") or norm in {".", ""} or "\x00" in rel:
            raise web.HTTPBadRequest(text="an output path inside the attempt directory, please\n")
        index_path = self.dir(aid) / "outputs.json"
        index = self.read(aid, "outputs.json") or {}
        if len(index) >= MAX_OUTPUTS and norm not in index:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_OUTPUTS, actual_size=len(index) + 1)
        # One attempt's outputs together may take max_upload bytes, not that much per file: a job
        # must not fill the controller's disk a thousand files at a time.
        room = self.max_upload - sum(int(o["size"]) for p, o in index.items() if p != norm)
        dest = self.output_path(aid, norm)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        digest, size = hashlib.sha256(), 0
        with tmp.open("wb") as fh:
            async for chunk in request.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > room:
                    fh.close()
                    tmp.unlink(missing_ok=True)
                    raise web.HTTPRequestEntityTooLarge(max_size=max(room, 0), actual_size=size)
                digest.update(chunk)
                fh.write(chunk)
        os.replace(tmp, dest)
        index[norm] = {"path": norm, "size": size, "sha256": digest.hexdigest()}
        await asyncio.to_thread(_write_bytes, index_path, json.dumps(index).encode())
        return web.json_response(index[norm])


def _write_bytes(path: Path, data: bytes) -> None:
    if len(data) > MAX_FILE:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FILE, actual_size=len(data))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_bytes(path, json.dumps(value).encode())
