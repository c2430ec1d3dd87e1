"""The request shapes every surface shares: sampling parameters, chat messages, priority, usage.

`SamplingRequest` is the one internal form of a generation request's parameters: the OpenAI routes parse
it directly, the AIgo routes subclass it, and the Ollama routes convert their `options` into it (as
llama.cpp's server converts other APIs to its OpenAI form), so every surface gets the same names,
defaults, range checks and error messages.

Requests are strict (`extra="forbid"`, no type coercion) so an unknown parameter or a wrongly typed value
is a 400 that names it instead of being ignored.  Range checks raise "must be between ..." messages that
errors.py prefixes with the parameter's name.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from wicore.engine.request import Priority, PriorityName
from wicore.engine.sampling import SamplingParams
from wicore.server.errors import APIError, validation_error

MAX_STOP_SEQUENCES = 4
MAX_LOGIT_BIAS = 300  # entries, as OpenAI caps it
CHAT_DEFAULT_MAX_TOKENS = 512  # the default of WiCore's API contract (and AIgo's)


def engine_priority(name: PriorityName) -> Priority:
    return Priority[name.upper()]


@dataclasses.dataclass(frozen=True, slots=True)
class RangeCheck(AfterValidator):
    """A range check with our own message that also publishes its bounds in the JSON schema (the
    OpenAPI document), so clients and fuzzers see them; `Field(ge=...)` would replace the message."""

    minimum: float | None = None
    maximum: float | None = None

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        bounds = {"minimum": self.minimum, "maximum": self.maximum}
        json_schema.update({k: v for k, v in bounds.items() if v is not None})
        return json_schema


def between(lo: float, hi: float) -> RangeCheck:
    def check(value: float) -> float:
        if not lo <= value <= hi:  # also rejects NaN, which Python's JSON parser lets through
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {value!r}")
        return value

    return RangeCheck(check, lo, hi)


def at_least(lo: int) -> RangeCheck:
    def check(value: int) -> int:
        if value < lo:
            raise ValueError(f"must be at least {lo}, got {value!r}")
        return value

    return RangeCheck(check, lo)


def _positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be greater than 0, got {value!r}")
    return value


Temperature = Annotated[float, between(0, 2)]
UnitInterval = Annotated[float, between(0, 1)]
Penalty = Annotated[float, between(-2, 2)]
PositiveInt = Annotated[int, at_least(1)]


def is_token_id(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_texts(value: Any) -> Any:
    """`value` if it is a string or a non-empty list of strings, none of them empty (embedding inputs)."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError("must be a string or a list of strings")
    if not texts or not all(texts):
        raise ValueError("must not be empty and must hold no empty string")
    return value


# -- requests -----------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body as `model`, whatever the Content-Type says (curl users often send none, and
    llama-server accepts that too)."""
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is required (a JSON object)")
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None


class StrictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextContentPart(StrictRequest):
    type: Literal["text"]
    text: str


class FunctionCall(StrictRequest):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(StrictRequest):
    """A call an earlier assistant turn made (history only: this server does not make calls itself)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictRequest):
    # "developer" is OpenAI's newer name for the system role.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None  # which call a "tool" message answers

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError('must be a string or a list of {"type": "text", "text": ...} parts')
        return value

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content: is required (only an assistant message with tool_calls may omit it)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls: only assistant messages carry tool calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("tool_call_id: is required in a tool message")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        # Text parts are one message's consecutive paragraphs (vLLM joins them the same way).
        return "\n".join(part.text for part in self.content)

    def template_message(self) -> dict[str, Any]:
        """The message as chat templates take it (transformers' form)."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": _arguments(c)}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            message["name"] = self.name
        return message


def _arguments(call: ToolCall) -> Any:
    # Templates (Qwen2.5's among them) write `arguments | tojson`, expecting an object as the model was
    # trained on; vLLM parses the JSON text the same way. Text that is not JSON goes through as it is.
    try:
        return json.loads(call.function.arguments)
    except json.JSONDecodeError:
        return call.function.arguments


def conversation(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template takes them."""
    return [m.template_message() for m in messages]


class StreamOptions(StrictRequest):
    include_usage: bool = False


class SamplingRequest(StrictRequest):
    """The sampling parameters of every generation request, whatever surface it came through."""

    model: str | None = None  # None: the served model (as llama-server and vLLM allow)
    max_tokens: PositiveInt | None = None
    temperature: Temperature = 0.7
    top_p: UnitInterval = 1.0
    frequency_penalty: Penalty = 0.0
    presence_penalty: Penalty = 0.0
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Annotated[int, between(1, 128)] = 1
    top_k: Annotated[int, at_least(-1)] | None = None
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
        if value is not None and len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries (as OpenAI allows), got {len(value)}")
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
        return engine_priority(self.priority)

    def sampling_params(
        self, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None = None, seed_offset: int = 0
    ) -> SamplingParams:
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
            prompt_logprobs=prompt_logprobs,
        )


# -- responses ----------------------------------------------------------------------------------------


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


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The finishing chunk's delta is `{}`, a content chunk's has no "role" (as OpenAI sends them).
        return {k: v for k, v in handler(self).items() if v is not None}
