"""The OpenAI-compatible request and response models (/v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models).

Requests share the strict sampling parameters of server/protocol.py; responses validate as the `openai`
package's own types.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import structlog
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from wicore.engine.grammar import ANY_JSON_OBJECT, closed_objects, json_schema_grammar
from wicore.engine.request import FinishReason, Priority, PriorityName
from wicore.server.protocol import (
    ChatMessage,
    DeltaMessage,
    PositiveInt,
    SamplingRequest,
    StrictRequest,
    Temperature,
    ToolCall,
    UsageInfo,
    between,
    check_texts,
    conversation,
    engine_priority,
    is_token_id,
)
from wicore.server.tools import FunctionTool, NamedTool, ToolCalling, ToolChoice, ToolMode

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint
# JSON has no -inf; a token the sampler could never pick gets this instead (as vLLM does).
MIN_LOGPROB = -9999.0
log = structlog.get_logger(__name__)
TopLogprobs = Annotated[int, between(0, 20)]


# -- requests -----------------------------------------------------------------------------------------


# Documented OpenAI parameters that change nothing here (storage, billing, reasoning models, audio, ...):
# accepted so that clients which always send them work, and logged once per process so the operator sees
# what is being ignored. A request's `null_only` ones are ignored only as `null`: a value would ask for a
# feature.
IGNORED_CHAT = frozenset({
    "store", "metadata", "service_tier", "reasoning_effort", "prompt_cache_key", "safety_identifier",
    "modalities", "audio", "prediction", "web_search_options", "verbosity",
})  # fmt: skip
ignored_logged: set[str] = set()  # the fields logged so far
# SGLang's Model Gateway (sglang-router) adds its runtime's fields to every request it forwards, each at
# its default, which is what this server does anyway; any other value asks for a feature, so it stays a 400.
# (It also sends `ignore_eos` and `echo`, which are ours.)
SGLANG_CHAT_DEFAULTS: dict[str, bool] = {
    "no_stop_trim": False, "continue_final_message": False, "skip_special_tokens": True,
    "separate_reasoning": True, "stream_reasoning": True, "return_hidden_states": False,
}  # fmt: skip
SGLANG_COMPLETION_DEFAULTS: dict[str, bool] = {
    "no_stop_trim": False, "skip_special_tokens": True, "return_hidden_states": False,
}  # fmt: skip


def _log_ignored(field: str) -> None:
    if field not in ignored_logged:
        ignored_logged.add(field)
        log.info("ignoring an OpenAI parameter that does not apply to this server", parameter=field)


class OpenAIRequest(StrictRequest):
    """What OpenAI's reference allows beyond our fields: `null` for a nullable parameter means its default
    (some clients send every parameter), and documented parameters that do not apply are ignored. Anything
    else unknown is still a 400 naming it."""

    ignored: ClassVar[frozenset[str]] = frozenset()
    null_only: ClassVar[frozenset[str]] = frozenset()
    at_default: ClassVar[dict[str, bool]] = {}  # dropped when they carry exactly this value

    @model_validator(mode="before")
    @classmethod
    def _defaults_for_null(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kept = {}
        for key, value in data.items():
            if key in cls.ignored or (value is None and key in cls.null_only):
                _log_ignored(key)
            elif key in cls.at_default and value is cls.at_default[key]:
                continue
            elif not (value is None and key in cls.model_fields):
                kept[key] = value
        return kept


class JsonSchemaFormat(StrictRequest):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # None: any JSON value
    strict: bool | None = None  # the output always follows the schema, strict or not


class ResponseFormat(StrictRequest):
    """OpenAI's `response_format`, enforced by grammar-constrained sampling (engine/grammar.py)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_goes_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema: give it exactly when type is "json_schema"')
        return self

    def grammar(self) -> str | None:
        """The checked grammar the output must follow (None: free text); ValueError naming response_format."""
        if self.type == "json_object":
            return json_schema_grammar(ANY_JSON_OBJECT, "response_format")
        if self.json_schema is not None:
            # Objects closed as llama-server and vLLM (XGrammar) close them: instructor and others send
            # pydantic schemas that leave additionalProperties unsaid, and a small model then adds keys.
            schema = closed_objects(self.json_schema.schema_ or {})
            return json_schema_grammar(schema, "response_format.json_schema.schema")
        return None

    def answer_schema(self) -> dict[str, Any] | None:
        """The schema an answer follows (None: free text), for tool grammars where it is one alternative."""
        if self.type == "json_object":
            return ANY_JSON_OBJECT
        return None if self.json_schema is None else self.json_schema.schema_ or {}


class ChatTool(StrictRequest):
    type: Literal["function"]
    function: FunctionTool


class ToolName(StrictRequest):
    name: str


class NamedToolChoice(StrictRequest):
    """`tool_choice` naming the function the model must call."""

    type: Literal["function"]
    function: ToolName


class ChatCompletionRequest(OpenAIRequest, SamplingRequest):
    ignored = IGNORED_CHAT
    at_default = SGLANG_CHAT_DEFAULTS
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = None
    tool_choice: ToolMode | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        """How many alternatives the engine reports per token; None: no logprobs at all."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def conversation(self) -> list[dict[str, Any]]:
        return conversation(self.messages)

    def tool_calling(self) -> ToolCalling:
        """The checked tool settings; ToolError naming the field."""
        choice: ToolChoice | None = (
            NamedTool(self.tool_choice.function.name)
            if isinstance(self.tool_choice, NamedToolChoice)
            else self.tool_choice
        )
        return ToolCalling.build([t.function for t in self.tools or ()], choice, self.parallel_tool_calls)


class CompletionRequest(OpenAIRequest, SamplingRequest):
    null_only = frozenset({"suffix"})
    at_default = SGLANG_COMPLETION_DEFAULTS
    # A string, a batch of strings, token ids, or a batch of token-id lists (OpenAI's four shapes).
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's defaults for the legacy endpoint (512 / 0.7 are chat's).
    max_tokens: PositiveInt | None = COMPLETION_DEFAULT_MAX_TOKENS
    temperature: Temperature = 1.0
    logprobs: TopLogprobs | None = None
    echo: bool = False
    # Returning the best of more sequences than n is not done; best_of = n asks for nothing more.
    best_of: PositiveInt | None = None
    response_format: ResponseFormat | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        ok = (
            isinstance(value, str)
            or (isinstance(value, list) and value and all(isinstance(p, str) for p in value))
            or (isinstance(value, list) and value and all(is_token_id(t) for t in value))
            or (
                isinstance(value, list)
                and value
                and all(isinstance(p, list) and p and all(is_token_id(t) for t in p) for p in value)
            )
        )
        if not ok:
            raise ValueError("must be a string, a list of strings, a list of token ids or a list of token-id lists")
        return value

    @model_validator(mode="after")
    def _check_best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError(f"best_of: only best_of equal to n ({self.n}) is supported, got {self.best_of}")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the batch, each a string or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(t, int) for t in p):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


class EmbeddingRequest(OpenAIRequest):
    # Text only: token-id inputs would need the embedding model's vocabulary on the client side.
    input: str | list[str]
    model: str | None = None
    dimensions: PositiveInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    priority: PriorityName = "normal"

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        if isinstance(value, list) and value and all(is_token_id(t) or isinstance(t, list) for t in value):
            raise ValueError("token-id inputs are not supported; send a string or a list of strings")
        return check_texts(value)

    @property
    def engine_priority(self) -> Priority:
        return engine_priority(self.priority)


# -- responses ----------------------------------------------------------------------------------------


# The engine's reasons a response can carry; the others (abort, timeout, error) end in an error instead.
OpenAIFinishReason = Literal["stop", "length", "tool_calls"]  # tool_calls: a stop after calls
_OPENAI_REASONS: dict[FinishReason, OpenAIFinishReason] = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


def openai_finish_reason(reason: FinishReason | None) -> OpenAIFinishReason | None:
    return None if reason is None else _OPENAI_REASONS[reason]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatLogprob] = Field(default_factory=list)


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # None: the message is only tool calls
    tool_calls: list[ToolCall] | None = Field(None, exclude_if=lambda v: v is None)


class DeltaFunctionCall(BaseModel):
    name: str | None = Field(None, exclude_if=lambda v: v is None)
    arguments: str


class DeltaToolCall(BaseModel):
    """A piece of a streamed call: the first carries id, type and name, the next argument fragments."""

    index: int
    id: str | None = Field(None, exclude_if=lambda v: v is None)
    type: Literal["function"] | None = Field(None, exclude_if=lambda v: v is None)
    function: DeltaFunctionCall


class ChatDeltaMessage(DeltaMessage):
    tool_calls: list[DeltaToolCall] | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: OpenAIFinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: SerializeAsAny[DeltaMessage]  # a ChatDeltaMessage when it carries tool calls
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: OpenAIFinishReason | None = None


def _drop_none_usage(data: dict[str, Any]) -> dict[str, Any]:
    # Only the last chunk of a stream with include_usage carries "usage".
    if data.get("usage") is None:
        data.pop("usage", None)
    return data


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: UsageInfo | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none_usage(handler(self))


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)

    @staticmethod
    def joined(first: CompletionLogprobs | None, second: CompletionLogprobs) -> CompletionLogprobs:
        """`second` after `first` (an echoed prompt's tokens before the completion's)."""
        if first is None:
            return second
        return CompletionLogprobs(
            tokens=first.tokens + second.tokens,
            token_logprobs=first.token_logprobs + second.token_logprobs,
            top_logprobs=first.top_logprobs + second.top_logprobs,
            text_offset=first.text_offset + second.text_offset,
        )


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: OpenAIFinishReason | None  # None only in stream chunks before the last


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_none_usage(handler(self))


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a string: base64 of float32 little-endian


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int) -> EmbeddingUsage:
        return cls(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "wicore"
    loaded: bool = False  # an engine worker holds it now (else the first request loads it)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
