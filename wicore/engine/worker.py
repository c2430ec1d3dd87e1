"""The engine worker process of one model: builds its EngineCore (a generative model) or loads its
Embedder (an embedding model), then steps it until told to stop.

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
from wicore.engine.core import EngineConfig, EngineCore
from wicore.engine.messages import Cancel, EmbedOutput, EmbedRequest, Ready
from wicore.engine.request import EngineOutput, EngineRequest
from wicore.engine.scheduler import Scheduler
from wicore.logging import setup_logging
from wicore.models import registry
from wicore.models.embedding import EmbeddingModel

STATS_INTERVAL = 0.1  # seconds between scheduler snapshots sent to the HTTP process
MAX_EMBED_TEXTS = 256  # texts per embedding step: bounds how long one step delays generation

log = logging.getLogger("wicore.worker")


class Embedder:
    """Pending embedding requests and the embedding model."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.model: EmbeddingModel | None = None
        self.pending: list[EmbedRequest] = []

    def load(self) -> EmbeddingModel:
        if self.model is None:
            self.model = EmbeddingModel.load(self.model_name)
        return self.model

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
            vectors = self.load().embed(texts, order[0].dimensions).tolist()
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


def run(
    settings_data: dict[str, Any], model: str, config: EngineConfig | None, requests: Queue, outputs: Queue
) -> None:
    """Process entry point (spawned) of the worker serving `model`: a generative model when `config` is
    given, else an embedding model.  `None` on the request queue stops it.  The worker has no tokenizer:
    token ids come in, token ids go out (`config` carries the end-of-sequence ids)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # Mojo owns the cores
    # Ctrl+C and a SIGTERM to the process group (a supervisor stopping the server) reach the worker too;
    # the HTTP process decides when the worker stops, after it has stopped watching it (else a worker
    # killed by the group's SIGTERM would be restarted during shutdown, and that one orphaned).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Not PR_SET_PDEATHSIG: it fires when the spawning *thread* ends, and the client respawns workers
    # from its reader thread. The parent's pid changes (to a reaper's) once the HTTP process is gone,
    # SIGKILL (the OOM killer's signal) included.
    parent = os.getppid()
    settings = Settings(**settings_data)
    setup_logging(settings.logging)
    core = None if config is None else EngineCore.load(config)
    scheduler: Scheduler | None = None if core is None else core.scheduler
    embedder = Embedder(model)
    if core is None:
        embedder.load()  # Ready means loaded, and the memory shown is taken
    outputs.put(Ready(model))
    last_stats = 0.0
    while True:
        # Block only when idle; otherwise take what has arrived and go on stepping.
        batch: list[EngineOutput | EmbedOutput] = []
        generating = scheduler is not None and scheduler.has_work()
        idle = not (generating or embedder.has_work())
        try:
            msg = requests.get(timeout=STATS_INTERVAL) if idle else requests.get_nowait()
            while True:
                out = None
                if msg is None:
                    return
                if isinstance(msg, EngineRequest) and scheduler is not None:
                    out = scheduler.add(msg)
                elif isinstance(msg, EmbedRequest):
                    embedder.add(msg)
                elif isinstance(msg, Cancel) and not embedder.cancel(msg.request_id) and scheduler is not None:
                    out = scheduler.cancel(msg.request_id, msg.reason)
                if out is not None:
                    batch.append(out)
                msg = requests.get_nowait()
        except queue.Empty:
            pass
        batch += embedder.step()
        if core is not None and core.scheduler.has_work():
            try:
                batch += core.step()
            except Exception:  # a bug or a kernel error: fail the requests, keep serving
                log.error("engine step failed:\n%s", traceback.format_exc())
                batch += core.scheduler.abort_all("internal engine error")
        if batch:
            outputs.put(batch)
        now = time.monotonic()
        if os.getppid() != parent:
            log.warning("the HTTP process is gone: the engine worker exits")
            return
        # A finished request changes what /status shows: report it at once.
        finished = any(isinstance(out, EngineOutput) and out.finish_reason for out in batch)
        if scheduler is not None and (now - last_stats >= STATS_INTERVAL or finished):
            outputs.put(scheduler.snapshot())
            last_stats = now
