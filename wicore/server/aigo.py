"""The AIgo REST API (`/api/v1/...`, the seed's shapes) on the same service as the OpenAI routes.

Model ids carry a provider prefix (`wicore:qwen2.5-coder-0.5b-instruct`); the bare name is accepted too.
Generation and chat run through `_Service` exactly as /v1/completions does (scheduler, priorities, limits,
error envelope); streams are SSE lines `data: {...}` with no `[DONE]` line, as the seed shows them.
"""

from __future__ import annotations

import datetime
import functools
import json
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from wicore.engine.request import Priority, PriorityName, RequestOutput
from wicore.engine.worker import EMBEDDING_MODEL
from wicore.models import registry
from wicore.models.prepared import metadata
from wicore.server.app import (
    CLIENT_CLOSED,
    VERSION,
    StreamFormat,
    _ClientGone,
    _parse,
    _Seq,
    _Service,
    _sse,
)
from wicore.server.errors import APIError
from wicore.server.protocol import (
    CHAT_DEFAULT_MAX_TOKENS,
    ChatMessage,
    DeltaMessage,
    PositiveInt,
    SamplingRequest,
    UsageInfo,
    _Request,
)

PROVIDER = "wicore"
# The seed's streams have no terminating line; errors after the start are one `data: {"error": ...}` line.
AIGO_SSE = StreamFormat("text/event-stream", lambda e: _sse(e.body()), None)


def model_id(name: str) -> str:
    return f"{PROVIDER}:{name}"


# -- requests -----------------------------------------------------------------------------------------


class _GenerationRequest(SamplingRequest):
    """The OpenAI routes' sampling parameters (same names, defaults and checks), one sequence per request."""

    @field_validator("n")
    @classmethod
    def _one(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"AIgo responses hold one text; must be 1, got {value}")
        return value


class GenerateRequest(_GenerationRequest):
    prompt: str


class ChatRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class EmbedTextRequest(_Request):
    model: str | None = None  # None: the embedding model
    input: str | list[str]
    dimensions: PositiveInt | None = None
    priority: PriorityName = "normal"

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("must be a string or a list of strings")
        if not texts or not all(texts):
            raise ValueError("must not be empty and must hold no empty string")
        return value


# -- responses ----------------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    id: str
    name: str
    provider: str = PROVIDER
    capabilities: list[str]
    parameters: dict[str, Any]


class ModelDetail(ModelInfo):
    description: str
    metadata: dict[str, Any]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class GenerateResponse(BaseModel):
    text: str
    model: str
    usage: UsageInfo
    finish_reason: str


class GenerateChunk(BaseModel):
    text: str
    finish_reason: str | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatResponse(BaseModel):
    message: ChatResponseMessage
    model: str
    usage: UsageInfo
    finish_reason: str


class ChatChunk(BaseModel):
    delta: DeltaMessage
    finish_reason: str | None = None


class EmbedUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbedResponse(BaseModel):
    """`embedding` for a string input; `embeddings`, one per text, for a list."""

    embedding: list[float] | None = None
    embeddings: list[list[float]] | None = None
    dimensions: int
    model: str
    usage: EmbedUsage

    @model_serializer(mode="wrap")
    def _one_of(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in ("embedding", "embeddings") and v is None)}


class HealthResponse(BaseModel):
    status: Literal["ok", "loading"]
    version: str
    timestamp: str
    models_available: int
    uptime_seconds: float


# -- model catalogue ----------------------------------------------------------------------------------


def _count_label(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _safetensors_parameters(path: Any) -> int:
    """Parameters in a safetensors file, from its JSON header (the weights are not read)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(functools.reduce(lambda a, b: a * b, t["shape"], 1) for k, t in header.items() if k != "__metadata__")


class Catalogue:
    """The served chat model and the embedding model, described from their files."""

    def __init__(self, service: _Service) -> None:
        self.service = service
        self.chat_name = service.engine.model_name

    def kind(self, model: str | None, default: str) -> str:
        """`chat` or `embedding` for a model id (with or without the provider prefix); unknown ids are 404s."""
        if model is None:
            return default
        name = model.removeprefix(f"{PROVIDER}:")
        if name == self.chat_name:
            return "chat"
        if name == EMBEDDING_MODEL:
            return "embedding"
        known = ", ".join(model_id(n) for n in (self.chat_name, EMBEDDING_MODEL))
        raise APIError(404, f"the model `{model}` does not exist; this server has {known}", param="model")

    def embedding_present(self) -> bool:
        try:
            registry.resolve_embedding(EMBEDDING_MODEL)
        except registry.ModelError:
            return False
        return True

    def chat_detail(self) -> ModelDetail:
        engine = self.service.engine
        meta = metadata(registry.resolve(self.chat_name))
        arch = str(meta.get("general.architecture", ""))
        parameters = {
            "max_tokens": CHAT_DEFAULT_MAX_TOKENS,
            "temperature": 0.7,
            "top_p": 1.0,
            "top_k": 0,
            "max_context_length": engine.max_model_len,
            "stop_sequences": [],
        }
        return ModelDetail(
            id=model_id(self.chat_name),
            name=str(meta.get("general.name", self.chat_name)),
            description=f"{meta.get('general.name', self.chat_name)}, run by WiCore on its Mojo kernels",
            capabilities=["text_generation", "chat"],
            parameters=parameters,
            metadata={
                "context_window": int(meta.get(f"{arch}.context_length", engine.max_model_len)),
                "vocabulary_size": engine.tokenizer.vocab_size,
                "architecture": arch,
                "parameter_count": meta.get("general.size_label"),
                "format": "gguf",
            },
        )

    @functools.cached_property
    def _embedding_files(self) -> tuple[dict[str, Any], int, int]:
        folder = registry.resolve_embedding(EMBEDDING_MODEL)
        config = json.loads((folder / "config.json").read_text())
        st = folder / "sentence_bert_config.json"
        max_len = json.loads(st.read_text())["max_seq_length"] if st.is_file() else config["max_position_embeddings"]
        return config, int(max_len), _safetensors_parameters(folder / "model.safetensors")

    def embedding_detail(self) -> ModelDetail:
        try:
            config, max_len, params = self._embedding_files
        except registry.ModelError as e:
            raise APIError(503, str(e)) from None
        return ModelDetail(
            id=model_id(EMBEDDING_MODEL),
            name="all-MiniLM-L6-v2",
            description="sentence-transformers all-MiniLM-L6-v2 (BERT encoder, mean pooling), on WiCore's kernels",
            capabilities=["embedding"],
            parameters={"dimensions": config["hidden_size"], "max_context_length": max_len},
            metadata={
                "context_window": max_len,
                "vocabulary_size": config["vocab_size"],
                "architecture": config.get("model_type", "bert"),
                "parameter_count": _count_label(params),
                "format": "safetensors",
            },
        )

    def models(self) -> list[ModelDetail]:
        details = [self.chat_detail()]
        if self.embedding_present():
            details.append(self.embedding_detail())
        return details


# -- routes -------------------------------------------------------------------------------------------


def _priority(name: str) -> Priority:
    return Priority[name.upper()]


def router(service: _Service) -> APIRouter:
    api = APIRouter(prefix="/api/v1")
    catalogue = Catalogue(service)
    engine = service.engine

    def chat_model(model: str | None) -> str:
        if catalogue.kind(model, "chat") != "chat":
            raise APIError(400, f"model: `{model}` is an embedding model; it cannot generate text", param="model")
        return model_id(catalogue.chat_name)

    @api.get("/models")
    async def models() -> ModelsResponse:
        # Declared as ModelInfo, the details serialise without description and metadata.
        return ModelsResponse(models=list(catalogue.models()))

    @api.get("/models/{model:path}")
    async def model(model: str) -> ModelDetail:
        return catalogue.chat_detail() if catalogue.kind(model, "chat") == "chat" else catalogue.embedding_detail()

    async def run(request: Request, seq: _Seq, model: str, as_chat: bool, stream: bool) -> Response:
        def build() -> BaseModel:
            text, reason = "".join(seq.text), seq.finish_reason or "stop"
            usage = UsageInfo.of(seq.timer.prompt_tokens, len(seq.tokens))
            if as_chat:
                return ChatResponse(
                    message=ChatResponseMessage(content=text), model=model, usage=usage, finish_reason=reason
                )
            return GenerateResponse(text=text, model=model, usage=usage, finish_reason=reason)

        async def events(outputs: AsyncIterator[tuple[_Seq, RequestOutput]]) -> AsyncGenerator[str, None]:
            first = True
            async for _, out in outputs:
                if not out.text and out.finish_reason is None:
                    continue
                if as_chat:
                    delta = DeltaMessage(role="assistant" if first else None, content=out.text)
                    yield _sse(ChatChunk(delta=delta, finish_reason=out.finish_reason))
                else:
                    yield _sse(GenerateChunk(text=out.text, finish_reason=out.finish_reason))
                first = False

        return await service.respond(request, [seq], stream, build, events, AIGO_SSE)

    @api.post("/generate", response_model=None)
    async def generate(request: Request) -> Response:
        body = await _parse(request, GenerateRequest)
        model = chat_model(body.model)
        prompt_ids = engine.tokenizer.encode(body.prompt)
        seq = service.single(body, prompt_ids, "prompt", "max_tokens")
        return await run(request, seq, model, False, body.stream)

    async def chat_response(request: Request, stream: bool | None) -> Response:
        body = await _parse(request, ChatRequest)
        model = chat_model(body.model)
        prompt_ids = service.chat_prompt(body.conversation())
        seq = service.single(body, prompt_ids, "messages", "max_tokens")
        return await run(request, seq, model, True, body.stream if stream is None else stream)

    @api.post("/chat", response_model=None)
    async def chat(request: Request) -> Response:
        return await chat_response(request, None)

    @api.post("/chat/stream", response_model=None)
    async def chat_stream(request: Request) -> Response:
        return await chat_response(request, True)

    @api.post("/embed", response_model=None)
    async def embed(request: Request) -> Response:
        body = await _parse(request, EmbedTextRequest)
        if catalogue.kind(body.model, "embedding") != "embedding":
            raise APIError(400, f"model: `{body.model}` is a chat model; embeddings use {model_id(EMBEDDING_MODEL)}")
        texts = [body.input] if isinstance(body.input, str) else body.input
        try:
            vectors, tokens = await service.embed(request, texts, body.dimensions, _priority(body.priority), "input")
        except _ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        single = isinstance(body.input, str)
        response = EmbedResponse(
            embedding=vectors[0] if single else None,
            embeddings=None if single else vectors,
            dimensions=len(vectors[0]),
            model=model_id(EMBEDDING_MODEL),
            usage=EmbedUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return Response(response.model_dump_json(), media_type="application/json")

    @api.get("/health", response_model=HealthResponse)
    async def health() -> JSONResponse:
        ready = engine.ready
        now = datetime.datetime.now(datetime.UTC)
        body = HealthResponse(
            status="ok" if ready else "loading",
            version=VERSION,
            timestamp=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            models_available=1 + catalogue.embedding_present(),
            uptime_seconds=round(time.time() - engine.started_at, 3),
        )
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    return api
