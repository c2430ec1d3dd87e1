"""The AIgo REST API's request and response models (`/api/v1/...`), as its contract writes them.

Generation requests take the shared sampling parameters (same names, defaults and checks as the OpenAI
routes), with one text per response.  Names carry `Aigo` where another surface has a model of the same
role (OpenAI's chat request, Ollama's embed request, the server's own /health).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from wicore.engine.request import PriorityName
from wicore.server.catalogue import PROVIDER
from wicore.server.protocol import (
    ChatMessage,
    DeltaMessage,
    PositiveInt,
    SamplingRequest,
    StrictRequest,
    UsageInfo,
    check_texts,
    conversation,
)


def model_id(name: str) -> str:
    """A model's id on this surface: the provider prefix and its bare name."""
    return f"{PROVIDER}:{name}"


# -- requests -----------------------------------------------------------------------------------------


class AigoSamplingRequest(SamplingRequest):
    """The OpenAI routes' sampling parameters (same names, defaults and checks), one sequence per request."""

    @field_validator("n")
    @classmethod
    def _one(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"AIgo responses hold one text; must be 1, got {value}")
        return value


class AigoGenerateRequest(AigoSamplingRequest):
    prompt: str


class AigoChatRequest(AigoSamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]

    def conversation(self) -> list[dict[str, Any]]:
        return conversation(self.messages)


class AigoEmbedRequest(StrictRequest):
    model: str | None = None  # None: the embedding model
    input: str | list[str]
    dimensions: PositiveInt | None = None
    priority: PriorityName = "normal"

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        return check_texts(value)


# -- responses ----------------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    id: str
    name: str
    provider: str = PROVIDER
    capabilities: list[str]
    parameters: dict[str, Any]
    loaded: bool = False  # an engine worker holds it now (else the first request loads it)


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


class AigoChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatResponse(BaseModel):
    message: AigoChatMessage
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


class AigoHealthResponse(BaseModel):
    status: Literal["ok", "loading"]
    version: str
    timestamp: str
    models_available: int
    uptime_seconds: float
