"""The engine worker process of one model: builds its EngineCore (a generative model) or loads its
Embedder (an embedding model), then steps it until told to stop.

It owns every Mojo call, so the HTTP process's event loop never waits on
model compute (Mojo calls hold the GIL).  Between steps it drains the request
queue without blocking, which is how new requests join the running batch and
cancellations take effect within one step.  Embedding requests wait in their
own queue and run between scheduler steps, a bounded number of tokens per loop
iteration, so embedding delays generation by one such batch's compute at most.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

from wicore.config import SchedulerSettings, Settings
from wicore.engine.core import EngineConfig, EngineCore
from wicore.engine.messages import Cancel, EmbedOutput, EmbedRequest, Ready
from wicore.engine.request import EngineOutput, EngineRequest
from wicore.engine.scheduler import Scheduler
from wicore.logging import setup_logging
from wicore.models import registry
from wicore.models.embedding import EmbeddingModel

STATS_INTERVAL = 0.1  # seconds between scheduler snapshots sent to the HTTP process

log = logging.getLogger("wicore.worker")


@dataclass
class _Embedding:
    """A pending embedding request and the vectors of its first texts, embedded so far."""

    request: EmbedRequest
    vectors: list[list[float]] = field(default_factory=list)
    tokens: int = 0

    @property
    def remaining(self) -> list[str]:
        return self.request.texts[len(self.vectors) :]


class Embedder:
    """Pending embedding requests and the embedding model.

    One step embeds about `step_tokens` tokens (always at least one text), so a large request is spread
    over several steps: new, cancelled and higher-priority requests are taken between them, and one large
    request cannot hold the others back (the embedding model has a worker of its own, so generation
    shares only the cores with it)."""

    def __init__(
        self, model_name: str, step_tokens: int = SchedulerSettings.model_fields["max_embed_step_tokens"].default
    ) -> None:
        self.model_name = model_name
        self.step_tokens = step_tokens
        self.model: EmbeddingModel | None = None
        self.pending: list[_Embedding] = []

    def load(self) -> EmbeddingModel:
        if self.model is None:
            self.model = EmbeddingModel.load(self.model_name)
        return self.model

    def has_work(self) -> bool:
        return bool(self.pending)

    def add(self, request: EmbedRequest) -> None:
        self.pending.append(_Embedding(request))

    def cancel(self, request_id: str) -> bool:
        kept = [e for e in self.pending if e.request.request_id != request_id]
        found = len(kept) < len(self.pending)
        self.pending = kept
        return found

    def step(self) -> list[EmbedOutput]:
        """Embed the next texts of the highest-priority pending request (the earliest among equals),
        with those of others asking for the same dimensions, up to the step's token budget: one forward
        pass for many small concurrent requests. Requests past their deadline end as timeouts first;
        the requests whose last texts were embedded end with their vectors."""
        now = time.time()
        late = [e.request for e in self.pending if e.request.deadline is not None and now > e.request.deadline]
        outputs = [
            EmbedOutput(r.request_id, None, error=f"request timed out after {r.deadline - r.arrival:g} s")
            for r in late
            if r.deadline is not None
        ]
        self.pending = [e for e in self.pending if e.request not in late]
        if not self.pending:
            return outputs
        order = sorted(self.pending, key=lambda e: (-int(e.request.priority), e.request.arrival))
        dimensions = order[0].request.dimensions
        chosen: list[tuple[_Embedding, list[list[int]]]] = []
        try:
            model = self.load()
            budget = self.step_tokens
            for item in order:
                if budget <= 0:
                    break
                if item.request.dimensions != dimensions:
                    continue
                ids: list[list[int]] = []
                for text in item.remaining:  # tokenised one by one: only what this step embeds
                    if budget <= 0:
                        break
                    ids += model.tokenize([text])
                    budget -= len(ids[-1])
                chosen.append((item, ids))
            vectors = model.embed_tokens([t for _, ids in chosen for t in ids], dimensions).tolist()
        except Exception as e:  # fail the requests of this step (the first, if none began), keep serving
            expected = isinstance(e, ValueError | registry.ModelError)  # bad input, or the model is not pulled
            if not expected:  # a bug or a kernel error
                log.error("embedding failed:\n%s", traceback.format_exc())
            failed = [item for item, _ in chosen] or order[:1]
            return outputs + self._fail(failed, str(e) if expected else "internal engine error")
        start = 0
        for item, ids in chosen:
            item.vectors += vectors[start : start + len(ids)]
            item.tokens += sum(map(len, ids))
            start += len(ids)
            if not item.remaining:
                self.pending.remove(item)
                outputs.append(EmbedOutput(item.request.request_id, item.vectors, item.tokens))
        return outputs

    def _fail(self, items: list[_Embedding], error: str) -> list[EmbedOutput]:
        self.pending = [e for e in self.pending if e not in items]
        return [EmbedOutput(e.request.request_id, None, error=error) for e in items]


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
    embedder = Embedder(model, settings.scheduler.max_embed_step_tokens)
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
