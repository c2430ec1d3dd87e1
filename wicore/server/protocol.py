"""Every OpenAI-compatible request and response model of the server, and the seed's /health, /status, / shapes.

Requests are strict (`extra="forbid"`, no type coercion) so an unknown parameter or a wrongly typed value
is a 400 that names it instead of being ignored.  Range checks raise "must be between ..." messages that
errors.py prefixes with the parameter's name.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from wicore.engine.messages import SchedulerStats
from wicore.engine.request import Priority, PriorityName
from wicore.engine.sampling import SamplingParams

MAX_STOP_SEQUENCES = 4
CHAT_DEFAULT_MAX_TOKENS = 512  # the seed's default
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint
# JSON has no -inf; a token the sampler could never pick gets this instead (as vLLM does).
MIN_LOGPROB = -9999.0


def _between(lo: float, hi: float) -> AfterValidator:
    def check(value: float) -> float:
        if not lo <= value <= hi:  # also rejects NaN, which Python's JSON parser lets through
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {value!r}")
        return value

    return AfterValidator(check)


def _at_least(lo: int) -> AfterValidator:
    def check(value: int) -> int:
        if value < lo:
            raise ValueError(f"must be at least {lo}, got {value!r}")
        return value

    return AfterValidator(check)


def _positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be greater than 0, got {value!r}")
    return value


Temperature = Annotated[float, _between(0, 2)]
UnitInterval = Annotated[float, _between(0, 1)]
Penalty = Annotated[float, _between(-2, 2)]
TopLogprobs = Annotated[int, _between(0, 20)]
PositiveInt = Annotated[int, _at_least(1)]


# -- requests -----------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextContentPart]
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        if not isinstance(value, (str, list)):
            raise ValueError('must be a string or a list of {"type": "text", "text": ...} parts')
        return value

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        # Text parts are one message's consecutive paragraphs (vLLM joins them the same way).
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class ResponseFormat(_Request):
    # Only plain text: accepting "json_object" or a schema without enforcing it would silently break clients.
    type: Literal["text"]


class SamplingRequest(_Request):
    """The parameters /v1/chat/completions and /v1/completions share."""

    model: str | None = None  # None: the served model (as llama-server and vLLM allow)
    max_tokens: PositiveInt | None = None
    temperature: Temperature = 0.7
    top_p: UnitInterval = 1.0
    frequency_penalty: Penalty = 0.0
    presence_penalty: Penalty = 0.0
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Annotated[int, _between(1, 128)] = 1
    top_k: Annotated[int, _at_least(-1)] | None = None
    min_p: UnitInterval | None = None
    repetition_penalty: Annotated[float, AfterValidator(_positive)] | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    priority: PriorityName = "normal"
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens (benchmarks need it)

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        if value is None:
            return value
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("must be a non-empty string or a list of non-empty strings")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not (token.isascii() and token.isdigit()):
                raise ValueError(f"keys must be token ids (strings of digits), got {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"values must be between -100 and 100, got {bias!r} for token {token}")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    @property
    def engine_priority(self) -> Priority:
        return Priority[self.priority.upper()]

    def sampling_params(self, max_tokens: int, logprobs: int | None, seed_offset: int = 0) -> SamplingParams:
        """The engine's parameters for the `seed_offset`-th of the request's `n` sequences."""
        seed = None if self.seed is None else (self.seed + seed_offset) % 2**64
        stop = self.stop if self.stop is not None else ()
        return SamplingParams(
            # top_p = 0 keeps only the most likely token: greedy, which the kernel's (0, 1] range cannot say.
            temperature=0.0 if self.top_p == 0 else self.temperature,
            top_p=1.0 if self.top_p == 0 else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            seed=seed,
            max_tokens=max_tokens,
            stop=stop,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    response_format: ResponseFormat | None = None

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

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(SamplingRequest):
    # A string, a batch of strings, token ids, or a batch of token-id lists (OpenAI's four shapes).
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's defaults for the legacy endpoint (the seed's 512 / 0.7 are for chat).
    max_tokens: PositiveInt | None = COMPLETION_DEFAULT_MAX_TOKENS
    temperature: Temperature = 1.0
    logprobs: TopLogprobs | None = None
    echo: bool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        ok = (
            isinstance(value, str)
            or (isinstance(value, list) and value and all(isinstance(p, str) for p in value))
            or (isinstance(value, list) and value and all(_is_token_id(t) for t in value))
            or (
                isinstance(value, list)
                and value
                and all(isinstance(p, list) and p and all(_is_token_id(t) for t in p) for p in value)
            )
        )
        if not ok:
            raise ValueError("must be a string, a list of strings, a list of token ids or a list of token-id lists")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo=true is not supported")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the batch, each a string or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(t, int) for t in p):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


class EmbeddingRequest(_Request):
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
        if isinstance(value, list) and value and all(_is_token_id(t) or isinstance(t, list) for t in value):
            raise ValueError("token-id inputs are not supported; send a string or a list of strings")
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(t, str) for t in value))):
            raise ValueError("must be a string or a list of strings")
        texts = [value] if isinstance(value, str) else value
        if not texts or not all(texts):
            raise ValueError("must not be empty and must hold no empty string")
        return value

    @property
    def engine_priority(self) -> Priority:
        return Priority[self.priority.upper()]


def _is_token_id(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


# -- responses ----------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str  # the HTTP status as a string, as the seed has it


class ErrorResponse(BaseModel):
    error: ErrorInfo


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # OpenAI's field; left out of the AIgo and Ollama surfaces, whose contracts do not have it.
    prompt_tokens_details: PromptTokensDetails | None = Field(None, exclude_if=lambda v: v is None)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=None if cached_tokens is None else PromptTokensDetails(cached_tokens=cached_tokens),
        )


FinishReason = Literal["stop", "length"]


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
    content: str


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The finishing chunk's delta is `{}`, a content chunk's has no "role" (as OpenAI sends them).
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


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


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None  # None only in stream chunks before the last


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


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RootResponse(BaseModel):
    message: str = "WiCore Mojo 推理引擎"
    version: str


class HealthResponse(BaseModel):
    """The seed's shape: every figure is a string."""

    status: Literal["healthy", "loading"]
    engine: str = "wicore-mojo"
    version: str
    uptime: str
    scheduler: str
    total_requests: str
    error_count: str
    error_rate: str


class SchedulerSnapshot(BaseModel):
    """The figures of /status's two text blocks, as numbers."""

    running: bool
    total_requests: int
    completed: int
    failed: int
    cancelled: int
    preempted: int
    active: int
    queue_length: int
    waiting_by_priority: dict[str, int]
    success_rate: float  # percent of finished requests that completed
    avg_processing_time: float
    avg_wait_time: float
    kv_blocks_total: int
    kv_blocks_free: int
    kv_cache_usage: float  # fraction of KV blocks in use
    prompt_tokens_total: int
    generation_tokens_total: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens whose KV was reused
    active_request_ids: list[str]

    @classmethod
    def of(cls, stats: SchedulerStats) -> SchedulerSnapshot:
        waiting = {p.name.lower(): int(stats.waiting_by_priority.get(p.name.lower(), 0)) for p in Priority}
        finished = stats.completed + stats.failed + stats.cancelled
        used = stats.kv_blocks_total - stats.kv_blocks_free
        return cls(
            running=stats.running,
            total_requests=stats.total_requests,
            completed=stats.completed,
            failed=stats.failed,
            cancelled=stats.cancelled,
            preempted=stats.preempted,
            active=stats.active,
            queue_length=sum(waiting.values()),
            waiting_by_priority=waiting,
            # Nothing finished yet means nothing failed: 100 %, matching /health's 0 % error rate.
            success_rate=100.0 * stats.completed / finished if finished else 100.0,
            avg_processing_time=stats.avg_processing_time,
            avg_wait_time=stats.avg_wait_time,
            kv_blocks_total=stats.kv_blocks_total,
            kv_blocks_free=stats.kv_blocks_free,
            kv_cache_usage=used / stats.kv_blocks_total if stats.kv_blocks_total else 0.0,
            prompt_tokens_total=stats.prompt_tokens_total,
            generation_tokens_total=stats.generation_tokens_total,
            prefix_cache_queries=stats.prefix_cache_queries,
            prefix_cache_hits=stats.prefix_cache_hits,
            active_request_ids=list(stats.active_request_ids),
        )


def _yes_no(flag: bool) -> str:
    return "是" if flag else "否"


def scheduler_status_text(s: SchedulerSnapshot) -> str:
    """The seed's multi-line `scheduler_status` text."""
    return (
        "调度器状态:\n"
        f"  运行中: {_yes_no(s.running)}\n"
        f"  总请求数: {s.total_requests}\n"
        f"  已完成: {s.completed}\n"
        f"  失败: {s.failed}\n"
        f"  取消: {s.cancelled}\n"
        f"  活跃请求: {s.active}\n"
        f"  队列长度: {s.queue_length}\n"
        f"  成功率: {s.success_rate:.1f}%\n"
        f"  平均处理时间: {s.avg_processing_time:.3f}s\n"
        f"  平均等待时间: {s.avg_wait_time:.3f}s"
    )


_PRIORITY_LABELS = {"low": "低优先级", "normal": "普通优先级", "high": "高优先级", "urgent": "紧急优先级"}


def queue_summary_text(s: SchedulerSnapshot) -> str:
    """The seed's multi-line `queue_summary` text."""
    lines = [f"  {label}: {s.waiting_by_priority.get(name, 0)} 个请求" for name, label in _PRIORITY_LABELS.items()]
    return "\n".join(["队列状态:", *lines, f"  活跃处理: {s.active} 个请求"])


class StatusResponse(BaseModel):
    server_running: str
    port: str
    uptime: str
    total_requests: str
    error_count: str
    scheduler_status: str
    queue_summary: str
    scheduler: SchedulerSnapshot

    @classmethod
    def of(
        cls, stats: SchedulerStats, *, port: int, uptime: float, total_requests: int, error_count: int
    ) -> StatusResponse:
        snapshot = SchedulerSnapshot.of(stats)
        return cls(
            server_running=_yes_no(True),  # answering this request is the proof
            port=str(port),
            uptime=f"{uptime:.1f}s",
            total_requests=str(total_requests),
            error_count=str(error_count),
            scheduler_status=scheduler_status_text(snapshot),
            queue_summary=queue_summary_text(snapshot),
            scheduler=snapshot,
        )
