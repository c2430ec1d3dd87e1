"""The OpenAI-compatible HTTP app: routes, SSE streaming, and the mapping of engine outcomes to HTTP.

The AIgo REST routes (aigo.py) and the Ollama-compatible ones (ollama.py) are added to the same app and
share `_Service`: the same scheduler, priorities, limits, auth and error envelope.

The only engine calls are EngineClient's async methods; tokenisation and chat templates run here (a few
milliseconds), model compute never does.  A request with `n` > 1 (or a batch of completion prompts) runs
as several engine sequences whose outputs are merged as they arrive.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.metadata
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jinja2
import numpy as np
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from wicore.config import Settings
from wicore.engine.client import EngineClient, EngineUnavailable, QueueFull
from wicore.engine.messages import EmbedRequest
from wicore.engine.request import EngineRequest, Priority, RequestOutput
from wicore.engine.worker import EMBEDDING_MODEL
from wicore.models import registry
from wicore.server.errors import APIError, install_error_handlers, validation_error
from wicore.server.metrics import Metrics, SequenceTimer
from wicore.server.middleware import (
    CLIENT_CLOSED,
    AuthMiddleware,
    RateLimitMiddleware,
    RequestContextMiddleware,
    ServerCounters,
    SlidingWindowLimiter,
)
from wicore.server.protocol import (
    CHAT_DEFAULT_MAX_TOKENS,
    COMPLETION_DEFAULT_MAX_TOKENS,
    MIN_LOGPROB,
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprob,
    ChatResponseMessage,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    HealthResponse,
    ModelCard,
    ModelList,
    RootResponse,
    SamplingRequest,
    StatusResponse,
    TopLogprob,
    UsageInfo,
)

try:
    VERSION = importlib.metadata.version("wicore")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"

perf_log = structlog.get_logger("wicore.perf")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(eq=False)
class _Seq:
    """One engine sequence of a response: choice `index`, generated from `request`."""

    index: int
    request: EngineRequest
    timer: SequenceTimer
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, out: RequestOutput) -> None:
        self.text.append(out.text)
        self.tokens += out.token_ids
        self.logprobs += out.logprobs
        self.top_logprobs += out.top_logprobs


def _cached_tokens(seqs: list[_Seq], n: int) -> int:
    """Prompt tokens served from the prefix cache, counted once per prompt as usage counts prompts
    (choice index = prompt * n + j: the first choice of each prompt stands for it)."""
    return sum(s.timer.cached_tokens for s in seqs[::n])


async def _merge(gens: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of several engine streams as they come, tagged with the stream's position.

    Closing this (or cancelling its consumer) cancels every stream, which sends the engine a Cancel for
    each unfinished request."""
    queue: asyncio.Queue[tuple[int, RequestOutput | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, gen: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in gen:
                queue.put_nowait((i, out, None))
        except Exception as e:  # handed to the consumer, which raises it
            queue.put_nowait((i, None, e))
        finally:
            await gen.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, out, error = await queue.get()
            if error is not None:
                raise error
            assert out is not None
            if out.finish_reason is not None:
                remaining -= 1
            yield i, out
    finally:
        for task in tasks:
            task.cancel()  # synchronously, so it happens even if the await below is cancelled
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _ClientGone(Exception):
    """The client closed the connection before the response began."""


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; if the client hangs up first, `work` is cancelled and _ClientGone raised.

    Starlette notices disconnects only while streaming a response; this covers a client that goes away
    while we wait for a non-streaming result."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait({task})  # let the cancellation reach the engine streams before answering
    raise _ClientGone


async def _first(items: AsyncIterator[T]) -> T:
    return await anext(items)


async def _chain(first: asyncio.Future[T], rest: AsyncIterator[T]) -> AsyncIterator[T]:
    # Cancelling the consumer while it awaits `first` cancels that task too (asyncio propagates it).
    yield await first
    async for item in rest:
        yield item


async def _parse(request: Request, model: type[M]) -> M:
    """The JSON body as `model`, whatever the Content-Type says (curl users often send none, and
    llama-server accepts that too)."""
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is required (a JSON object)")
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None


def _sse(model: BaseModel) -> str:
    return f"data: {model.model_dump_json()}\n\n"


SSE_DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class StreamFormat:
    """How a streamed response is framed: its media type, an error after it started, its last line."""

    media_type: str
    error: Callable[[APIError], str]
    done: str | None


SSE = StreamFormat("text/event-stream", lambda e: _sse(e.body()), SSE_DONE)
REFUSAL_WINDOW = 0.05  # seconds a streaming request waits for the engine client to accept or refuse it
MAX_EMBED_INPUTS = 2048  # OpenAI's limit; one request is one engine batch, so this bounds its compute
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Service:
    """Request handling shared by the routes; one per app."""

    def __init__(self, settings: Settings, engine: EngineClient, metrics: Metrics, counters: ServerCounters) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.counters = counters
        self._token_text: dict[int, str] = {}

    # -- checks ----------------------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.engine.model_name:
            raise APIError(
                404, f"the model `{model}` does not exist; this server serves `{self.engine.model_name}`", param="model"
            )

    def check_vocab(self, token_ids: list[int], param: str) -> None:
        vocab = self.engine.tokenizer.vocab_size
        bad = next((t for t in token_ids if t >= vocab), None)
        if bad is not None:
            raise APIError(400, f"{param}: token id {bad} is outside the vocabulary (size {vocab})", param=param)

    def max_tokens(self, prompt_len: int, requested: int | None, default: int, prompt_param: str, param: str) -> int:
        """Tokens to generate: `requested` if the context has room for it, else a 400."""
        limit = self.engine.max_model_len
        if prompt_len == 0:
            raise APIError(400, f"{prompt_param}: the prompt is empty", param=prompt_param)
        room = limit - prompt_len
        if room <= 0:
            raise APIError(
                400,
                f"{prompt_param}: the prompt has {prompt_len} tokens, the model's context holds {limit}",
                param=prompt_param,
            )
        if requested is None:
            return min(default, room)  # an unstated limit shrinks to fit, as in vLLM
        if requested > room:
            raise APIError(
                400,
                f"{param}: the model's context holds {limit} tokens; the prompt has {prompt_len} "
                f"and {param}={requested} would need {prompt_len + requested}",
                param=param,
            )
        return requested

    def check_fanout(self, count: int, param: str) -> None:
        most = self.settings.scheduler.max_concurrent
        if count > most:
            raise APIError(400, f"{param}: at most {most} sequences per request, got {count}", param=param)

    # -- running sequences -----------------------------------------------------------------------

    def new_seqs(
        self, body: SamplingRequest, prompts: list[list[int]], max_tokens: list[int],
        logprobs: int | None,
    ) -> tuple[str, list[_Seq]]:  # fmt: skip
        request_id = self.engine.new_request_id()
        now = time.time()
        deadline = now + self.settings.scheduler.request_timeout
        total = len(prompts) * body.n
        seqs = []
        for p, (prompt_ids, limit) in enumerate(zip(prompts, max_tokens, strict=True)):
            for j in range(body.n):
                index = p * body.n + j
                engine_request = EngineRequest(
                    request_id=request_id if total == 1 else f"{request_id}-{index}",
                    prompt_ids=prompt_ids,
                    params=body.sampling_params(limit, logprobs, seed_offset=j),
                    priority=body.engine_priority,
                    arrival=now,
                    deadline=deadline,
                )
                seqs.append(_Seq(index, engine_request, SequenceTimer(now)))
        return request_id, seqs

    def single(self, body: SamplingRequest, prompt_ids: list[int], prompt_param: str, max_param: str) -> _Seq:
        """The one engine sequence of an AIgo or Ollama request (those have no `n`)."""
        limit = self.max_tokens(len(prompt_ids), body.max_tokens, CHAT_DEFAULT_MAX_TOKENS, prompt_param, max_param)
        try:
            request_id, seqs = self.new_seqs(body, [prompt_ids], [limit], None)
        except ValueError as e:  # SamplingParams' own checks name the parameter
            raise APIError(400, str(e)) from None
        structlog.contextvars.bind_contextvars(completion_id=request_id)
        return seqs[0]

    async def run(self, seqs: list[_Seq]) -> AsyncGenerator[tuple[_Seq, RequestOutput], None]:
        """Every output of `seqs` as it arrives; raises APIError for refusals and failed sequences."""
        gens = [self.engine.generate(s.request) for s in seqs]
        try:
            async with aclosing(_merge(gens)) as merged:
                async for i, out in merged:
                    seq, now = seqs[i], time.time()
                    seq.timer.on_output(out, now)
                    if out.finish_reason is not None:
                        self._finished(seq, out.finish_reason, now)
                        if out.finish_reason not in ("stop", "length"):
                            raise self._failure(out)
                    yield seq, out
        except EngineUnavailable as e:
            raise APIError(503, str(e) or "the engine is not ready") from None
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}", headers={"Retry-After": "1"}) from None
        finally:
            for seq in seqs:
                # One that had outputs was running in the engine until we cancelled it.
                if seq.finish_reason is None and seq.timer.prompt_tokens:
                    self._finished(seq, "abort", time.time())

    def _failure(self, out: RequestOutput) -> APIError:
        if out.finish_reason == "timeout":
            return APIError(408, out.error or "the request timed out")
        if out.finish_reason == "error" and not self.engine.ready:
            return APIError(503, out.error or "the engine is restarting")
        return APIError(500, out.error or f"the request ended with {out.finish_reason}")

    def _finished(self, seq: _Seq, reason: str, now: float) -> None:
        seq.finish_reason = reason
        self.metrics.observe(seq.timer, reason, now)
        if self.settings.logging.enable_performance_logging:
            t = seq.timer
            tps = t.decode_tokens_per_s()
            perf_log.info(
                "generation",
                engine_request_id=seq.request.request_id,
                finish_reason=reason,
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                ttft_s=None if t.ttft is None else round(t.ttft, 4),
                tokens_per_s=None if tps is None else round(tps, 2),
                e2e_s=round(now - t.arrival, 4),
            )

    async def collect(self, seqs: list[_Seq]) -> None:
        async for seq, out in self.run(seqs):
            seq.add(out)

    async def respond(
        self, request: Request, seqs: list[_Seq], stream: bool, build: Callable[[], BaseModel],
        events: Callable[[AsyncIterator[tuple[_Seq, RequestOutput]]], AsyncGenerator[str, None]],
        fmt: StreamFormat = SSE,
    ) -> Response:  # fmt: skip
        if not stream:
            try:
                await _unless_disconnected(request, self.collect(seqs))
            except _ClientGone:
                return Response(status_code=CLIENT_CLOSED)
            return Response(build().model_dump_json(), media_type="application/json")
        outputs = self.run(seqs)
        first = asyncio.ensure_future(_first(outputs))
        # The engine client refuses at once (queue full, engine not ready): wait that long so a refusal keeps
        # its HTTP status, but not for the first token, which a queued request may wait for a long time.
        try:
            await asyncio.wait({first}, timeout=REFUSAL_WINDOW)
        except asyncio.CancelledError:
            first.cancel()
            raise
        if first.done():
            first.result()  # raises the refusal, if that is what it was
        return StreamingResponse(
            self._guarded(events(_chain(first, outputs)), outputs, fmt), media_type=fmt.media_type, headers=SSE_HEADERS
        )

    async def _guarded(
        self, events: AsyncGenerator[str, None], outputs: AsyncGenerator[tuple[_Seq, RequestOutput], None],
        fmt: StreamFormat,
    ) -> AsyncIterator[str]:  # fmt: skip
        """Errors once the stream has started go out as one error event (then [DONE] for SSE)."""
        try:
            # Closing `outputs` cancels the engine requests, also when the client disconnects mid-stream.
            async with aclosing(outputs), aclosing(events):
                async for event in events:
                    yield event
        except APIError as e:
            self.counters.error_count += 1
            yield fmt.error(e)
        except Exception:
            structlog.get_logger("wicore.server").exception("stream failed")
            self.counters.error_count += 1
            yield fmt.error(APIError(500, "internal server error"))
        if fmt.done is not None:
            yield fmt.done

    # -- logprobs --------------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.engine.tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    def chat_logprobs(
        self, token_ids: list[int], logprobs: list[float], top: list[list[tuple[int, float]]]
    ) -> ChatChoiceLogprobs:
        # `bytes` are the token's own bytes: joined over a response they give its UTF-8 text, also
        # where a character is split across tokens (whose `token` text then shows U+FFFD).
        token_bytes = self.engine.tokenizer.token_bytes
        content = []
        for k, (token_id, lp) in enumerate(zip(token_ids, logprobs, strict=False)):
            alternatives = [
                TopLogprob(token=self.token_text(i), logprob=max(v, MIN_LOGPROB), bytes=list(token_bytes(i)))
                for i, v in (top[k] if k < len(top) else [])
            ]
            content.append(
                ChatLogprob(
                    token=self.token_text(token_id),
                    logprob=max(lp, MIN_LOGPROB),
                    bytes=list(token_bytes(token_id)),
                    top_logprobs=alternatives,
                )  # fmt: skip
            )
        return ChatChoiceLogprobs(content=content)

    def completion_logprobs(
        self, token_ids: list[int], logprobs: list[float], top: list[list[tuple[int, float]]], offset: int,
        with_top: bool,
    ) -> CompletionLogprobs:  # fmt: skip
        result = CompletionLogprobs()
        for k, (token_id, lp) in enumerate(zip(token_ids, logprobs, strict=False)):
            text = self.token_text(token_id)
            result.tokens.append(text)
            result.token_logprobs.append(max(lp, MIN_LOGPROB))
            alternatives = top[k] if k < len(top) else []
            result.top_logprobs.append(
                {self.token_text(i): max(v, MIN_LOGPROB) for i, v in alternatives} if with_top else None
            )
            result.text_offset.append(offset)
            offset += len(text)
        return result

    # -- embeddings ------------------------------------------------------------------------------

    @functools.cached_property
    def embedding_dimensions(self) -> int:
        """The embedding model's size, read from its config (the model itself loads in the worker)."""
        try:
            folder = registry.resolve_embedding(EMBEDDING_MODEL)
        except registry.ModelError as e:
            raise APIError(503, str(e)) from None
        return int(json.loads((folder / "config.json").read_text())["hidden_size"])

    async def embed(
        self, request: Request, texts: list[str], dimensions: int | None, priority: Priority, input_param: str
    ) -> tuple[list[list[float]], int]:
        """The embeddings of `texts` (computed in the engine worker) and the tokens they were made from."""
        if not texts or any(not t for t in texts):
            raise APIError(400, f"{input_param}: expected non-empty text", param=input_param)
        if len(texts) > MAX_EMBED_INPUTS:
            raise APIError(
                400, f"{input_param}: at most {MAX_EMBED_INPUTS} texts per request, got {len(texts)}", param=input_param
            )
        size = self.embedding_dimensions
        if dimensions is not None and dimensions > size:
            raise APIError(
                400, f"dimensions: {EMBEDDING_MODEL} has {size} dimensions, got {dimensions}", param="dimensions"
            )
        now = time.time()
        deadline = now + self.settings.scheduler.request_timeout
        engine_request = EmbedRequest(self.engine.new_request_id(), texts, dimensions, priority, now, deadline)
        try:
            out = await _unless_disconnected(request, self.engine.embed(engine_request))
        except EngineUnavailable as e:
            raise APIError(503, str(e) or "the engine is not ready") from None
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}", headers={"Retry-After": "1"}) from None
        if out.embeddings is None:
            if time.time() >= deadline:
                raise APIError(408, out.error or "the request timed out")
            raise APIError(503 if not self.engine.ready else 500, out.error or "embedding failed")
        return out.embeddings, out.prompt_tokens

    async def embeddings(self, body: EmbeddingRequest, request: Request) -> Response:
        if body.model is not None and body.model.removeprefix("wicore:") != EMBEDDING_MODEL:
            raise APIError(
                404, f"the model `{body.model}` does not exist; embeddings use `{EMBEDDING_MODEL}`", param="model"
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        try:
            vectors, tokens = await self.embed(request, texts, body.dimensions, body.engine_priority, "input")
        except _ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        data = [
            EmbeddingData(index=i, embedding=_b64(v) if body.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ]
        response = EmbeddingResponse(data=data, model=EMBEDDING_MODEL, usage=EmbeddingUsage.of(tokens))
        return Response(response.model_dump_json(), media_type="application/json")

    # -- /v1/chat/completions --------------------------------------------------------------------

    def chat_prompt(self, conversation: list[dict[str, str]], param: str = "messages") -> list[int]:
        tokenizer = self.engine.tokenizer
        try:
            text = tokenizer.apply_chat_template(conversation)
        except (ValueError, jinja2.TemplateError) as e:
            raise APIError(400, f"{param}: {e}", param=param) from None
        return tokenizer.encode(text, add_special_tokens=False)  # the template writes BOS itself

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        self.check_model(body.model)
        self.check_fanout(body.n, "n")
        prompt_ids = self.chat_prompt(body.conversation())
        self.check_vocab([int(k) for k in body.logit_bias or {}], "logit_bias")
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        limit = self.max_tokens(len(prompt_ids), body.requested_max_tokens, CHAT_DEFAULT_MAX_TOKENS, "messages", param)
        try:
            request_id, seqs = self.new_seqs(body, [prompt_ids], [limit], body.num_logprobs)
        except ValueError as e:  # SamplingParams' own checks name the parameter
            raise APIError(400, str(e)) from None
        response_id, created, model = f"chatcmpl-{request_id}", int(time.time()), self.engine.model_name
        structlog.contextvars.bind_contextvars(completion_id=response_id)

        def build() -> ChatCompletionResponse:
            choices = [
                ChatCompletionChoice(
                    index=s.index,
                    message=ChatResponseMessage(content="".join(s.text)),
                    logprobs=self.chat_logprobs(s.tokens, s.logprobs, s.top_logprobs) if body.logprobs else None,
                    finish_reason=s.finish_reason,  # type: ignore[arg-type]
                )
                for s in seqs
            ]
            usage = UsageInfo.of(len(prompt_ids), sum(len(s.tokens) for s in seqs), _cached_tokens(seqs, body.n))
            return ChatCompletionResponse(id=response_id, created=created, model=model, choices=choices, usage=usage)

        def chunk(choice: ChatCompletionChunkChoice) -> str:
            return _sse(ChatCompletionChunk(id=response_id, created=created, model=model, choices=[choice]))

        async def events(outputs: AsyncIterator[tuple[_Seq, RequestOutput]]) -> AsyncGenerator[str, None]:
            completion_tokens = 0
            started: set[int] = set()
            async for seq, out in outputs:
                if seq.index not in started:  # each choice's first delta carries the role
                    started.add(seq.index)
                    yield chunk(
                        ChatCompletionChunkChoice(index=seq.index, delta=DeltaMessage(role="assistant", content=""))
                    )
                logprobs = None
                if body.logprobs and out.token_ids:
                    logprobs = self.chat_logprobs(out.token_ids, out.logprobs, out.top_logprobs)
                if out.text or logprobs is not None:
                    choice = ChatCompletionChunkChoice(
                        index=seq.index, delta=DeltaMessage(content=out.text), logprobs=logprobs
                    )
                    yield chunk(choice)
                if out.finish_reason is not None:
                    completion_tokens += out.completion_tokens
                    yield chunk(
                        ChatCompletionChunkChoice(
                            index=seq.index, delta=DeltaMessage(), finish_reason=out.finish_reason
                        )  # type: ignore[arg-type]
                    )
            if body.include_usage:
                usage = UsageInfo.of(len(prompt_ids), completion_tokens, _cached_tokens(seqs, body.n))
                final = ChatCompletionChunk(id=response_id, created=created, model=model, choices=[], usage=usage)
                yield _sse(final)

        return await self.respond(request, seqs, body.stream, build, events)

    # -- /v1/completions -------------------------------------------------------------------------

    async def complete(self, body: CompletionRequest, request: Request) -> Response:
        self.check_model(body.model)
        tokenizer = self.engine.tokenizer
        prompts = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in body.prompts()]
        self.check_fanout(len(prompts) * body.n, "n" if len(prompts) == 1 else "prompt")
        for ids in prompts:
            self.check_vocab(ids, "prompt")
        self.check_vocab([int(k) for k in body.logit_bias or {}], "logit_bias")
        requested = body.max_tokens if "max_tokens" in body.model_fields_set else None
        limits = [
            self.max_tokens(len(ids), requested, COMPLETION_DEFAULT_MAX_TOKENS, "prompt", "max_tokens")
            for ids in prompts
        ]
        try:
            request_id, seqs = self.new_seqs(body, prompts, limits, body.logprobs)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        response_id, created, model = f"cmpl-{request_id}", int(time.time()), self.engine.model_name
        structlog.contextvars.bind_contextvars(completion_id=response_id)
        prompt_tokens = sum(len(ids) for ids in prompts)
        with_top = bool(body.logprobs)

        def build() -> CompletionResponse:
            choices = [
                CompletionChoice(
                    index=s.index,
                    text="".join(s.text),
                    logprobs=None
                    if body.logprobs is None
                    else self.completion_logprobs(s.tokens, s.logprobs, s.top_logprobs, 0, with_top),
                    finish_reason=s.finish_reason,  # type: ignore[arg-type]
                )
                for s in seqs
            ]
            usage = UsageInfo.of(prompt_tokens, sum(len(s.tokens) for s in seqs), _cached_tokens(seqs, body.n))
            return CompletionResponse(id=response_id, created=created, model=model, choices=choices, usage=usage)

        def chunk(choice: CompletionChoice) -> str:
            return _sse(CompletionResponse(id=response_id, created=created, model=model, choices=[choice]))

        async def events(outputs: AsyncIterator[tuple[_Seq, RequestOutput]]) -> AsyncGenerator[str, None]:
            completion_tokens = 0
            text_len: dict[int, int] = {}  # characters sent per choice, for text_offset
            async for seq, out in outputs:
                logprobs = None
                offset = text_len.get(seq.index, 0)
                if body.logprobs is not None and out.token_ids:
                    logprobs = self.completion_logprobs(out.token_ids, out.logprobs, out.top_logprobs, offset, with_top)
                if out.text or logprobs is not None:
                    yield chunk(CompletionChoice(index=seq.index, text=out.text, logprobs=logprobs, finish_reason=None))
                    text_len[seq.index] = offset + len(out.text)
                if out.finish_reason is not None:
                    completion_tokens += out.completion_tokens
                    yield chunk(CompletionChoice(index=seq.index, text="", finish_reason=out.finish_reason))  # type: ignore[arg-type]
            if body.include_usage:
                usage = UsageInfo.of(prompt_tokens, completion_tokens, _cached_tokens(seqs, body.n))
                yield _sse(CompletionResponse(id=response_id, created=created, model=model, choices=[], usage=usage))

        return await self.respond(request, seqs, body.stream, build, events)


def _b64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the float32 little-endian bytes."""
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()


def create_app(settings: Settings, engine: EngineClient) -> FastAPI:
    """The server's ASGI app; its lifespan starts the engine worker and shuts it down."""
    api = settings.api
    if api.auth_enabled and not api.api_keys:
        raise ValueError("api.auth_enabled is true but api.api_key names no key")
    counters = ServerCounters()
    metrics = Metrics(engine.model_name, lambda: engine.stats)
    service = _Service(settings, engine, metrics, counters)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()

    app = FastAPI(title="WiCore", version=VERSION, lifespan=lifespan)
    install_error_handlers(app)
    # Added innermost first: the request id wraps everything, so 401s and 429s are logged with one too.
    if api.rate_limit_per_minute > 0:
        app.add_middleware(RateLimitMiddleware, limiter=SlidingWindowLimiter(api.rate_limit_per_minute))
    if api.auth_enabled:
        app.add_middleware(AuthMiddleware, keys=api.api_keys)
    app.add_middleware(
        RequestContextMiddleware, counters=counters, log_requests=settings.logging.enable_request_logging
    )

    @app.get("/")
    async def root() -> RootResponse:
        return RootResponse(version=VERSION)

    @app.get("/health", response_model=HealthResponse)
    async def health() -> JSONResponse:
        ready = engine.ready
        body = HealthResponse(
            status="healthy" if ready else "loading",
            version=VERSION,
            uptime=f"{time.time() - engine.started_at:.1f}",
            scheduler="running" if ready and engine.stats.running else "stopped",
            total_requests=str(counters.total_requests),
            error_count=str(counters.error_count),
            error_rate=f"{100 * counters.error_rate:.1f}%",
        )
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/status")
    async def status(request: Request) -> StatusResponse:
        server = request.scope.get("server")
        return StatusResponse.of(
            engine.stats,
            port=server[1] if server else api.port,  # the bound port, right even when started on port 0
            uptime=time.time() - engine.started_at,
            total_requests=counters.total_requests,
            error_count=counters.error_count,
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    def card() -> ModelCard:
        return ModelCard(id=engine.model_name, created=engine.created)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[card()])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> ModelCard:
        service.check_model(model_id)
        return card()

    @app.post("/v1/chat/completions", response_model=None)
    @app.post("/chat/completions", response_model=None, include_in_schema=False)
    async def chat(request: Request) -> Response:
        return await service.chat(await _parse(request, ChatCompletionRequest), request)

    @app.post("/v1/completions", response_model=None)
    @app.post("/completions", response_model=None, include_in_schema=False)
    async def completions(request: Request) -> Response:
        return await service.complete(await _parse(request, CompletionRequest), request)

    @app.post("/v1/embeddings", response_model=None)
    @app.post("/embeddings", response_model=None, include_in_schema=False)
    async def embeddings(request: Request) -> Response:
        return await service.embeddings(await _parse(request, EmbeddingRequest), request)

    # Imported here: both modules build on this one's service and helpers.
    from wicore.server import aigo, ollama

    app.include_router(aigo.router(service))
    app.include_router(ollama.router(service))
    return app
