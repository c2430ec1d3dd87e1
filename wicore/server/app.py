"""The server's ASGI app: one generation service, the shared middleware and error envelope, and the
routes of every surface (OpenAI, its Responses API, AIgo, Ollama, and the server's own health and status)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from wicore import __version__
from wicore.config import Settings
from wicore.engine.client import EngineClient
from wicore.server import monitoring
from wicore.server.aigo import routes as aigo
from wicore.server.catalogue import Catalogue
from wicore.server.errors import install_error_handlers
from wicore.server.metrics import Metrics
from wicore.server.middleware import (
    AuthMiddleware,
    BodySizeLimitMiddleware,
    RateLimitMiddleware,
    RequestContextMiddleware,
    ServerCounters,
    SlidingWindowLimiter,
)
from wicore.server.ollama import routes as ollama
from wicore.server.openai import routes as openai
from wicore.server.responses import routes as responses
from wicore.server.service import GenerationService


def create_app(settings: Settings, engine: EngineClient) -> FastAPI:
    """The server's ASGI app; its lifespan starts the engine worker and shuts it down."""
    api = settings.api
    if api.auth_enabled and not api.api_keys:
        raise ValueError("api.auth_enabled is true but api.api_key names no key")
    counters = ServerCounters()
    metrics = Metrics(engine.model_name, lambda: engine.stats, lambda: engine.worker_restarts)
    service = GenerationService(settings, engine, metrics, counters, Catalogue(engine.model_name))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()

    app = FastAPI(title="WiCore", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    # Added innermost first: the request id wraps everything, so 401s, 413s and 429s are logged with one too.
    app.add_middleware(BodySizeLimitMiddleware, limit=api.max_request_bytes)
    if api.rate_limit_per_minute > 0:
        app.add_middleware(RateLimitMiddleware, limiter=SlidingWindowLimiter(api.rate_limit_per_minute))
    if api.auth_enabled:
        app.add_middleware(AuthMiddleware, keys=api.api_keys)
    app.add_middleware(
        RequestContextMiddleware, counters=counters, log_requests=settings.logging.enable_request_logging
    )
    if api.cors_origins:
        # Outermost, so a preflight needs no API key and 401s and 429s carry the headers a browser needs
        # to show them.
        app.add_middleware(
            CORSMiddleware, allow_origins=api.cors_origins, allow_methods=["*"], allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )  # fmt: skip
    for surface in (monitoring, openai, responses, aigo, ollama):
        app.include_router(surface.router(service))
    return app
