"""The engine worker process: loads the model, then runs scheduler steps until told to stop.

It owns every Mojo call, so the HTTP process's event loop never waits on
model compute (Mojo calls hold the GIL).  Between steps it drains the request
queue without blocking, which is how new requests join the running batch and
cancellations take effect within one step.  Embedding requests wait in their
own queue and run between scheduler steps, a bounded batch per loop iteration,
so embedding delays generation by one batch's compute at most.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
import traceback
from multiprocessing.queues import Queue
from typing import Any

from wicore.config import Settings
from wicore.engine.messages import Cancel, EmbedOutput, EmbedRequest, EngineRequest, Ready, RequestOutput
from wicore.engine.model_runner import ModelRunner
from wicore.engine.scheduler import Scheduler
from wicore.logging import setup_logging
from wicore.models import registry
from wicore.models.embedding import EmbeddingModel
from wicore.models.prepared import load_prepared
from wicore.models.transformer import Transformer
from wicore.tokenizer import Tokenizer

STATS_INTERVAL = 0.1  # seconds between scheduler snapshots sent to the HTTP process
EMBEDDING_MODEL = "all-minilm-l6-v2"
MAX_EMBED_TEXTS = 256  # texts per embedding step: bounds how long one step delays generation

log = logging.getLogger("wicore.worker")


def _load(settings: Settings) -> tuple[Scheduler, Ready]:
    path = registry.resolve(settings.model.name)
    config, meta, weights = load_prepared(path)
    tokenizer = Tokenizer.from_metadata(meta, str(path))
    max_model_len = min(settings.model.max_model_len, config.context_length)
    block_size = 16
    tokens = max(settings.model.kv_cache_tokens, max_model_len)
    runner = ModelRunner(
        Transformer(config, weights),
        -(-tokens // block_size),
        block_size,
        settings.scheduler.enable_prefix_caching,
        settings.model.kv_cache_dtype,
    )
    scheduler = Scheduler(runner, tokenizer, settings.scheduler, max_model_len)
    return scheduler, Ready(settings.model.name, max_model_len, config.vocab_size)


class Embedder:
    """Pending embedding requests and the embedding model, loaded on first use (it is not needed to chat)."""

    def __init__(self, model_name: str = EMBEDDING_MODEL) -> None:
        self.model_name = model_name
        self.model: EmbeddingModel | None = None
        self.pending: list[EmbedRequest] = []

    def has_work(self) -> bool:
        return bool(self.pending)

    def add(self, request: EmbedRequest) -> None:
        self.pending.append(request)

    def cancel(self, request_id: str) -> bool:
        kept = [r for r in self.pending if r.request_id != request_id]
        found = len(kept) < len(self.pending)
        self.pending = kept
        return found

    def step(self) -> list[EmbedOutput]:
        """Run the highest-priority pending request (the earliest among equals) in one batch with the
        others asking for the same dimensions, up to MAX_EMBED_TEXTS texts: one forward pass for many
        small concurrent requests.  Requests past their deadline end as timeouts first."""
        now = time.time()
        outputs = [
            EmbedOutput(r.request_id, None, error=f"request timed out after {r.deadline - r.arrival:g} s")
            for r in self.pending
            if r.deadline is not None and now > r.deadline
        ]
        self.pending = [r for r in self.pending if r.deadline is None or now <= r.deadline]
        if not self.pending:
            return outputs
        order = sorted(self.pending, key=lambda r: (-int(r.priority), r.arrival))
        batch, texts = [order[0]], list(order[0].texts)
        for r in order[1:]:
            if r.dimensions == order[0].dimensions and len(texts) + len(r.texts) <= MAX_EMBED_TEXTS:
                batch.append(r)
                texts += r.texts
        self.pending = [r for r in self.pending if r not in batch]
        try:
            if self.model is None:
                self.model = EmbeddingModel.load(self.model_name)
            vectors = self.model.embed(texts, order[0].dimensions).tolist()
            tokens = self.model.count_tokens(texts)
        except (ValueError, registry.ModelError) as e:  # bad input, or the model is not pulled
            return outputs + [EmbedOutput(r.request_id, None, error=str(e)) for r in batch]
        except Exception:  # a bug or a kernel error: fail these requests, keep serving
            log.error("embedding failed:\n%s", traceback.format_exc())
            return outputs + [EmbedOutput(r.request_id, None, error="internal engine error") for r in batch]
        start = 0
        for r in batch:
            end = start + len(r.texts)
            outputs.append(EmbedOutput(r.request_id, vectors[start:end], sum(tokens[start:end])))
            start = end
        return outputs


def run(settings_data: dict[str, Any], requests: Queue, outputs: Queue) -> None:
    """Process entry point (spawned): `None` on the request queue stops it."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # Mojo owns the cores
    # Ctrl+C reaches the whole process group; the HTTP process decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = Settings(**settings_data)
    setup_logging(settings.logging)
    scheduler, ready = _load(settings)
    embedder = Embedder()
    outputs.put(ready)
    last_stats = 0.0
    while True:
        # Block only when idle; otherwise take what has arrived and go on stepping.
        batch: list[RequestOutput | EmbedOutput] = []
        idle = not (scheduler.has_work() or embedder.has_work())
        try:
            msg = requests.get(timeout=STATS_INTERVAL) if idle else requests.get_nowait()
            while True:
                out = None
                if msg is None:
                    return
                if isinstance(msg, EngineRequest):
                    out = scheduler.add(msg)
                elif isinstance(msg, EmbedRequest):
                    embedder.add(msg)
                elif isinstance(msg, Cancel) and not embedder.cancel(msg.request_id):
                    out = scheduler.cancel(msg.request_id)
                if out is not None:
                    batch.append(out)
                msg = requests.get_nowait()
        except queue.Empty:
            pass
        batch += embedder.step()
        if scheduler.has_work():
            try:
                batch += scheduler.step()
            except Exception:  # a bug or a kernel error: fail the requests, keep serving
                log.error("engine step failed:\n%s", traceback.format_exc())
                batch += scheduler.abort_all("internal engine error")
        if batch:
            outputs.put(batch)
        now = time.monotonic()
        # A finished request changes what /status shows: report it at once.
        finished = any(isinstance(out, RequestOutput) and out.finish_reason for out in batch)
        if now - last_stats >= STATS_INTERVAL or finished:
            outputs.put(scheduler.snapshot())
            last_stats = now
