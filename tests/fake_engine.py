"""A fake engine client for in-process route tests, and an httpx client over the app it serves.

FakeEngine has the part of EngineClient's public API the server uses, answering every prompt with the
same reply (REPLY's tokens, one per output) instead of running a model, so route tests check the
server's HTTP behaviour (validation, envelopes, auth, limits, framing, shapes) in milliseconds.  It
records what reached it (requests, cancels) and can be told to refuse, fail or stall.  The app's engine
pool gets it for every model it loads (under each model's name, see FakeEngineFor); the models listed
are the real ones in the models folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI

from wicore.config import Settings
from wicore.engine.client import EngineUnavailable
from wicore.engine.messages import EmbedOutput, EmbedRequest, SchedulerStats
from wicore.engine.request import EngineRequest, FinishReason, RequestOutput
from wicore.server.app import create_app
from wicore.server.catalogue import CatalogueEntry
from wicore.tokenizer import Tokenizer

REPLY = "The capital of France is Paris."
EMBED_DIMENSIONS = 384  # all-MiniLM-L6-v2's
# The engine client's words for a generation that failed, by finish reason.
FAILURES = {FinishReason.TIMEOUT: "request timed out after 1 s", FinishReason.ERROR: "the engine worker died"}


class FakeEngine:
    """Answers every prompt with REPLY's tokens (cut at max_tokens or a stop string), one per output."""

    def __init__(self, tokenizer: Tokenizer, model_name: str, max_model_len: int = 4096) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.created = int(time.time())
        self.started_at = time.time() - 1.0  # as if it had started a second ago
        self.stats = SchedulerStats(running=True)
        self.worker_restarts = 0
        self.memory = 1 << 20
        self.pid = None
        self.ready = True
        self.requests: list[EngineRequest | EmbedRequest] = []  # in the order they reached the engine
        self.cancelled: list[str] = []  # ids of generations whose consumer went away before the end
        self.refuse: Exception | None = None  # raised by generate() and embed(), as the client refuses
        self.finish: FinishReason | None = None  # end every generation with its second token, for this reason
        self.stall = 0.0  # seconds to wait before each output
        self._ids = itertools.count()

    def new_request_id(self) -> str:
        return f"fake{next(self._ids):08x}"

    async def start(self) -> None:
        pass

    async def wait_ready(self, deadline: float) -> None:
        if not self.ready:  # at once: a test has no model to wait for
            raise EngineUnavailable(f"the model {self.model_name} is still loading")

    async def shutdown(self) -> None:
        pass

    def _admit(self, request: EngineRequest | EmbedRequest) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.requests.append(request)

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        self._admit(request)
        params = request.params
        reply = self.tokenizer.encode(REPLY, add_special_tokens=False)
        ids = reply[: params.max_tokens]
        sent, finished = "", False
        try:
            for k, token in enumerate(ids):
                await asyncio.sleep(self.stall)
                piece = self.tokenizer.decode([token])
                stop = min(((sent + piece).find(s) for s in params.stop if s in sent + piece), default=-1)
                if stop >= 0:  # the engine cuts the text at a stop string
                    piece, end = (sent + piece)[len(sent) : stop], FinishReason.STOP
                elif self.finish is not None and k > 0:
                    end = self.finish
                elif k == len(ids) - 1:
                    end = FinishReason.LENGTH if len(ids) < len(reply) else FinishReason.STOP
                else:
                    end: FinishReason | None = None
                logprobs, top = [], []
                if params.logprobs is not None:  # the sampled token first, as greedy picks it
                    alternatives = [(token, -0.25)] + [(i, -5.0 - i) for i in range(params.logprobs)]
                    logprobs, top = [-0.25], [alternatives[: params.logprobs]]
                prompt_logprobs, prompt_top = [], []
                if params.prompt_logprobs is not None and k == 0:  # every prompt token scored -1, the first none
                    prompt = request.prompt_ids
                    prompt_logprobs = [None] + [-1.0] * (len(prompt) - 1)
                    prompt_top = [[]] + [[(t, -1.0)][: params.prompt_logprobs] for t in prompt[1:]]
                yield RequestOutput(
                    request.request_id, [token], logprobs, top, finish_reason=end, error=FAILURES.get(end),
                    prompt_tokens=len(request.prompt_ids), completion_tokens=k + 1, text=piece,
                    prompt_logprobs=prompt_logprobs, prompt_top_logprobs=prompt_top,
                )  # fmt: skip
                sent += piece
                if end is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self.cancelled.append(request.request_id)

    async def embed(self, request: EmbedRequest) -> EmbedOutput:
        self._admit(request)
        await asyncio.sleep(self.stall)
        if request.deadline is not None and time.time() >= request.deadline:  # as the worker ends it
            return EmbedOutput(request.request_id, None, error=FAILURES["timeout"])
        size = request.dimensions or EMBED_DIMENSIONS
        vectors = []
        for text in request.texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(size)
            vectors.append((v / np.linalg.norm(v)).tolist())
        tokens = sum(len(t.split()) + 2 for t in request.texts)
        return EmbedOutput(request.request_id, vectors, tokens)


class FakeEngineFor:
    """The one FakeEngine under a model's name: what a test sets on the engine holds for every model."""

    def __init__(self, engine: FakeEngine, model_name: str) -> None:
        self._engine = engine
        self.model_name = model_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class InProcessClient(httpx.AsyncClient):
    """An httpx client over an app, with the app's lifespan (start-up loads, shutdown) around its use."""

    def __init__(self, app: Any) -> None:
        super().__init__(transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=10)
        self._lifespan = app.router.lifespan_context(app)

    async def __aenter__(self) -> InProcessClient:
        await self._lifespan.__aenter__()
        await super().__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await super().__aexit__(*exc)
        await self._lifespan.__aexit__(*exc)


def fake_app(engine: FakeEngine, config: dict[str, Any] | None = None) -> FastAPI:
    """The app serving every model with `engine`, with `config` (Settings' sections)."""

    def make_engine(settings: Settings, entry: CatalogueEntry) -> Any:
        return engine if entry.name == engine.model_name else FakeEngineFor(engine, entry.name)

    return create_app(Settings(**(config or {})), make_engine)


def in_process(engine: FakeEngine, config: dict[str, Any] | None = None) -> InProcessClient:
    """An httpx client over the app serving `engine` with `config` (Settings' sections), no network."""
    return InProcessClient(fake_app(engine, config))
