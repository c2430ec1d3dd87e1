"""The HTTP process's handle on one model's engine worker process.

`generate()` is an async iterator over a request's outputs; `embed()` awaits
one embedding request's result.  Only token ids cross to the worker and back:
the client is the output processor (vLLM's), which owns the tokenizer, turns
each request's tokens into text, cuts stop strings and, on a stop string,
cancels the request in the worker.  A reader thread takes the worker's
messages off a multiprocessing queue and hands them to the event loop; the
loop itself never blocks on the engine.  The client also enforces the bounded
queue (429), the deadline (in case the worker stalls), and, when the worker
dies, ends every in-flight request with an error and starts a new worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing as mp
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from wicore.config import Settings
from wicore.engine import worker
from wicore.engine.core import WORKER_RUNTIME_BYTES, EngineConfig, memory_estimate, prepare
from wicore.engine.detokenizer import Detokenizer
from wicore.engine.messages import Cancel, EmbedOutput, EmbedRequest, Ready, SchedulerStats
from wicore.engine.request import EngineOutput, EngineRequest, FinishReason, RequestOutput
from wicore.models import registry
from wicore.tokenizer import Tokenizer

log = logging.getLogger("wicore.engine")
# Past its deadline the worker ends a request itself; the client waits this much longer before
# giving up on a worker that stopped answering.
DEADLINE_GRACE = 2.0


class EngineUnavailable(Exception):
    """The model is still loading, or the worker died and is restarting."""


class QueueFull(Exception):
    """More requests are waiting than the bounded queue holds."""


class EngineClient:
    """One model's worker: a generative model's (`engine_config` and `tokenizer` set) or an embedding
    model's. `memory` is the worker's estimated size in bytes (see core.memory_estimate)."""

    def __init__(
        self, settings: Settings, model_name: str, engine_config: EngineConfig | None, tokenizer: Tokenizer | None,
        memory: int,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.model_name = model_name
        self.engine_config = engine_config
        self._tokenizer = tokenizer
        self.max_model_len = 0 if engine_config is None else engine_config.max_model_len
        self.memory = memory
        self.created = int(time.time())
        self.started_at = time.time()
        self.stats = SchedulerStats(running=False)
        self.worker_restarts = 0  # workers that died and were started again
        self._ready = False
        self._ready_event = asyncio.Event()
        self._streams: dict[str, asyncio.Queue[EngineOutput]] = {}
        self._embeds: dict[str, asyncio.Future[EmbedOutput]] = {}
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(4)
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: Any = None
        self._requests: Any = None
        self._outputs: Any = None
        self._reader: threading.Thread | None = None
        self._failures = 0  # consecutive worker deaths before reaching Ready

    @classmethod
    def generative(cls, settings: Settings, model_name: str, source: str) -> EngineClient:
        """The client of the generative model served as `model_name` from `source` (a name or a GGUF path);
        reads the model's metadata (a second or so for a large vocabulary), not its weights."""
        model = settings.model.model_copy(update={"name": source})
        tokenizer, config, engine_config = prepare(model, settings.scheduler)
        return cls(settings, model_name, engine_config, tokenizer, memory_estimate(engine_config, config))

    @classmethod
    def embedding(cls, settings: Settings, model_name: str) -> EngineClient:
        """The client of a bundled embedding model; its worker holds the float32 weights in memory."""
        weights = registry.resolve_embedding(model_name) / registry.EMBEDDINGS[model_name].weights
        return cls(settings, model_name, None, None, weights.stat().st_size + WORKER_RUNTIME_BYTES)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise TypeError(f"{self.model_name} is an embedding model: it has no generation tokenizer")
        return self._tokenizer

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def ready(self) -> bool:
        return self._ready and self._proc is not None and self._proc.is_alive()

    @property
    def in_flight(self) -> int:
        return len(self._streams) + len(self._embeds)

    def new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):08x}"

    async def wait_ready(self, deadline: float) -> None:
        """Return once the worker has loaded the model (at once if it has), waiting until `deadline` (a
        time.time()) at most: then EngineUnavailable."""
        while not self.ready:
            try:
                await asyncio.wait_for(self._ready_event.wait(), max(0.0, deadline - time.time()))
            except TimeoutError:
                raise EngineUnavailable(f"the model {self.model_name} is still loading") from None
            if not self.ready:  # it died just after: wait for the next worker
                await asyncio.sleep(0.05)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()
        self._reader = threading.Thread(target=self._read_loop, name="wicore-engine-reader", daemon=True)
        self._reader.start()

    async def shutdown(self) -> None:
        self._stopping.set()
        self._ready = False
        self._ready_event.clear()
        # The reader restarts dead workers: once it has stopped, none can be started behind our back.
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5)
        if self._requests is not None:
            self._requests.put(None)
        if self._proc is not None:
            await asyncio.to_thread(self._proc.join, 10)
            if self._proc.is_alive():
                self._proc.kill()

    def _check_admission(self) -> None:
        if not self.ready:
            raise EngineUnavailable(
                f"the engine of {self.model_name} is not ready (model loading or worker restarting)"
            )
        limit = self.settings.scheduler.max_concurrent + self.settings.scheduler.max_queue_size
        if self.in_flight >= limit:
            raise QueueFull(f"{self.in_flight} requests in flight; the queue holds {limit}")

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        self._check_admission()
        stream: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self._streams[request.request_id] = stream
        detokenizer = Detokenizer(self.tokenizer, request.params.stop)
        finished = False
        try:
            self._requests.put(request)
            while not finished:
                timeout = None if request.deadline is None else request.deadline - time.time() + DEADLINE_GRACE
                try:
                    engine_out = await asyncio.wait_for(stream.get(), timeout)
                except TimeoutError:
                    assert request.deadline is not None  # only a deadline sets a timeout
                    elapsed = request.deadline - request.arrival
                    engine_out = EngineOutput(
                        request.request_id, [], finish_reason=FinishReason.TIMEOUT,
                        error=f"request timed out after {elapsed:g} s",
                    )  # fmt: skip
                out = detokenizer.process(engine_out)
                finished = out.finish_reason is not None
                if finished and engine_out.finish_reason is None:
                    # A stop string: the worker still runs the request; end it there too.
                    self._requests.put(Cancel(request.request_id, FinishReason.STOP))
                yield out
        finally:
            self._streams.pop(request.request_id, None)
            if not finished and self._requests is not None:
                # The consumer went away (client disconnect) or timed out: free the sequence.
                self._requests.put(Cancel(request.request_id))

    async def embed(self, request: EmbedRequest) -> EmbedOutput:
        self._check_admission()
        future: asyncio.Future[EmbedOutput] = asyncio.get_running_loop().create_future()
        self._embeds[request.request_id] = future
        finished = False
        try:
            self._requests.put(request)
            timeout = None if request.deadline is None else request.deadline - time.time() + DEADLINE_GRACE
            try:
                out = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                assert request.deadline is not None  # only a deadline sets a timeout
                elapsed = request.deadline - request.arrival
                out = EmbedOutput(request.request_id, None, error=f"request timed out after {elapsed:g} s")
            finished = True
            return out
        finally:
            self._embeds.pop(request.request_id, None)
            if not finished and self._requests is not None:
                self._requests.put(Cancel(request.request_id))  # the caller went away: drop the work

    # -- worker process and its messages ----------------------------------------------------------

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")
        self._requests = ctx.Queue()
        self._outputs = ctx.Queue()
        self._proc = ctx.Process(
            target=worker.run,
            args=(self.settings.model_dump(), self.model_name, self.engine_config, self._requests, self._outputs),
            name=f"wicore-engine-{self.model_name}",
            daemon=True,
        )
        self._proc.start()
        log.info("engine worker of %s started (pid %s)", self.model_name, self._proc.pid)

    def _read_loop(self) -> None:
        assert self._loop is not None
        while not self._stopping.is_set():
            try:
                msg = self._outputs.get(timeout=0.2)
            except queue.Empty:
                if not self._stopping.is_set() and not self._proc.is_alive():
                    self._loop.call_soon_threadsafe(self._on_worker_death, self._proc.exitcode)
                    # A worker that keeps dying before it is ready is retried ever more slowly; shutdown
                    # cuts the wait short, and then no worker is started.
                    self._failures = 0 if self._ready else self._failures + 1
                    if not self._stopping.wait(min(30.0, 0.5 * 2**self._failures) if self._failures else 0.0):
                        self._spawn()
                continue
            except (EOFError, OSError, ValueError):  # the queue broke with the worker
                continue
            self._loop.call_soon_threadsafe(self._dispatch, msg)

    def _dispatch(self, msg: object) -> None:
        if isinstance(msg, Ready):
            self.created = int(time.time())
            self._ready = True
            self._ready_event.set()
            self.stats = replace(self.stats, running=True)  # an embedding worker sends no other stats
            log.info("engine ready: %s", msg.model)
        elif isinstance(msg, SchedulerStats):
            self.stats = msg
        elif isinstance(msg, list):
            for out in msg:
                if isinstance(out, EmbedOutput):
                    future = self._embeds.get(out.request_id)
                    if future is not None and not future.done():
                        future.set_result(out)
                    continue
                stream = self._streams.get(out.request_id)
                if stream is not None:
                    stream.put_nowait(out)

    def _on_worker_death(self, exitcode: int | None) -> None:
        self._ready = False
        self._ready_event.clear()
        self.stats = SchedulerStats(running=False)
        self.worker_restarts += 1
        log.error("engine worker of %s died (exit code %s); restarting it", self.model_name, exitcode)
        for request_id, stream in list(self._streams.items()):
            stream.put_nowait(
                EngineOutput(request_id, [], finish_reason=FinishReason.ERROR, error="the engine worker died")
            )
        for request_id, future in list(self._embeds.items()):
            if not future.done():
                future.set_result(EmbedOutput(request_id, None, error="the engine worker died"))
