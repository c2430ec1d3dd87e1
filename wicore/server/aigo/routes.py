"""The AIgo REST API (`/api/v1/...`, the shapes of AIgo's API contract) on the shared generation service.

Model ids carry a provider prefix (`wicore:qwen2.5-coder-0.5b-instruct`); the bare name is accepted too.
Generation and chat convert into the service's GenerationRequest exactly as the OpenAI routes do (scheduler,
priorities, limits, error envelope); streams are SSE lines `data: {...}` with no `[DONE]` line, as AIgo's
contract shows them.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from wicore import __version__
from wicore.server.aigo.protocol import (
    AigoChatMessage,
    AigoChatRequest,
    AigoEmbedRequest,
    AigoGenerateRequest,
    AigoHealthResponse,
    AigoSamplingRequest,
    ChatChunk,
    ChatResponse,
    EmbedResponse,
    EmbedUsage,
    GenerateChunk,
    GenerateResponse,
    ModelDetail,
    ModelsResponse,
    model_id,
)
from wicore.server.catalogue import PROVIDER, Catalogue, CatalogueEntry, count_label
from wicore.server.models import ServedModels
from wicore.server.protocol import CHAT_DEFAULT_MAX_TOKENS, DeltaMessage, UsageInfo, engine_priority, parse_body
from wicore.server.service import GenerationRequest, GenerationService, Outputs
from wicore.server.streaming import StreamFormat, sse

# Streams have no terminating line; errors after the start are one `data: {"error": ...}` line.
AIGO_SSE = StreamFormat("text/event-stream", lambda e: sse(e.body()), None)


# -- the model catalogue, in AIgo's words -----------------------------------------------------------


def chat_detail(catalogue: Catalogue, name: str, max_model_len: int, loaded: bool) -> ModelDetail:
    meta = catalogue.chat_metadata(name)
    arch = str(meta.get("general.architecture", ""))
    context = int(meta.get(f"{arch}.context_length", max_model_len))
    parameters = {
        "max_tokens": CHAT_DEFAULT_MAX_TOKENS,
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": 0,
        "max_context_length": min(max_model_len, context),  # as the engine caps it
        "stop_sequences": [],
    }
    return ModelDetail(
        id=model_id(name),
        name=str(meta.get("general.name", name)),
        description=f"{meta.get('general.name', name)}, run by WiCore on its Mojo kernels",
        capabilities=["text_generation", "chat"],
        parameters=parameters,
        metadata={
            "context_window": context,
            "vocabulary_size": int(meta.get(f"{arch}.vocab_size", 0)),
            "architecture": arch,
            "parameter_count": meta.get("general.size_label"),
            "format": "gguf",
        },
        loaded=loaded,
    )


def embedding_detail(catalogue: Catalogue, name: str, loaded: bool) -> ModelDetail:
    config = catalogue.embedding_config(name)
    max_len = catalogue.embedding_max_length(name)
    return ModelDetail(
        id=model_id(name),
        name=name,
        description=f"{name} (BERT encoder, mean pooling), on WiCore's kernels",
        capabilities=["embedding"],
        parameters={"dimensions": config["hidden_size"], "max_context_length": max_len},
        metadata={
            "context_window": max_len,
            "vocabulary_size": config["vocab_size"],
            "architecture": config.get("model_type", "bert"),
            "parameter_count": count_label(catalogue.embedding_parameters(name)),
            "format": "safetensors",
        },
        loaded=loaded,
    )


# -- routes -------------------------------------------------------------------------------------------


def router(models: ServedModels) -> APIRouter:
    api = APIRouter(prefix="/api/v1")
    catalogue = models.catalogue

    def bare(model: str | None) -> str | None:
        return None if model is None else model.removeprefix(f"{PROVIDER}:")

    def detail(entry: CatalogueEntry) -> ModelDetail:
        loaded = models.state(entry.name) == "loaded"
        if entry.kind == "chat":
            return chat_detail(catalogue, entry.name, models.settings.model.max_model_len, loaded)
        return embedding_detail(catalogue, entry.name, loaded)

    @api.get("/models")
    async def list_models() -> ModelsResponse:
        # Declared as ModelInfo, the details serialise without description and metadata.
        return ModelsResponse(models=[detail(e) for e in catalogue.entries().values()])

    @api.get("/models/{model:path}")
    async def model(model: str) -> ModelDetail:
        return detail(catalogue.entry(bare(model) or "", shown=model))

    async def run(
        request: Request, service: GenerationService, body: AigoSamplingRequest, model: str, prompt_ids: list[int],
        prompt_param: str, as_chat: bool, stream: bool,
    ) -> Response:  # fmt: skip
        generation = GenerationRequest(
            [prompt_ids], body, body.max_tokens, CHAT_DEFAULT_MAX_TOKENS, prompt_param=prompt_param
        )
        _, (seq,) = service.start(generation)

        def build() -> BaseModel:
            text, reason = "".join(seq.text), seq.finish_reason or "stop"
            usage = UsageInfo.of(seq.timer.prompt_tokens, len(seq.tokens))
            if as_chat:
                return ChatResponse(
                    message=AigoChatMessage(content=text), model=model, usage=usage, finish_reason=reason
                )
            return GenerateResponse(text=text, model=model, usage=usage, finish_reason=reason)

        async def events(outputs: Outputs) -> AsyncGenerator[str, None]:
            first = True
            async for _, out in outputs:
                if not out.text and out.finish_reason is None:
                    continue
                if as_chat:
                    delta = DeltaMessage(role="assistant" if first else None, content=out.text)
                    yield sse(ChatChunk(delta=delta, finish_reason=out.finish_reason))
                else:
                    yield sse(GenerateChunk(text=out.text, finish_reason=out.finish_reason))
                first = False

        return await service.respond(request, [seq], stream, build, events, AIGO_SSE)

    @api.post("/generate", response_model=None)
    async def generate(request: Request) -> Response:
        body = await parse_body(request, AigoGenerateRequest)
        service = await models.service(request, bare(body.model), shown=body.model)
        model = model_id(service.engine.model_name)
        prompt_ids = await service.encode(body.prompt)
        return await run(request, service, body, model, prompt_ids, "prompt", False, body.stream)

    async def chat_response(request: Request, stream: bool | None) -> Response:
        body = await parse_body(request, AigoChatRequest)
        service = await models.service(request, bare(body.model), shown=body.model)
        model = model_id(service.engine.model_name)
        prompt_ids = await service.chat_prompt(body.conversation())
        stream = body.stream if stream is None else stream
        return await run(request, service, body, model, prompt_ids, "messages", True, stream)

    @api.post("/chat", response_model=None)
    async def chat(request: Request) -> Response:
        return await chat_response(request, None)

    @api.post("/chat/stream", response_model=None)
    async def chat_stream(request: Request) -> Response:
        return await chat_response(request, True)

    @api.post("/embed", response_model=None)
    async def embed(request: Request) -> Response:
        body = await parse_body(request, AigoEmbedRequest)
        service = await models.service(request, bare(body.model), "embedding", shown=body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        priority = engine_priority(body.priority)
        vectors, tokens = await service.embed(request, texts, body.dimensions, priority, "input", truncate=True)
        single = isinstance(body.input, str)
        response = EmbedResponse(
            embedding=vectors[0] if single else None,
            embeddings=None if single else vectors,
            dimensions=len(vectors[0]),
            model=model_id(service.engine.model_name),
            usage=EmbedUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return Response(response.model_dump_json(), media_type="application/json")

    @api.get("/health", response_model=AigoHealthResponse)
    async def health() -> JSONResponse:
        ready = models.ready
        now = datetime.datetime.now(datetime.UTC)
        body = AigoHealthResponse(
            status="ok" if ready else "loading",
            version=__version__,
            timestamp=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            models_available=len(catalogue.entries()),
            uptime_seconds=round(time.time() - models.started_at, 3),
        )
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    return api
