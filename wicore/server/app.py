"""The server's ASGI app: the served models (catalogue and engine pool), the shared middleware and error
envelope, and the routes of every surface (OpenAI, AIgo, Ollama, and the server's own health and status)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from wicore import __version__
from wicore.config import Settings
from wicore.engine.client import EngineClient
from wicore.engine.pool import EnginePool
from wicore.server import monitoring
from wicore.server.aigo import routes as aigo
from wicore.server.catalogue import Catalogue, CatalogueEntry
from wicore.server.errors import install_error_handlers
from wicore.server.middleware import (
    AfterResponseMiddleware,
    AuthMiddleware,
    BodySizeLimitMiddleware,
    RateLimitMiddleware,
    RequestContextMiddleware,
    ServerCounters,
    SlidingWindowLimiter,
)
from wicore.server.models import ServedModels
from wicore.server.ollama import routes as ollama
from wicore.server.openai import routes as openai

EngineFactory = Callable[[Settings, CatalogueEntry], EngineClient]


def engine_for(settings: Settings, entry: CatalogueEntry) -> EngineClient:
    """The engine client (not yet started) of a model in the catalogue."""
    if entry.kind == "chat":
        return EngineClient.generative(settings, entry.name, str(entry.path))
    return EngineClient.embedding(settings, entry.name)


def create_app(settings: Settings, make_engine: EngineFactory = engine_for) -> FastAPI:
    """The server's ASGI app; its lifespan loads the start-up models and shuts every engine worker down."""
    api = settings.api
    if api.auth_enabled and not api.api_keys:
        raise ValueError("api.auth_enabled is true but api.api_key names no key")
    catalogue = Catalogue(settings)
    pool = EnginePool(settings, lambda name: make_engine(settings, catalogue.entry(name)))
    models = ServedModels(settings, pool, catalogue, ServerCounters())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await pool.preload(models.startup)
            yield
        finally:
            await pool.shutdown()

    app = FastAPI(title="WiCore", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    # Added innermost first: the request id wraps everything, so 401s, 413s and 429s are logged with one too.
    app.add_middleware(AfterResponseMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, limit=api.max_request_bytes)
    if api.rate_limit_per_minute > 0:
        app.add_middleware(RateLimitMiddleware, limiter=SlidingWindowLimiter(api.rate_limit_per_minute))
    if api.auth_enabled:
        app.add_middleware(AuthMiddleware, keys=api.api_keys)
    app.add_middleware(
        RequestContextMiddleware, counters=models.counters, log_requests=settings.logging.enable_request_logging
    )
    if api.cors_origins:
        # Outermost, so a preflight needs no API key and 401s and 429s carry the headers a browser needs
        # to show them.
        app.add_middleware(
            CORSMiddleware, allow_origins=api.cors_origins, allow_methods=["*"], allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )  # fmt: skip
    for surface in (monitoring, openai, aigo, ollama):
        app.include_router(surface.router(models))
    return app
