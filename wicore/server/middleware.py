"""Plain ASGI middleware (no BaseHTTPMiddleware: it buffers and breaks cancellation of streamed responses).

- RequestContextMiddleware: a request id on every log line and in `X-Request-ID`, the per-request access
  line, and the request/error counts /health and /status report.
- AuthMiddleware: `Authorization: Bearer <key>` against `api.api_key` when `api.auth_enabled`.
- RateLimitMiddleware: `api.rate_limit_per_minute` per API key (per client IP without auth), sliding window.
- AfterResponseMiddleware: runs what a route registered with `after_response` once its response has ended,
  streamed to the end or abandoned (how a request gives back its model's engine).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wicore.server.errors import CLIENT_CLOSED, error_response

log = structlog.get_logger("wicore.access")

# Reachable without a key: load balancers and scrapers must not need one (as vLLM and llama-server do).
# The AIgo health check and Ollama's version probe are health checks too.
PUBLIC_PATHS = frozenset(
    {"/", "/health", "/metrics", "/docs", "/redoc", "/openapi.json", "/api/v1/health", "/api/version"}
)
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def is_api_path(path: str) -> bool:
    """The OpenAI, AIgo and Ollama routes: what is counted for /health and /status, and rate limited."""
    if path in PUBLIC_PATHS:
        return False
    return path.startswith(("/v1/", "/api/")) or path in ("/chat/completions", "/completions", "/embeddings")


@dataclass
class ServerCounters:
    total_requests: int = 0
    error_count: int = 0

    @property
    def error_rate(self) -> float:
        return self.error_count / self.total_requests if self.total_requests else 0.0


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, counters: ServerCounters, log_requests: bool) -> None:
        self.app = app
        self.counters = counters
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        # A caller's id is kept so its logs and ours join up; anything odd is replaced, not echoed.
        request_id = incoming if _CLIENT_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        status = 500
        complete = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        start = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                path = scope["path"]
                shown = status if complete else CLIENT_CLOSED
                if is_api_path(path):
                    self.counters.total_requests += 1
                    if status >= 400 and shown != CLIENT_CLOSED:  # a hang-up is the client's choice
                        self.counters.error_count += 1
                if self.log_requests:
                    client = scope.get("client")
                    log.info(
                        "request",
                        method=scope["method"],
                        path=path,
                        status=shown,
                        duration_ms=round((time.perf_counter() - start) * 1000, 2),
                        client=f"{client[0]}:{client[1]}" if client else None,
                    )


def _bearer(scope: Scope) -> str | None:
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        # Compare against every key in constant time, so timing tells nothing about near misses.
        if token is None or not any([hmac.compare_digest(token.encode(), k) for k in self.keys]):
            message = "missing API key (send Authorization: Bearer <key>)" if token is None else "invalid API key"
            response = error_response(scope["path"], 401, message, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        # The rate limiter keys on the caller's key; a digest keeps the key itself out of memory dumps.
        digest = hashlib.sha256(token.encode()).hexdigest()[:16]
        scope.setdefault("state", {})["client_key"] = f"key:{digest}"
        await self.app(scope, receive, send)


class SlidingWindowLimiter:
    """At most `limit` hits per key in any `window` seconds."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep = 0.0

    def hit(self, key: str, now: float) -> float | None:
        """Count a hit; None if allowed, else the seconds until the oldest hit leaves the window."""
        self._sweep(now)
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] + self.window - now
        hits.append(now)
        return None

    def _sweep(self, now: float) -> None:
        # Forget clients idle for a whole window, so one-off IPs do not accumulate forever.
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]:
            del self._hits[key]


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limiter: SlidingWindowLimiter, clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.limiter = limiter
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = scope.get("state", {}).get("client_key")
        if key is None:
            client = scope.get("client")
            key = f"ip:{client[0] if client else 'unknown'}"
        wait = self.limiter.hit(key, self.clock())
        if wait is not None:
            retry = max(1, math.ceil(wait))
            response = error_response(
                scope["path"],
                429,
                f"rate limit exceeded: {self.limiter.limit} requests per minute; retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised from the body reader once a request body passes the limit."""


class BodySizeLimitMiddleware:
    """413 before a body over `limit` bytes is read whole: at once from Content-Length, else as soon as
    a streamed (chunked) body passes it, so one huge request cannot fill the HTTP process's memory."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body too large: the limit is {self.limit} bytes (api.max_request_bytes)"
        await error_response(scope["path"], 413, message, type="invalid_request_error")(scope, receive, send)


_AFTER_RESPONSE = "after_response"


def after_response(request: Request, callback: Callable[[], None]) -> None:
    """Run `callback` once the response to `request` has ended (needs AfterResponseMiddleware)."""
    request.scope.setdefault("state", {}).setdefault(_AFTER_RESPONSE, []).append(callback)


class AfterResponseMiddleware:
    """Calls each request's `after_response` callbacks when the app is done with it: after the last byte of
    a streamed body, on a client's hang-up, or on an error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            for callback in scope.get("state", {}).get(_AFTER_RESPONSE, ()):
                callback()
