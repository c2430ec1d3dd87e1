"""The error envelope `{"error": {"message", "type", "code"}}` of WiCore's API contract, and the handlers
that produce it. Under Ollama's paths errors take Ollama's own shape, `{"error": "message"}`, which its
clients read (whether a route, the validation, the auth or the rate limit refused the request).

Every client mistake maps to a 4xx that names the offending parameter; only our own faults are 500s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("wicore.server")
# Status of a response the client hung up on before it was complete (nginx's and MAX's 499).
CLIENT_CLOSED = 499

_TYPE_BY_STATUS = {
    401: "authentication_error",
    408: "timeout_error",
    429: "rate_limit_exceeded",
}


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str  # the HTTP status as a string, as the contract has it


class ErrorResponse(BaseModel):
    error: ErrorInfo


class OllamaErrorResponse(BaseModel):
    """Errors under Ollama's /api/ paths, as its clients read them."""

    error: str


class ClientGone(Exception):
    """The client closed the connection before the response began; answered (and logged) as 499."""


def error_type(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class APIError(Exception):
    """Raised anywhere in a request to answer with the envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type(status)
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=str(self.status))
        )

    def response(self, path: str) -> JSONResponse:
        """The error as the surface serving `path` spells errors."""
        body = {"error": self.message} if is_ollama_path(path) else self.body().model_dump()
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def is_ollama_path(path: str) -> bool:
    # Ollama's API lives under /api/, beside AIgo's /api/v1/.
    return path.startswith("/api/") and not path.startswith("/api/v1/")


def error_response(
    path: str, status: int, message: str, *, type: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return APIError(status, message, type=type, headers=headers).response(path)


# Union members show up in pydantic's error locations ("str", "list[TextContentPart]", and the `<type>`
# labels our tagged unions give their members); they are not parameter names, so they are left out of
# the name we report.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none)$|\[|^<")
_LEADING_PARAM = re.compile(r"^([A-Za-z_]\w*): ")


def _param_path(loc: Sequence[Any]) -> str:
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TYPE_TAG.search(str(part)):
            out += f".{part}" if out else str(part)
    return out


def _describe(error: Mapping[str, Any]) -> str:
    kind, msg = error.get("type", ""), str(error.get("msg", ""))
    if kind == "extra_forbidden":
        return "unsupported parameter"
    if kind == "missing":
        return "is required"
    return msg.removeprefix("Value error, ")


def validation_error(errors: Sequence[Mapping[str, Any]]) -> APIError:
    """One 400 for pydantic's errors: the most specific offending parameter and everything said about it."""
    if not errors:
        return APIError(400, "invalid request")
    # The deepest location wins: for a union (`content` as a string or a list of parts) it is the member the
    # value came closest to matching, e.g. "messages[0].content[0].type" rather than "not a string".
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON: {detail}".rstrip(": "))
    param, message = _located(first)
    if not param:
        if first.get("type") in ("model_type", "model_attributes_type", "dict_type"):
            return APIError(400, "the request body must be a JSON object")
        if first.get("type") == "missing":
            return APIError(400, "the request body is required (a JSON object)")
        # A check spanning several fields already starts with the parameter's name.
        named = _LEADING_PARAM.match(message)
        return APIError(400, message, param=named.group(1) if named else None)
    said = []
    for error in errors:
        where, text = _located(error)
        if where == param and text not in said:
            said.append(text)
    return APIError(400, f"{param}: {'; '.join(said)}", param=param)


def _located(error: Mapping[str, Any]) -> tuple[str, str]:
    """The parameter an error is about and what it says. A check spanning an object's fields (a message's
    role and content) names the field in its text: "content: ..." inside messages[0] is about
    messages[0].content."""
    path, text = _param_path(error.get("loc", ())), _describe(error)
    named = _LEADING_PARAM.match(text)
    if path and named:
        return f"{path}.{named.group(1)}", text[named.end() :]
    return path, text


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response(request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error(exc.errors()).response(request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(request.url.path, exc.status_code, message, headers=exc.headers)

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return error_response(request.url.path, 500, "internal server error")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientGone, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)
