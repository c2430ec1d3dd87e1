"""The models as the routes see them: every one the server can serve (the catalogue) and the loaded ones
(the engine pool). A route turns the request's `model` into a GenerationService bound to that model's
engine with one call, `service()`: it checks the name (404 listing the available models), waits while the
model loads, and leases the engine until the response has ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from wicore.config import Settings
from wicore.engine.client import EngineClient, EngineUnavailable
from wicore.engine.pool import EnginePool, LoadedModel
from wicore.models import registry
from wicore.server.catalogue import Catalogue, ModelKind
from wicore.server.errors import APIError
from wicore.server.metrics import EngineFigures, Metrics
from wicore.server.middleware import ServerCounters, after_response
from wicore.server.service import GenerationService

ModelState = Literal["loaded", "loading", "unloaded"]


@dataclass(frozen=True)
class LoadedInfo:
    """One loaded model, for /api/ps and /status."""

    name: str
    engine: EngineClient
    state: ModelState
    users: int  # requests holding it
    keep_alive: float  # seconds; negative: forever
    expires_at: float | None  # when it unloads if nobody uses it; None: never


class ServedModels:
    def __init__(self, settings: Settings, pool: EnginePool, catalogue: Catalogue, counters: ServerCounters) -> None:
        self.settings = settings
        self.pool = pool
        self.catalogue = catalogue
        self.metrics = Metrics(self.figures)
        self.counters = counters
        self.started_at = time.time()
        model = settings.model
        # Loaded at start-up: the default model and model.preload (/health waits for them).
        self.startup = list(dict.fromkeys(registry.model_name(s) for s in (model.name, *model.preload)))

    async def service(
        self, request: Request, model: str | None, kind: ModelKind = "chat", *, keep_alive: float | None = None,
        shown: str | None = None,
    ) -> GenerationService:  # fmt: skip
        """The generation service of `model` (bare name; None: the default of `kind`), once its engine is
        ready, leased until the response to `request` has ended. `keep_alive` (seconds, Ollama's
        semantics) replaces the model's own when given; `shown` is the name as the request spelled it."""
        name = model or self.catalogue.default(kind)
        self.catalogue.entry(name, kind, shown)
        deadline = time.time() + self.settings.scheduler.request_timeout
        started = time.monotonic()
        try:
            engine = await self.pool.acquire(name, deadline, keep_alive)
        except EngineUnavailable as e:
            raise APIError(503, str(e), headers={"Retry-After": "1"}) from None
        except registry.ModelError as e:  # the file went away after it was listed
            raise APIError(404, str(e), param="model") from None
        after_response(request, lambda: self.pool.release(name))
        load_seconds = time.monotonic() - started
        return GenerationService(self.settings, engine, self.metrics, self.counters, self.catalogue, load_seconds)

    # -- what is loaded --------------------------------------------------------------------------

    def state(self, name: str) -> ModelState:
        entry = self.pool.loaded.get(name)
        if entry is None:
            return "unloaded"
        return "loaded" if entry.engine.ready else "loading"

    def loaded(self) -> list[LoadedInfo]:
        """The loaded models, most recently used first."""
        entries = sorted(self.pool.loaded.values(), key=lambda e: -e.last_used)
        return [self._info(e) for e in entries]

    def _info(self, e: LoadedModel) -> LoadedInfo:
        if e.keep_alive < 0:
            expires = None
        elif e.expires_at is not None:
            expires = e.expires_at
        else:  # in use: its keep-alive starts when the last request ends
            expires = time.time() + e.keep_alive
        state: ModelState = "loaded" if e.engine.ready else "loading"
        return LoadedInfo(e.name, e.engine, state, e.users, e.keep_alive, expires)

    def figures(self) -> list[EngineFigures]:
        engines = [e.engine for e in self.pool.loaded.values()]
        return [EngineFigures(e.model_name, e.stats, e.worker_restarts, e.memory) for e in engines]

    @property
    def ready(self) -> bool:
        """Every start-up model still loaded is ready (while one loads, or restarts after its worker died,
        the server is not)."""
        return all(self.state(name) != "loading" for name in self.startup)
