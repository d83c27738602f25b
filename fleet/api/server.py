"""The HTTP API (FastAPI): the app, its middleware and error answers, and the routers of
``fleet.api.routes`` (one per resource). Every route but ``/health`` needs a bearer token; a
user sees and cancels only their own jobs, an admin everything. Someone else's job answers
404, not 403, so job ids do not leak."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError

from fleet import __version__
from fleet.api.context import ApiContext, Forwarded
from fleet.api.middleware import BodyLimit, ServerTiming
from fleet.api.openapi import document_bodies, document_errors
from fleet.api.routes import ROUTERS
from fleet.disk import DiskFull, is_disk_full
from fleet.errors import FleetError, NotFound, SpecError
from fleet.models.enums import JobState

__all__ = ["ApiContext", "create_app"]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="fleet",
        version=__version__,
        description="Job runner for edge-device ML labs. Bearer token on every route but /health.",
    )
    app.state.ctx = ctx
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=lambda: ctx.limits.max_request_bytes)
    app.add_middleware(ServerTiming)

    @app.exception_handler(Forwarded)
    async def _forwarded(_req: Request, exc: Forwarded) -> Response:
        return exc.response

    # Error bodies echo what the client sent (a field name, an id), which may hold characters
    # UTF-8 cannot encode (lone surrogates from a JSON "\ud800"): escape them, never fail.
    @app.exception_handler(SpecError)
    async def _spec_error(_req: Request, exc: SpecError) -> JSONResponse:
        return JSONResponse(
            {"detail": _safe(str(exc)),
             "errors": [{"field": _safe(f), "problem": _safe(p)} for f, p in exc.errors]},
            status_code=422,
        )

    @app.exception_handler(DiskFull)
    async def _disk_full(_req: Request, exc: DiskFull) -> JSONResponse:
        return JSONResponse({"detail": _safe(str(exc))}, status_code=507)

    @app.exception_handler(OSError)
    async def _os_error(req: Request, exc: OSError) -> JSONResponse:
        if is_disk_full(exc):
            ctx.disk.hit(exc)
            return await _disk_full(req, DiskFull(f"the controller's disk is full ({exc.strerror}); "
                                                  "try again once an admin has made room"))
        raise exc

    @app.exception_handler(OperationalError)
    async def _db_error(req: Request, exc: OperationalError) -> JSONResponse:
        if is_disk_full(exc):
            ctx.disk.hit(exc)
            return await _disk_full(req, DiskFull("the controller's disk is full (the database "
                                                  "cannot grow); try again once an admin has made room"))
        raise exc

    @app.exception_handler(NotFound)
    async def _not_found(_req: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": _safe(str(exc))}, status_code=404)

    @app.exception_handler(FleetError)
    async def _fleet_error(_req: Request, exc: FleetError) -> JSONResponse:
        return JSONResponse({"detail": _safe(str(exc))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _safe(".".join(str(p) for p in e["loc"] if p != "body") or "body"),
             "problem": _safe(_problem(e))}
            for e in exc.errors()
        ]
        text = "; ".join(f"{e['field']}: {e['problem']}" for e in errors)
        return JSONResponse({"detail": f"invalid request: {text}", "errors": errors}, status_code=422)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            document_errors(schema, app.routes)
            document_bodies(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _problem(error: dict[str, Any]) -> str:
    """A validation error in words: a pattern is described, not shown (the job-state pattern
    is a thousand characters of regex)."""
    if error.get("type") == "string_pattern_mismatch":
        if tuple(error.get("loc") or ())[:2] == ("query", "state"):
            return f"unknown state {str(error.get('input'))[:60]!r}; one of {', '.join(JobState)} (any case)"
        if len(str((error.get("ctx") or {}).get("pattern") or "")) > 80:
            return "not in the accepted form (see the API's description of this field)"
    return str(error["msg"])


def _safe(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as ``\\udXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
