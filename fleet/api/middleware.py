"""ASGI middleware of the API: bounded request bodies, server timing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (DESIGN.md §7: every request is bounded)."""

    max_request_bytes: int = 16 << 20  # a request body, uploads aside
    max_spec_bytes: int = 1 << 20  # one job spec, as JSON
    max_upload_bytes: int = 8 << 30  # one uploaded file
    upload_quota_bytes: int = 50 << 30  # one user's uploads in all


class BodyLimit:
    """ASGI middleware: a request body over ``max_request_bytes`` is answered 413 with the
    limit, before the app buffers it (a 100 MB spec grew the server to 1.4 GB). Uploads
    (``PUT /blobs/...``) stream to disk and have limits of their own."""

    def __init__(self, app: Any, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"] == "PUT" and scope["path"].startswith("/blobs/")):
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = next((v for k, v in scope.get("headers") or [] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        # Without a length (chunked), read up to the limit here, then hand the body on.
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body") or b"")
            if seen > limit:
                await _too_large(send, limit)
                return
            if not message.get("more_body"):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body over the limit of {limit} bytes (max_request_bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ServerTiming:
    """ASGI middleware: ``Server-Timing: app;dur=<ms>`` on every response (time in fleet, not
    on the wire), so clients and benchmarks can tell server time from network time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                dur = (time.perf_counter() - start) * 1000
                headers = list(message.get("headers") or [])
                headers.append((b"server-timing", f"app;dur={dur:.3f}".encode()))
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, timed_send)
