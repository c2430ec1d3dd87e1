"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models
(the /v1-less paths too, as llama-server and vLLM accept them).

Streams are SSE ending with `data: [DONE]`; an error after the stream began is one `data: {"error": ...}`
event before it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncGenerator

import numpy as np
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from wicore.server.errors import APIError
from wicore.server.models import ServedModels
from wicore.server.openai.logprobs import LogprobRenderer
from wicore.server.openai.protocol import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    ResponseFormat,
    UsageInfo,
    openai_finish_reason,
)
from wicore.server.openai.tool_calls import ChatTools
from wicore.server.openapi import NOT_FOUND, documented
from wicore.server.protocol import CHAT_DEFAULT_MAX_TOKENS, parse_body
from wicore.server.service import GenerationRequest, Outputs, cached_tokens
from wicore.server.streaming import StreamFormat, sse
from wicore.server.tools import call_format

SSE_DONE = "data: [DONE]\n\n"
OPENAI_SSE = StreamFormat("text/event-stream", lambda e: sse(e.body()), SSE_DONE)


def _b64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the float32 little-endian bytes."""
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()


def response_grammar(response_format: ResponseFormat | None) -> str | None:
    """The grammar `response_format` asks for, checked before anything is queued: a schema llguidance
    cannot compile is the client's mistake (400)."""
    try:
        return None if response_format is None else response_format.grammar()
    except ValueError as e:
        raise APIError(400, str(e), param="response_format") from None


def router(models: ServedModels) -> APIRouter:
    api = APIRouter()
    catalogue = models.catalogue

    def cards() -> list[ModelCard]:
        """Every model the server can serve, and whether it is loaded."""
        return [
            ModelCard(id=e.name, created=int(e.path.stat().st_mtime), loaded=models.state(e.name) == "loaded")
            for e in catalogue.entries().values()
        ]

    @api.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=cards())

    @api.get("/v1/models/{model_id:path}", **documented(errors=NOT_FOUND))
    async def model(model_id: str) -> ModelCard:
        catalogue.entry(model_id)  # a 404 listing the models if there is no such one
        return next(card for card in cards() if card.id == model_id)

    @api.post(
        "/v1/chat/completions",
        response_model=None,
        **documented(ChatCompletionRequest, ChatCompletionResponse, stream=OPENAI_SSE.media_type),
    )
    @api.post("/chat/completions", response_model=None, include_in_schema=False)
    async def chat(request: Request) -> Response:
        body = await parse_body(request, ChatCompletionRequest)
        service = await models.service(request, body.model)
        engine, render = service.engine, LogprobRenderer(service.engine.tokenizer)
        tools = ChatTools(body, call_format(engine.tokenizer))
        grammar = tools.grammar(response_grammar(body.response_format))
        conversation, template_tools = tools.template_inputs()
        prompt_ids = await service.chat_prompt(conversation, tools=template_tools)
        request_id, seqs = service.start(
            GenerationRequest(
                [prompt_ids], body, body.requested_max_tokens, CHAT_DEFAULT_MAX_TOKENS, body.num_logprobs,
                prompt_param="messages",
                max_tokens_param="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
                grammar=grammar,
            )
        )  # fmt: skip
        response_id, created, model = f"chatcmpl-{request_id}", int(time.time()), engine.model_name
        structlog.contextvars.bind_contextvars(completion_id=response_id)

        def build() -> ChatCompletionResponse:
            messages = [tools.message("".join(s.text)) for s in seqs]
            choices = [
                ChatCompletionChoice(
                    index=s.index,
                    message=message,
                    logprobs=render.chat(s.tokens, s.logprobs, s.top_logprobs) if body.logprobs else None,
                    finish_reason=tools.finish_reason(s.finish_reason, message),
                )
                for s, message in zip(seqs, messages, strict=True)
            ]
            usage = UsageInfo.of(len(prompt_ids), sum(len(s.tokens) for s in seqs), cached_tokens(seqs, body.n))
            return ChatCompletionResponse(id=response_id, created=created, model=model, choices=choices, usage=usage)

        def chunk(choice: ChatCompletionChunkChoice) -> str:
            return sse(ChatCompletionChunk(id=response_id, created=created, model=model, choices=[choice]))

        async def events(outputs: Outputs) -> AsyncGenerator[str, None]:
            completion_tokens = 0
            started: set[int] = set()
            async for seq, out in outputs:
                if seq.index not in started:  # each choice's first delta carries the role
                    started.add(seq.index)
                    yield chunk(ChatCompletionChunkChoice(index=seq.index, delta=tools.first_delta()))
                logprobs = None
                if body.logprobs and out.token_ids:
                    logprobs = render.chat(out.token_ids, out.logprobs, out.top_logprobs)
                deltas = tools.deltas(seq.index, out.text, done=out.finish_reason is not None)
                if logprobs is not None and not deltas:
                    deltas = [DeltaMessage(content="")]
                for k, delta in enumerate(deltas):  # logprobs ride on the output's first delta
                    lps = logprobs if k == 0 else None
                    yield chunk(ChatCompletionChunkChoice(index=seq.index, delta=delta, logprobs=lps))
                if out.finish_reason is not None:
                    completion_tokens += out.completion_tokens
                    reason = tools.stream_finish_reason(seq.index, out.finish_reason)
                    yield chunk(ChatCompletionChunkChoice(index=seq.index, delta=DeltaMessage(), finish_reason=reason))
            if body.include_usage:
                usage = UsageInfo.of(len(prompt_ids), completion_tokens, cached_tokens(seqs, body.n))
                yield sse(ChatCompletionChunk(id=response_id, created=created, model=model, choices=[], usage=usage))

        return await service.respond(request, seqs, body.stream, build, events, OPENAI_SSE)

    @api.post(
        "/v1/completions",
        response_model=None,
        **documented(CompletionRequest, CompletionResponse, stream=OPENAI_SSE.media_type),
    )
    @api.post("/completions", response_model=None, include_in_schema=False)
    async def completions(request: Request) -> Response:
        body = await parse_body(request, CompletionRequest)
        service = await models.service(request, body.model)
        engine, render = service.engine, LogprobRenderer(service.engine.tokenizer)
        tokenizer = engine.tokenizer
        given = body.prompts()
        prompts = [await service.encode(p) if isinstance(p, str) else list(p) for p in given]
        for ids in prompts:
            service.check_vocab(ids, "prompt")
        request_id, seqs = service.start(
            GenerationRequest(
                prompts, body, body.max_tokens if "max_tokens" in body.model_fields_set else None,
                COMPLETION_DEFAULT_MAX_TOKENS, body.logprobs, body.logprobs if body.echo else None,
                fanout_param="n" if len(prompts) == 1 else "prompt", grammar=response_grammar(body.response_format),
            )
        )  # fmt: skip
        response_id, created, model = f"cmpl-{request_id}", int(time.time()), engine.model_name
        structlog.contextvars.bind_contextvars(completion_id=response_id)
        prompt_tokens = sum(len(ids) for ids in prompts)
        with_top = bool(body.logprobs)
        # echo: each choice's text starts with its prompt (choice i of prompt p is p * n + i, as fan-out orders them).
        echoed = [("" if not body.echo else p if isinstance(p, str) else tokenizer.decode(p)) for p in given]

        def echo(index: int) -> str:
            return echoed[index // body.n]

        def echo_logprobs(index: int, logprobs: list[float | None], top: list[list[tuple[int, float]]]) -> (
            CompletionLogprobs | None
        ):  # fmt: skip
            """The echoed prompt's tokens, scored, when logprobs are asked for."""
            if body.logprobs is None or not body.echo:
                return None
            return render.completion(prompts[index // body.n], logprobs, top, 0, with_top)

        def build() -> CompletionResponse:
            choices = [
                CompletionChoice(
                    index=s.index,
                    text=echo(s.index) + "".join(s.text),
                    logprobs=None
                    if body.logprobs is None
                    else CompletionLogprobs.joined(
                        echo_logprobs(s.index, s.prompt_logprobs, s.prompt_top_logprobs),
                        render.completion(s.tokens, s.logprobs, s.top_logprobs, len(echo(s.index)), with_top),
                    ),
                    finish_reason=openai_finish_reason(s.finish_reason),
                )
                for s in seqs
            ]
            usage = UsageInfo.of(prompt_tokens, sum(len(s.tokens) for s in seqs), cached_tokens(seqs, body.n))
            return CompletionResponse(id=response_id, created=created, model=model, choices=choices, usage=usage)

        def chunk(choice: CompletionChoice) -> str:
            return sse(CompletionResponse(id=response_id, created=created, model=model, choices=[choice]))

        async def events(outputs: Outputs) -> AsyncGenerator[str, None]:
            completion_tokens = 0
            text_len: dict[int, int] = {}  # characters sent per choice, for text_offset
            async for seq, out in outputs:
                if body.echo and seq.index not in text_len:
                    text_len[seq.index] = len(echo(seq.index))
                    prompt_logprobs = echo_logprobs(seq.index, out.prompt_logprobs, out.prompt_top_logprobs)
                    yield chunk(
                        CompletionChoice(
                            index=seq.index, text=echo(seq.index), logprobs=prompt_logprobs, finish_reason=None
                        )
                    )
                logprobs = None
                offset = text_len.get(seq.index, 0)
                if body.logprobs is not None and out.token_ids:
                    logprobs = render.completion(out.token_ids, out.logprobs, out.top_logprobs, offset, with_top)
                if out.text or logprobs is not None:
                    yield chunk(CompletionChoice(index=seq.index, text=out.text, logprobs=logprobs, finish_reason=None))
                    text_len[seq.index] = offset + len(out.text)
                if out.finish_reason is not None:
                    completion_tokens += out.completion_tokens
                    yield chunk(
                        CompletionChoice(
                            index=seq.index, text="", finish_reason=openai_finish_reason(out.finish_reason)
                        )
                    )
            if body.include_usage:
                usage = UsageInfo.of(prompt_tokens, completion_tokens, cached_tokens(seqs, body.n))
                yield sse(CompletionResponse(id=response_id, created=created, model=model, choices=[], usage=usage))

        return await service.respond(request, seqs, body.stream, build, events, OPENAI_SSE)

    @api.post("/v1/embeddings", response_model=None, **documented(EmbeddingRequest, EmbeddingResponse))
    @api.post("/embeddings", response_model=None, include_in_schema=False)
    async def embeddings(request: Request) -> Response:
        body = await parse_body(request, EmbeddingRequest)
        name = None if body.model is None else body.model.removeprefix("wicore:")
        service = await models.service(request, name, "embedding", shown=body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors, tokens = await service.embed(
            request, texts, body.dimensions, body.engine_priority, "input", truncate=False
        )  # OpenAI answers 400, never truncates
        data = [
            EmbeddingData(index=i, embedding=_b64(v) if body.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ]
        response = EmbeddingResponse(data=data, model=service.engine.model_name, usage=EmbeddingUsage.of(tokens))
        return Response(response.model_dump_json(), media_type="application/json")

    return api
