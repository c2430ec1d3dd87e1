"""The engine worker process: builds the EngineCore, then steps it until told to stop.

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
from wicore.logging import setup_logging
from wicore.models import registry
from wicore.models.embedding import EmbeddingModel

STATS_INTERVAL = 0.1  # seconds between scheduler snapshots sent to the HTTP process
EMBEDDING_MODEL = "all-minilm-l6-v2"

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
    """Pending embedding requests and the embedding model, loaded on first use (it is not needed to chat).

    One step embeds about `step_tokens` tokens (always at least one text), so a large request is spread
    over several steps with a generation step between each two: embeddings delay generation by one
    step's compute at most, and generation, which runs one step per loop too, cannot starve them."""

    def __init__(
        self,
        model_name: str = EMBEDDING_MODEL,
        step_tokens: int = SchedulerSettings.model_fields["max_embed_step_tokens"].default,
    ) -> None:
        self.model_name = model_name
        self.step_tokens = step_tokens
        self.model: EmbeddingModel | None = None
        self.pending: list[_Embedding] = []

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
            if self.model is None:
                self.model = EmbeddingModel.load(self.model_name)
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
                    ids += self.model.tokenize([text])
                    budget -= len(ids[-1])
                chosen.append((item, ids))
            vectors = self.model.embed_tokens([t for _, ids in chosen for t in ids], dimensions).tolist()
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


def run(settings_data: dict[str, Any], config: EngineConfig, requests: Queue, outputs: Queue) -> None:
    """Process entry point (spawned): `None` on the request queue stops it.  The worker has no
    tokenizer: token ids come in, token ids go out (`config` carries the end-of-sequence ids)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # Mojo owns the cores
    # Ctrl+C reaches the whole process group; the HTTP process decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Not PR_SET_PDEATHSIG: it fires when the spawning *thread* ends, and the client respawns workers
    # from its reader thread. The parent's pid changes (to a reaper's) once the HTTP process is gone,
    # SIGKILL (the OOM killer's signal) included.
    parent = os.getppid()
    settings = Settings(**settings_data)
    setup_logging(settings.logging)
    core = EngineCore.load(config)
    scheduler = core.scheduler
    embedder = Embedder(step_tokens=settings.scheduler.max_embed_step_tokens)
    outputs.put(Ready(settings.model.name))
    last_stats = 0.0
    while True:
        # Block only when idle; otherwise take what has arrived and go on stepping.
        batch: list[EngineOutput | EmbedOutput] = []
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
                    out = scheduler.cancel(msg.request_id, msg.reason)
                if out is not None:
                    batch.append(out)
                msg = requests.get_nowait()
        except queue.Empty:
            pass
        batch += embedder.step()
        if scheduler.has_work():
            try:
                batch += core.step()
            except Exception:  # a bug or a kernel error: fail the requests, keep serving
                log.error("engine step failed:\n%s", traceback.format_exc())
                batch += scheduler.abort_all("internal engine error")
        if batch:
            outputs.put(batch)
        now = time.monotonic()
        if os.getppid() != parent:
            log.warning("the HTTP process is gone: the engine worker exits")
            return
        # A finished request changes what /status shows: report it at once.
        finished = any(isinstance(out, EngineOutput) and out.finish_reason for out in batch)
        if now - last_stats >= STATS_INTERVAL or finished:
            outputs.put(scheduler.snapshot())
            last_stats = now
