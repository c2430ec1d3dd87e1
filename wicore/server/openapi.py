"""The published OpenAPI document, from the pydantic models the routes validate with.

The routes read their bodies with `parse_body` (any Content-Type, errors rendered in the surface's
envelope), so FastAPI sees no body parameter and would publish none. `documented()` gives a route's
decorator the request model's JSON schema, its success model and media types, and the error statuses
the route itself raises; `install_openapi()` then moves the request models into
`components.schemas` and gives every error response the shape the surface answers with (the envelope
under /v1 and /api/v1, Ollama's `{"error": ...}` under /api/), adding the statuses the middleware
answers on every API route (401, 413, 429, 500).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from wicore.server.errors import ErrorResponse, OllamaErrorResponse, is_ollama_path
from wicore.server.middleware import is_api_path

REF = "#/components/schemas/{model}"

BAD_REQUEST = {400: "a parameter is missing, mistyped or out of range (the message names it)"}
NOT_FOUND = {404: "no such model on this server"}
LOADING = {503: "the model is still loading, or its engine worker is restarting"}
GENERATION_ERRORS = {
    **BAD_REQUEST,
    **NOT_FOUND,
    408: "the request did not finish within scheduler.request_timeout",
    **LOADING,
}
_MIDDLEWARE_ERRORS = {
    401: "missing or invalid API key (when api.auth_enabled)",
    429: "rate limit (api.rate_limit_per_minute) or the scheduler's queue is full; see Retry-After",
    500: "a fault of the server's own",
}
_BODY_TOO_LARGE = {413: "the request body is over api.max_request_bytes"}


# OpenAPI 3.1 describes an event stream by one event (3.2's itemSchema is not yet what clients read).
_SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string", "contentMediaType": "application/json"}},
    "required": ["data"],
}
_NDJSON = {"type": "string", "description": "one JSON object per line"}


def documented(
    body: type[BaseModel] | None = None,
    ok: type[BaseModel] | None = None,
    *,
    stream: str | None = None,
    errors: Mapping[int, str] = GENERATION_ERRORS,
) -> dict[str, Any]:
    """Decorator arguments (`responses`, `openapi_extra`) documenting a route that parses `body` itself,
    answers `ok` as JSON (and `stream` media, e.g. text/event-stream, when streaming) and can raise
    `errors`."""
    responses: dict[int | str, dict[str, Any]] = {status: {"description": text} for status, text in errors.items()}
    if ok is not None or stream is not None:
        success: dict[str, Any] = {"description": "the result" + (f" (streamed as {stream})" if stream else "")}
        if ok is not None:
            success["model"] = ok
        if stream is not None:
            success["content"] = {stream: {"schema": _SSE_EVENT if stream == "text/event-stream" else _NDJSON}}
        responses[200] = success
    extra: dict[str, Any] = {}
    if body is not None:
        schema = body.model_json_schema(ref_template=REF)
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {"responses": responses, "openapi_extra": extra}


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A model's schema as a reference, its definitions (nested models) moved into `components`."""
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault(schema["title"], schema)
    return {"$ref": REF.format(model=schema["title"])}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    error_refs = {
        shape: _hoist(model.model_json_schema(ref_template=REF), components)
        for shape, model in (("envelope", ErrorResponse), ("ollama", OllamaErrorResponse))
    }
    for path, operations in document["paths"].items():
        error_ref = error_refs["ollama" if is_ollama_path(path) else "envelope"]
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "title" in content.get("schema", {}):  # a schema documented() inlined
                content["schema"] = _hoist(content["schema"], components)
            responses = operation.setdefault("responses", {})
            # FastAPI documents 422 for path parameters; the handlers answer validation errors with 400.
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": BAD_REQUEST[400]})
            if is_api_path(path):
                added = {**_MIDDLEWARE_ERRORS, **(_BODY_TOO_LARGE if "requestBody" in operation else {})}
                for status, text in added.items():
                    responses.setdefault(str(status), {"description": text})
            for status, response in responses.items():
                if int(status) >= 400 and "content" not in response:
                    response["content"] = {"application/json": {"schema": error_ref}}
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve `build_openapi`'s document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it
