"""The error answers every route can give, published in the OpenAPI schema."""

from __future__ import annotations

import json
from typing import Any

from fastapi.routing import APIRoute

from fleet.api.auth import admin_only, current_user
from fleet.api.context import on_the_leader
from fleet.api.schemas import ErrorOut

_ERRORS = {
    400: "the body is not JSON",
    401: "no valid bearer token",
    403: "admins only",
    404: "no such job, artifact, host or user (someone else's is not found either)",
    409: "already exists",
    413: "body too large: the message names the limit",
    507: "the controller's disk is full: try again once an admin made room",
    422: "invalid request: `errors` names each bad field and its problem",
    503: "no scheduler leader right now (a replica is taking over): retry in a few seconds",
}

def _calls(dependant: Any) -> set[Any]:
    calls = {dependant.call}
    for dep in dependant.dependencies:
        calls |= _calls(dep)
    return calls


def flat_routes(routes: list[Any]) -> list[Any]:
    """The routes of an app, those of included routers too (FastAPI >= 0.16x keeps an included
    router as one entry; its routers here take no prefix)."""
    out: list[Any] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(flat_routes(inner.routes) if inner is not None else [route])
    return out


def document_errors(schema: dict[str, Any], routes: list[Any]) -> None:
    """Publish the error answers every route can give, with their body (ErrorOut) — FastAPI
    documents only its own 422 shape, which fleet replaces."""
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorOut"] = \
        ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for route in flat_routes(routes):
        if not isinstance(route, APIRoute) or current_user not in _calls(route.dependant):
            continue
        codes = {401, 422}
        if admin_only in _calls(route.dependant) or route.name == "add_token":
            codes.add(403)
        if "{" in route.path or route.name in ("add_token", "artifacts"):
            codes.add(404)
        if on_the_leader in _calls(route.dependant):  # forwarded by a follower
            codes.add(503)
        if route.name == "add_user":
            codes.add(409)
        if route.name == "blob_put" or route.body_field is not None:
            codes.add(413)
        if route.name in ("blob_put", "submit", "submit_batch"):
            codes.add(507)
        if route.body_field is not None:
            codes.add(400)
        for method in route.methods or ():
            op = schema["paths"][route.path_format][method.lower()]
            for code in sorted(codes):
                op["responses"][str(code)] = {"description": _ERRORS[code], "content": error}
            if method == "HEAD":  # answers without a body
                for response in op["responses"].values():
                    response.pop("content", None)
    if "/HTTPValidationError" not in json.dumps(schema["paths"]):
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)


def _component(schema: dict[str, Any], name: str, body: dict[str, Any], prefix: str = "") -> None:
    """Put ``body`` (a JSON Schema with ``$defs``) into the components as ``name``."""
    text = json.dumps(body)
    defs = body.get("$defs", {})
    for key in defs:
        text = text.replace(f'"#/$defs/{key}"', f'"#/components/schemas/{prefix}{key}"')
    moved = json.loads(text)
    components = schema["components"]["schemas"]
    for key, value in moved.pop("$defs", {}).items():
        components[f"{prefix}{key}"] = value
    moved.pop("$schema", None)
    moved.pop("$id", None)
    components[name] = moved


def document_bodies(schema: dict[str, Any]) -> None:
    """The job spec and the result record, published as they are: routes take a spec as raw
    JSON (fleet validates it itself, to name each bad field in its words) and give the record
    as stored, but a generated client needs their shapes."""
    from fleet.models.spec import JobSpec
    from fleet.results import schema as result_schema

    _component(schema, "JobSpec", JobSpec.model_json_schema(ref_template="#/$defs/{model}"))
    _component(schema, "ResultRecord", result_schema(), prefix="ResultRecord_")
    spec_ref = {"$ref": "#/components/schemas/JobSpec"}
    paths = schema["paths"]
    paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] = spec_ref
    batch = schema["components"]["schemas"].get("BatchIn", {}).get("properties", {}).get("jobs")
    if batch is not None:
        batch["items"] = spec_ref
    detail = schema["components"]["schemas"].get("JobDetail", {}).get("properties", {})
    if "result" in detail:
        detail["result"] = {"anyOf": [{"$ref": "#/components/schemas/ResultRecord"}, {"type": "null"}],
                            "description": "the result record (fleet/schemas/result.schema.json)"}
