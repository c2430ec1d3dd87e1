"""The generation service every surface (OpenAI, AIgo, Ollama) shares, bound to the engine of the model a
request named (server/models.py hands one out per request, with the engine leased for the response).

A surface parses its request, converts it into one GenerationRequest (prompt token ids plus the shared
sampling parameters) and renders the outputs; everything between is here: the checks against the model
(vocabulary, context length, fan-out), the engine sequences of a request (`n` > 1 and batches of prompts
run as several, merged as they arrive), the mapping of engine refusals and failures to HTTP errors,
metrics and performance logs, chat templates and embeddings.

The only engine calls are EngineClient's async methods; tokenisation and chat templates run here (a few
milliseconds), model compute never does.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2
import structlog
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from wicore.config import Settings
from wicore.engine.client import EngineClient, EngineUnavailable, QueueFull
from wicore.engine.messages import EmbedRequest
from wicore.engine.request import EngineRequest, FinishReason, Priority, RequestOutput
from wicore.server.catalogue import Catalogue
from wicore.server.errors import APIError
from wicore.server.metrics import Metrics, SequenceTimer
from wicore.server.middleware import ServerCounters
from wicore.server.protocol import SamplingRequest
from wicore.server.streaming import StreamFormat, merge, respond, unless_disconnected

perf_log = structlog.get_logger("wicore.perf")
MAX_EMBED_INPUTS = 2048  # OpenAI's limit
EMBED_COUNT_CAP = 4  # x the embedding model's limit: inputs that are not cut are counted exactly up to this


@dataclass(eq=False)
class ChoiceSequence:
    """The engine sequence behind one choice of a response: choice `index`, generated from `request`,
    and what it produced so far."""

    index: int
    request: EngineRequest
    timer: SequenceTimer
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list[float | None] = field(default_factory=list)
    prompt_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    def add(self, out: RequestOutput) -> None:
        self.text.append(out.text)
        self.tokens += out.token_ids
        self.logprobs += out.logprobs
        self.top_logprobs += out.top_logprobs
        self.prompt_logprobs += out.prompt_logprobs
        self.prompt_top_logprobs += out.prompt_top_logprobs


Outputs = AsyncIterator[tuple[ChoiceSequence, RequestOutput]]


def cached_tokens(seqs: list[ChoiceSequence], n: int) -> int:
    """Prompt tokens served from the prefix cache, counted once per prompt as usage counts prompts
    (choice index = prompt * n + j: the first choice of each prompt stands for it)."""
    return sum(s.timer.cached_tokens for s in seqs[::n])


@dataclass(frozen=True)
class GenerationRequest:
    """The one internal form of a generation request, whichever surface it came through.

    Each prompt runs `sampling.n` times; the `*_param` names are the surface's, for error messages."""

    prompts: list[list[int]]
    sampling: SamplingRequest
    max_tokens: int | None  # as requested; None: `default_max_tokens`, shrunk to fit the context
    default_max_tokens: int
    logprobs: int | None = None  # alternatives reported per token; None: no logprobs
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo); None: not scored
    prompt_param: str = "prompt"
    max_tokens_param: str = "max_tokens"
    fanout_param: str = "n"
    grammar: str | None = None  # the llguidance grammar every output follows (checked by the surface)


@contextmanager
def _engine_refusals() -> Iterator[None]:
    """The engine client's refusals as HTTP errors."""
    try:
        yield
    except EngineUnavailable as e:
        raise APIError(503, str(e) or "the engine is not ready") from None
    except QueueFull as e:
        raise APIError(429, f"server busy: {e}", headers={"Retry-After": "1"}) from None


class GenerationService:
    """Request handling shared by every surface's routes."""

    def __init__(
        self, settings: Settings, engine: EngineClient, metrics: Metrics, counters: ServerCounters,
        catalogue: Catalogue, load_seconds: float = 0.0,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.engine = engine
        # How long this request waited for its model to load (Ollama's load_duration); ~0 when loaded.
        self.load_seconds = load_seconds
        self.metrics = metrics
        self.counters = counters
        self.catalogue = catalogue

    # -- checks ----------------------------------------------------------------------------------

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

    # -- prompts ---------------------------------------------------------------------------------

    # Prompts are tokenised on the event loop up to this many characters (a thread hop costs more than
    # they do); longer ones in a thread, where tokenizers releases the GIL, so /health and the other
    # clients never wait on one large request.
    INLINE_CHARS = 8192

    async def encode(self, text: str, param: str = "prompt") -> list[int]:
        """Token ids of a prompt text (BOS first when the model wants it)."""
        if len(text) <= self.INLINE_CHARS:
            return self.engine.tokenizer.encode(text)
        return await asyncio.to_thread(self._encode_long, text, param)

    async def chat_prompt(
        self, conversation: list[dict[str, Any]], param: str = "messages", *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """Token ids of a conversation rendered by the model's chat template (with `tools` for a template
        that has a tools section: server/tools.py's template_inputs gives both)."""
        chars = sum(len(str(m.get("content") or "")) for m in conversation) + len(str(tools or ""))
        if chars <= self.INLINE_CHARS:
            return self._render_chat(conversation, tools, param)
        return await asyncio.to_thread(self._render_long_chat, conversation, tools, chars, param)

    def _check_length(self, chars: int, param: str) -> None:
        """Refuse, before tokenising, a text too long for the context whatever its tokens: none spells
        more than `max_token_bytes` bytes, and a character is at least one byte."""
        limit = self.engine.max_model_len
        if chars > limit * self.engine.tokenizer.max_token_bytes:
            raise APIError(
                400, f"{param}: {chars} characters cannot fit the model's context of {limit} tokens", param=param
            )

    def _encode_long(self, text: str, param: str) -> list[int]:
        self._check_length(len(text), param)
        return self.engine.tokenizer.encode(text)

    def _render_long_chat(
        self, conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None, chars: int, param: str
    ) -> list[int]:
        self._check_length(chars, param)
        return self._render_chat(conversation, tools, param)

    def _render_chat(self, conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None, param: str) -> (
        list[int]
    ):  # fmt: skip
        tokenizer = self.engine.tokenizer
        try:
            text = tokenizer.apply_chat_template(conversation, tools=tools)
        except (ValueError, jinja2.TemplateError) as e:
            raise APIError(400, f"{param}: {e}", param=param) from None
        return tokenizer.encode(text, add_special_tokens=False)  # the template writes BOS itself

    # -- running sequences -----------------------------------------------------------------------

    def start(self, req: GenerationRequest) -> tuple[str, list[ChoiceSequence]]:
        """The request id and the engine sequences of `req` (not yet submitted), after every check."""
        body = req.sampling
        self.check_fanout(len(req.prompts) * body.n, req.fanout_param)
        self.check_vocab([int(k) for k in body.logit_bias or {}], "logit_bias")
        limits = [
            self.max_tokens(len(ids), req.max_tokens, req.default_max_tokens, req.prompt_param, req.max_tokens_param)
            for ids in req.prompts
        ]
        request_id = self.engine.new_request_id()
        now = time.time()
        deadline = now + self.settings.scheduler.request_timeout
        total = len(req.prompts) * body.n
        seqs = []
        try:
            for p, (prompt_ids, limit) in enumerate(zip(req.prompts, limits, strict=True)):
                for j in range(body.n):
                    index = p * body.n + j
                    engine_request = EngineRequest(
                        request_id=request_id if total == 1 else f"{request_id}-{index}",
                        prompt_ids=prompt_ids,
                        params=replace(
                            body.sampling_params(limit, req.logprobs, req.prompt_logprobs, seed_offset=j),
                            grammar=req.grammar,
                        ),
                        priority=body.engine_priority,
                        arrival=now,
                        deadline=deadline,
                    )
                    seqs.append(ChoiceSequence(index, engine_request, SequenceTimer(now)))
        except ValueError as e:  # SamplingParams' own checks name the parameter
            raise APIError(400, str(e)) from None
        structlog.contextvars.bind_contextvars(completion_id=request_id)
        return request_id, seqs

    async def run(self, seqs: list[ChoiceSequence]) -> AsyncGenerator[tuple[ChoiceSequence, RequestOutput], None]:
        """Every output of `seqs` as it arrives, after adding it to its sequence; raises APIError for
        refusals and failed sequences."""
        gens = [self.engine.generate(s.request) for s in seqs]
        try:
            with _engine_refusals():
                async with aclosing(merge(gens)) as merged:
                    async for i, out in merged:
                        seq, now = seqs[i], time.time()
                        seq.add(out)
                        seq.timer.on_output(out, now)
                        if out.finish_reason is not None:
                            self._finished(seq, out.finish_reason, now)
                            if out.finish_reason not in ("stop", "length"):
                                raise self._failure(out)
                        yield seq, out
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

    def _finished(self, seq: ChoiceSequence, reason: FinishReason, now: float) -> None:
        seq.finish_reason = reason
        self.metrics.observe(self.engine.model_name, seq.timer, reason, now)
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

    async def respond(
        self, request: Request, seqs: list[ChoiceSequence], stream: bool, build: Callable[[], BaseModel],
        events: Callable[[Outputs], AsyncGenerator[str, None]], fmt: StreamFormat,
    ) -> Response:  # fmt: skip
        """Run `seqs`: the JSON `build()` makes once they finished, or the stream `events` makes."""
        return await respond(request, self.run(seqs), stream, build, events, fmt, self.counters)

    # -- embeddings ------------------------------------------------------------------------------

    async def embed(
        self, request: Request, texts: list[str], dimensions: int | None, priority: Priority, input_param: str,
        truncate: bool,
    ) -> tuple[list[list[float]], int]:  # fmt: skip
        """The embeddings of `texts` (computed in the engine worker) and the tokens they were made from;
        raises ClientGone if the client hangs up first. A text longer than the model's limit is cut
        there when `truncate`, else it is a 400."""
        if not texts or any(not t for t in texts):
            raise APIError(400, f"{input_param}: expected non-empty text", param=input_param)
        if len(texts) > MAX_EMBED_INPUTS:
            raise APIError(
                400, f"{input_param}: at most {MAX_EMBED_INPUTS} texts per request, got {len(texts)}", param=input_param
            )
        name = self.engine.model_name
        size = self.catalogue.embedding_dimensions(name)
        limit = self.catalogue.embedding_max_length(name)
        # Inputs are counted up to a cap only, so a huge text costs what its first tokens cost: the limit
        # where they are cut, else a few times it, to say by how much one is over. Long inputs are counted
        # in a thread, as long prompts are tokenised.
        cap = limit if truncate else EMBED_COUNT_CAP * limit
        count = functools.partial(self.catalogue.embedding_lengths, name, cap=cap)
        long = sum(map(len, texts)) > self.INLINE_CHARS
        lengths = await asyncio.to_thread(count, texts) if long else count(texts)
        for i, length in enumerate(lengths):
            if length > limit:
                where = input_param if len(texts) == 1 else f"{input_param}[{i}]"
                tokens = f"at least {length}" if length == cap else str(length)
                raise APIError(
                    400, f"{where}: {tokens} tokens, more than {name}'s limit of {limit} tokens", param=input_param
                )
        budget = self.settings.api.max_embedding_tokens
        if sum(lengths) > budget:
            raise APIError(
                400,
                f"{input_param}: {sum(lengths)} tokens in all, more than the {budget} one request may embed "
                "(api.max_embedding_tokens)",
                param=input_param,
            )
        if dimensions is not None and dimensions > size:
            raise APIError(400, f"dimensions: {name} has {size} dimensions, got {dimensions}", param="dimensions")
        now = time.time()
        deadline = now + self.settings.scheduler.request_timeout
        engine_request = EmbedRequest(self.engine.new_request_id(), texts, dimensions, priority, now, deadline)
        with _engine_refusals():
            out = await unless_disconnected(request, self.engine.embed(engine_request))
        if out.embeddings is None:
            if time.time() >= deadline:
                raise APIError(408, out.error or "the request timed out")
            raise APIError(503 if not self.engine.ready else 500, out.error or "embedding failed")
        return out.embeddings, out.prompt_tokens
