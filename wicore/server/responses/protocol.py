"""The request and response models of OpenAI's Responses API (/v1/responses), stateless.

A request's `input` (a string or a list of items: messages, function calls and their outputs) and its
`instructions` become one chat conversation for the model's template; its sampling fields become the
shared SamplingRequest. Nothing is stored: the fields that refer to stored state (`previous_response_id`,
`conversation`, `prompt`, `background`) are a 400 naming them, `store` is ignored. Responses and stream
events validate as the `openai` package's own types (openai.types.responses).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from wicore.engine.grammar import ANY_JSON_OBJECT, json_schema_grammar
from wicore.engine.request import PriorityName
from wicore.server import tools
from wicore.server.openai.protocol import ChatLogprob, OpenAIRequest, TopLogprobs
from wicore.server.protocol import (
    ChatMessage,
    FunctionCall,
    PositiveInt,
    SamplingRequest,
    StrictRequest,
    Temperature,
    ToolCall,
    UnitInterval,
)

# -- requests -----------------------------------------------------------------------------------------


class InputText(StrictRequest):
    type: Literal["input_text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None  # a cache hint; the prefix cache needs none


class OutputText(StrictRequest):
    """An earlier answer's text, as a client sends back a response's output."""

    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None


class Refusal(StrictRequest):
    type: Literal["refusal"]
    refusal: str


def by_type(error: str, default: str | None = None) -> Discriminator:
    """Tells a union's members by their `type` (`default` when absent); any other type is a 400 saying
    `error`. Members are tagged `<type>`, which error locations leave out (errors.py)."""

    def tag(value: Any) -> str:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", None)
        return f"<{kind}>"

    return Discriminator(tag, custom_error_type="unsupported_type", custom_error_message=f"type: {error}")


ContentPart = Annotated[
    Annotated[InputText, Tag("<input_text>")] | Annotated[OutputText, Tag("<output_text>")]
    | Annotated[Refusal, Tag("<refusal>")],
    by_type("content parts are input_text (output_text and refusal in assistant messages)"),
]  # fmt: skip


class MessageItem(StrictRequest):
    """A message: the easy form (`{"role", "content"}`, `type` optional), an input message, or an earlier
    response's output message sent back."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    @model_validator(mode="after")
    def _output_parts_are_the_assistants(self) -> MessageItem:
        parts = [] if isinstance(self.content, str) else self.content
        if self.role != "assistant" and any(not isinstance(p, InputText) for p in parts):
            raise ValueError(f"content: a {self.role} message takes input_text parts")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        # One message's parts are consecutive paragraphs, as chat's text parts are joined.
        return "\n".join(p.refusal if isinstance(p, Refusal) else p.text for p in self.content)


class FunctionCallItem(StrictRequest):
    """A call an earlier response made."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    namespace: str | None = None
    caller: dict[str, Any] | None = None


class FunctionCallOutputItem(StrictRequest):
    """What the client's function returned for the call `call_id`."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    name: str | None = None
    namespace: str | None = None
    caller: dict[str, Any] | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "\n".join(p.text for p in self.output)


InputItem = Annotated[
    Annotated[MessageItem, Tag("<message>")] | Annotated[FunctionCallItem, Tag("<function_call>")]
    | Annotated[FunctionCallOutputItem, Tag("<function_call_output>")],
    by_type("unsupported item type; this server takes message, function_call and function_call_output items",
            default="message"),
]  # fmt: skip


class FunctionTool(tools.FunctionTool):
    """The Responses API's function tool: the function's fields at the top level, beside `type`."""

    type: Literal["function"]
    defer_loading: bool | None = None  # tool search is OpenAI's own: every tool is loaded


def _check_tool(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") != "function":
        raise ValueError(f"type: only function tools are supported here, got {value.get('type')!r}")
    return value


class NamedFunction(StrictRequest):
    type: Literal["function"]
    name: str


ToolChoiceMode = Literal["none", "auto", "required"]
ToolChoice = Annotated[
    Annotated[ToolChoiceMode, Tag("<mode>")] | Annotated[NamedFunction, Tag("<function>")],
    Discriminator(lambda v: "<mode>" if isinstance(v, str) else "<function>"),
]


class PlainText(StrictRequest):
    type: Literal["text"]


class JsonObject(StrictRequest):
    type: Literal["json_object"]


class JsonSchemaText(StrictRequest):
    model_config = ConfigDict(serialize_by_alias=True)  # echoed in the response as `schema`
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None  # the output always follows the schema, strict or not


TextFormat = Annotated[
    Annotated[PlainText, Tag("<text>")] | Annotated[JsonObject, Tag("<json_object>")]
    | Annotated[JsonSchemaText, Tag("<json_schema>")],
    by_type("must be text, json_object or json_schema"),
]  # fmt: skip


class TextConfig(StrictRequest):
    """The `text` field: the output's format, enforced by grammar-constrained sampling (engine/grammar.py)."""

    format: TextFormat = PlainText(type="text")
    verbosity: Literal["low", "medium", "high"] | None = None  # a hint for OpenAI's models; ignored

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer follows; None: free text."""
        if isinstance(self.format, JsonObject):
            return ANY_JSON_OBJECT
        if isinstance(self.format, JsonSchemaText):
            return self.format.schema_
        return None

    def grammar(self) -> str | None:
        """The checked grammar the output must follow (None: free text); ValueError naming the field."""
        schema = self.schema()
        where = "text.format.schema" if isinstance(self.format, JsonSchemaText) else "text.format"
        return None if schema is None else json_schema_grammar(schema, where)


# Fields that name state kept by OpenAI (stored responses, conversations, prompt templates, background
# runs): a stateless server cannot honour them, so a value is a 400 that says so rather than an answer
# made without that state.
STATEFUL = {
    "previous_response_id": "responses are not stored here; send the whole conversation in `input`",
    "conversation": "conversations are not stored here; send the whole conversation in `input`",
    "prompt": "stored prompt templates are not available here; send `instructions` and `input`",
    "background": "background responses need storage, which this server does not keep",
}
# Documented fields that change nothing here: storage, billing, caching hints, reasoning models.
IGNORED = frozenset({
    "store", "service_tier", "reasoning", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "safety_identifier", "truncation", "stream_options", "max_tool_calls", "context_management",
})  # fmt: skip
LOGPROBS = "message.output_text.logprobs"
# What `include` may ask for: every one but logprobs names an output this server never produces (search
# results, images, code outputs, encrypted reasoning), so there is nothing to add for it.
Includable = Literal[
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
]  # fmt: skip


class ResponsesRequest(OpenAIRequest):
    ignored: ClassVar[frozenset[str]] = IGNORED
    null_only: ClassVar[frozenset[str]] = frozenset(STATEFUL)

    model: str | None = None  # None: the served model
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[Annotated[FunctionTool, BeforeValidator(_check_tool)]] | None = None
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool | None = None  # None: one call (see tools.ToolCalling.build)
    text: TextConfig | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: UnitInterval | None = None
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    include: list[Includable] | None = None
    top_logprobs: TopLogprobs | None = None  # alternatives per token, with include's logprobs
    priority: PriorityName = "normal"  # WiCore's scheduling priority, as on chat

    @model_validator(mode="before")
    @classmethod
    def _stateless(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in STATEFUL.items():
                if data.get(key) not in (None, False):
                    raise ValueError(f"{key}: {why}")
        return data

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list) and not value:
            raise ValueError("must hold at least one item")
        return value

    @property
    def num_logprobs(self) -> int | None:
        """How many alternatives the engine reports per token; None: no logprobs (include asks for them)."""
        return (self.top_logprobs or 0) if LOGPROBS in (self.include or ()) else None

    def sampling(self) -> SamplingRequest:
        """The shared sampling parameters: the ones given here, the server's defaults for the rest."""
        given = {"temperature": self.temperature, "top_p": self.top_p, "user": self.user}
        return SamplingRequest(
            model=self.model, stream=self.stream, priority=self.priority,
            **{k: v for k, v in given.items() if v is not None},
        )  # fmt: skip

    def tool_calling(self) -> tools.ToolCalling:
        """The checked tool settings; ToolError (a 400) naming the field."""
        choice = self.tool_choice if isinstance(self.tool_choice, str) else tools.NamedTool(self.tool_choice.name)
        return tools.ToolCalling.build(self.tools, choice, self.parallel_tool_calls, tool_path="tools[{i}]")

    def messages(self) -> list[ChatMessage]:
        """The conversation: `instructions` as the system message, then the items in order; function
        calls join the assistant turn they follow, their outputs become tool messages."""
        messages: list[ChatMessage] = []
        if self.instructions is not None:
            messages.append(ChatMessage(role="system", content=self.instructions))
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        names: dict[str, str] = {}  # call id -> function, for templates that name a tool's output
        for item in items:
            if isinstance(item, MessageItem):
                messages.append(ChatMessage(role=item.role, content=item.text()))
            elif isinstance(item, FunctionCallItem):
                names[item.call_id] = item.name
                call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant":
                    last.tool_calls = [*(last.tool_calls or []), call]
                else:
                    messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
            else:
                name = names.get(item.call_id)
                messages.append(ChatMessage(role="tool", content=item.text(), tool_call_id=item.call_id, name=name))
        return messages


# -- responses ----------------------------------------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[ChatLogprob] = Field(default_factory=list)  # with include's logprobs: chat's shape


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputTextPart]


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: ItemStatus
    call_id: str
    name: str
    arguments: str


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    cache_write_tokens: int = 0  # the prefix cache keeps blocks as it computes them: no separate write


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int, cached_tokens: int) -> ResponseUsage:
        return cls(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseObject(BaseModel):
    """A response, with the request's fields echoed as OpenAI does."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: None = None  # a failed response is an error event (stream) or an error envelope instead
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None = None
    temperature: float
    top_p: float
    text: TextConfig
    tool_choice: ToolChoice
    tools: list[FunctionTool]
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    top_logprobs: int | None = None
    store: Literal[False] = False  # stateless: nothing is kept


# -- stream events ------------------------------------------------------------------------------------


class ResponseEvent(BaseModel):
    """One server-sent event of a streamed response; `sequence_number` counts them from 0."""

    type: str
    sequence_number: int = 0


class ResponseStateEvent(ResponseEvent):
    """response.created, response.in_progress, response.completed, response.incomplete."""

    response: ResponseObject


class OutputItemEvent(ResponseEvent):
    """response.output_item.added / .done."""

    output_index: int
    item: OutputItem


class ItemEvent(ResponseEvent):
    """An event about the output item `item_id`, at `output_index` in the response's output."""

    item_id: str
    output_index: int


class ContentEvent(ItemEvent):
    content_index: int = 0  # a message holds one output_text part


class ContentPartEvent(ContentEvent):
    """response.content_part.added / .done."""

    part: OutputTextPart


class TextDeltaEvent(ContentEvent):
    type: str = "response.output_text.delta"
    delta: str
    logprobs: list[ChatLogprob] = Field(default_factory=list)


class TextDoneEvent(ContentEvent):
    type: str = "response.output_text.done"
    text: str
    logprobs: list[ChatLogprob] = Field(default_factory=list)


class ArgumentsDeltaEvent(ItemEvent):
    type: str = "response.function_call_arguments.delta"
    delta: str


class ArgumentsDoneEvent(ItemEvent):
    type: str = "response.function_call_arguments.done"
    name: str
    arguments: str


class ErrorEvent(ResponseEvent):
    """An error after the stream began (the response cannot change its HTTP status any more)."""

    type: str = "error"
    code: str | None
    message: str
    param: str | None
