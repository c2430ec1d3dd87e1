"""Tool calling, whatever the surface (OpenAI chat, Ollama chat, OpenAI Responses).

A surface parses its own request shape into the neutral pieces here, then:
1. `ToolCalling.build(tools, choice, parallel)` checks them (a schema llguidance cannot compile, or a
   named `tool_choice` naming no tool, is a `ToolError` naming the field: a 400 before anything is queued);
2. `template_inputs(conversation, tools, fmt)` gives what the model's chat template renders: templates
   with a tools section (Qwen2.5's) get `tools=`; others get a generic system prompt in the same call
   format and the history's calls and tool results as plain text, as llama.cpp and Ollama do;
3. `ToolCalling.grammar(fmt)` is the llguidance grammar the output follows: `auto` is free text until the
   call marker, then a valid call (a lazy grammar, as llama.cpp's); `required` and a named function
   force calls whose arguments follow the tool's parameter schema, so even a 0.5B model returns a valid
   call; one call unless `parallel` is true;
4. `ToolCallParser` turns the generated text, whole or as streamed deltas, into content and calls.

Calls are written as Qwen2.5 (and Hermes) write them:
`<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>`, several separated by
a newline. In Qwen's vocabulary the markers are single special tokens; in others they are plain text
(`CallFormat` tells which).
"""

from __future__ import annotations

import json
import re
import secrets
import string
import weakref
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2
from pydantic import field_validator

from wicore.engine.grammar import check_grammar, closed_objects, json_schema_grammar
from wicore.server.errors import APIError
from wicore.server.protocol import StrictRequest
from wicore.tokenizer import Tokenizer

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
# The model's JSON as json.dumps writes it: free whitespace lets a model spend max_tokens on it.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_ID_CHARS = string.ascii_letters + string.digits


# -- the request's pieces ---------------------------------------------------------------------------


class FunctionTool(StrictRequest):
    """A function the model may call: OpenAI's function definition (chat's `tools[i].function`, the
    Responses API's flat tool, Ollama's `tools[i].function`)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object; None: no arguments
    strict: bool | None = None  # the arguments always follow the schema, strict or not

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not TOOL_NAME.fullmatch(value):
            raise ValueError(f"must be 1-64 letters, digits, underscores or dashes, got {value!r}")
        return value

    def template_tool(self) -> dict[str, Any]:
        """The tool as chat templates take it (transformers' form, which Qwen2.5's template dumps as JSON)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = {"type": "object", "properties": {}} if self.parameters is None else self.parameters
        return {"type": "function", "function": function}

    def arguments_schema(self) -> dict[str, Any]:
        """The schema the arguments are generated under: objects that list their properties are closed (as
        llama.cpp's converter closes them), so a small model cannot pad a call with invented keys."""
        if self.parameters is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return closed_objects(self.parameters)


ToolMode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class NamedTool:
    """A `tool_choice` that forces calls of one function."""

    name: str


ToolChoice = ToolMode | NamedTool


class ToolError(APIError):
    """A client's mistake in the tool fields: a 400 naming the request field (`tools[1].function.parameters`,
    `tool_choice`), raised before anything is queued."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(400, message, param=param)


@dataclass(frozen=True)
class CallFormat:
    """How one model's chat template and vocabulary take tools (see `call_format`)."""

    renders_tools: bool  # the chat template has a tools section
    open_token: int | None  # `<tool_call>` as one special token (Qwen2.5), or None: plain text
    close_token: int | None

    def marker(self, text: str) -> str:
        """The Lark spelling of a call marker: the special token by id, or the text."""
        token = self.open_token if text == OPEN else self.close_token
        return f"<[{token}]>" if token is not None else json.dumps(text)


_PROBE_TOOL = "wicore_probe_tool"


# Per loaded model's tokenizer, forgotten with it (models are loaded and unloaded while serving).
_FORMATS: weakref.WeakKeyDictionary[Tokenizer, CallFormat] = weakref.WeakKeyDictionary()


def call_format(tokenizer: Tokenizer) -> CallFormat:
    """The model's `CallFormat`: whether its template renders tools (found by rendering a probe tool, as
    llama.cpp probes a template's capabilities) and whether the markers are single tokens."""
    fmt = _FORMATS.get(tokenizer)
    if fmt is None:
        fmt = _FORMATS[tokenizer] = _probe(tokenizer)
    return fmt


def _probe(tokenizer: Tokenizer) -> CallFormat:
    renders = False
    if tokenizer.chat_template is not None:
        probe = FunctionTool(name=_PROBE_TOOL).template_tool()
        try:
            renders = _PROBE_TOOL in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=[probe])
        except (ValueError, jinja2.TemplateError):  # a template that fails on tools has no tool support
            renders = False
    open_ids = tokenizer.encode(OPEN, add_special_tokens=False)
    close_ids = tokenizer.encode(CLOSE, add_special_tokens=False)
    single = len(open_ids) == 1 and len(close_ids) == 1
    return CallFormat(renders, open_ids[0] if single else None, close_ids[0] if single else None)


# -- rendering --------------------------------------------------------------------------------------

GENERIC_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
    "</tool_call>"
)  # Qwen2.5's own words: the call format the grammar and parser expect


def call_text(name: str, arguments: Any) -> str:
    """One call as the model writes it (`arguments`: the object, or JSON text that is not one)."""
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"


def template_inputs(
    conversation: list[dict[str, Any]], tools: Sequence[FunctionTool], fmt: CallFormat
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and `tools` argument for the model's chat template (`tools`: those offered; none
    when tool_choice is "none").  A template without a tools section gets the tools in the system prompt,
    assistant calls as their text and tool results as user turns (`<tool_response>`, as Qwen's template
    writes them), so the model sees the same format either way."""
    if fmt.renders_tools:
        return conversation, [t.template_tool() for t in tools] or None
    messages: list[dict[str, Any]] = []
    for message in conversation:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = [call_text(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
            messages.append({"role": "assistant", "content": "\n".join(([content] if content else []) + calls)})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if messages and messages[-1].get("tool_response"):  # one user turn answers every call of a turn
                messages[-1]["content"] += "\n" + response
            else:
                messages.append({"role": "user", "content": response, "tool_response": True})
        else:
            messages.append(message)
    for message in messages:
        message.pop("tool_response", None)
    if tools:
        prompt = GENERIC_TOOLS_PROMPT.format(tools="\n".join(json.dumps(t.template_tool()) for t in tools))
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    return messages, None


# -- the request's tool settings, checked ------------------------------------------------------------


def _call_schema(tool: FunctionTool) -> dict[str, Any]:
    """The JSON schema of one call's object, `{"name": ..., "arguments": {...}}` in that order; the
    arguments' `$defs` move to the root, where their `#/$defs/...` references point."""
    arguments = dict(tool.arguments_schema())
    defs = {key: arguments.pop(key) for key in ("$defs", "definitions") if key in arguments}
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        **defs,
        "x-guidance": _JSON_STYLE,
    }


@dataclass(frozen=True)
class ToolCalling:
    """A request's tools, `tool_choice` and `parallel_tool_calls`, checked by `build`."""

    tools: tuple[FunctionTool, ...] = ()
    choice: ToolChoice = "none"
    parallel: bool = False

    @classmethod
    def build(
        cls, tools: Sequence[FunctionTool] | None, choice: ToolChoice | None = None, parallel: bool | None = None,
        tool_path: str = "tools[{i}].function",
    ) -> ToolCalling:  # fmt: skip
        """Checked settings (OpenAI's defaults: "auto" with tools, "none" without; one call unless
        `parallel` is true, as llama-server: with parallel calls allowed, small models keep adding calls
        until max_tokens, which breaks every agent loop that leaves the field unset);
        `tool_path` names tool i in errors (`tools[{i}].function` on chat, `tools[{i}]` on Responses).
        Raises ToolError for a schema llguidance cannot compile, a repeated tool name, a named choice that
        names no tool, or `required` without tools."""
        tools = tuple(tools or ())
        if choice is None:
            choice = "auto" if tools else "none"
        names: set[str] = set()
        for i, tool in enumerate(tools):
            where = tool_path.format(i=i)
            if tool.name in names:
                raise ToolError(f"{where}.name", f"{where}.name: a second tool named {tool.name!r}")
            names.add(tool.name)
            try:
                json_schema_grammar(tool.arguments_schema(), f"{where}.parameters")
                json_schema_grammar(_call_schema(tool), f"{where}.parameters")
            except ValueError as e:
                raise ToolError(f"{where}.parameters", str(e)) from None
        if isinstance(choice, NamedTool) and choice.name not in names:
            offered = ", ".join(sorted(names)) or "none"
            raise ToolError("tool_choice", f"tool_choice: no tool named {choice.name!r} in tools (offered: {offered})")
        if choice == "required" and not tools:
            raise ToolError("tool_choice", 'tool_choice: "required" needs at least one tool in tools')
        return cls(tools, choice, bool(parallel))

    @property
    def active(self) -> bool:
        """Whether the model is offered tools (rendered, constrained, parsed): `none` offers none."""
        return bool(self.tools) and self.choice != "none"

    @property
    def offered(self) -> tuple[FunctionTool, ...]:
        """The tools the template shows the model."""
        return self.tools if self.active else ()

    def callable(self) -> tuple[FunctionTool, ...]:
        """The tools a call may name: the named one, or all offered."""
        if isinstance(self.choice, NamedTool):
            return tuple(t for t in self.tools if t.name == self.choice.name)
        return self.offered

    def grammar(self, fmt: CallFormat, answer_schema: dict[str, Any] | None = None) -> str | None:
        """The checked llguidance (Lark) grammar of the output; None when no tool is offered.  With
        `answer_schema` (a response_format schema), an `auto` answer that is not a call follows it.
        ToolError (naming `tools`) if llguidance cannot compile it."""
        if not self.active:
            return None
        open_, close = fmt.marker(OPEN), fmt.marker(CLOSE)
        call = f'call: {open_} "\\n" body "\\n" {close}'
        bodies = [f"fn_{i}" for i in range(len(self.callable()))]
        rules = [
            call,
            "calls: call" + (' ("\\n" call)*' if self.parallel else ""),
            "body: " + " | ".join(bodies),
            *(f"{b}: %json {json.dumps(_call_schema(t))}" for b, t in zip(bodies, self.callable(), strict=True)),
        ]
        if answer_schema is not None:
            rules.append(f"answer: %json {json.dumps({**answer_schema, 'x-guidance': _JSON_STYLE})}")
        if self.choice != "auto":
            start = "start: calls"
        elif answer_schema is not None:
            start = "start: answer | calls"
        else:
            # Free text, or a bare call as the whole output (free text cannot start with `{`).
            rules.append("PLAIN: /\\s*([^{\\s](.|\\n)*)?/")
            if fmt.open_token is not None:
                # The marker is a special token free text cannot contain: it switches to the call grammar.
                start = "start: PLAIN | PLAIN calls | body"
            else:
                # A text marker: a lazy lexeme ends the free text at the first `<tool_call>` (llguidance's
                # tool-calling idiom; the grammar then allows nothing but a call).
                more = ' ("\\n" call)*' if self.parallel else ""
                start = f'start: PLAIN | head body "\\n" {close}{more} | body'
                rules.append(f'head[lazy]: PLAIN {open_} "\\n"')
        try:
            return check_grammar("%llguidance {}\n" + "\n".join([start, *rules]) + "\n", "tools")
        except ValueError as e:
            raise ToolError("tools", str(e)) from None

    def parser(self) -> ToolCallParser:
        """A parser for one generated sequence, which takes calls of the callable tools only."""
        return ToolCallParser({t.name for t in self.callable()})

    def parse(self, text: str) -> ParsedOutput:
        """A whole output's content and calls (of the callable tools)."""
        return parse_tool_calls(text, {t.name for t in self.callable()})


# -- parsing the output -----------------------------------------------------------------------------


def new_call_id() -> str:
    """A call id in OpenAI's style: `call_` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the `index`-th call of a sequence: the first carries its id and name and empty
    arguments, the next ones fragments of its arguments' JSON text (as OpenAI streams calls)."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


ParsedDelta = str | ToolCallDelta  # content text, or a piece of a call


@dataclass
class ParsedCall:
    """One whole call: `arguments` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str = ""

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as an object (Ollama's shape); `{}` if the text is not a JSON object (a call
        cut short by max_tokens)."""
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class ParsedOutput:
    """A sequence's text split into its content and its calls."""

    content: str = ""
    tool_calls: list[ParsedCall] = field(default_factory=list)


def collect(deltas: Iterable[ParsedDelta], into: ParsedOutput | None = None) -> ParsedOutput:
    """The deltas put together (as a client reassembles a stream)."""
    out = into or ParsedOutput()
    for delta in deltas:
        if isinstance(delta, str):
            out.content += delta
        elif delta.id is not None:
            out.tool_calls.append(ParsedCall(delta.id, delta.name or "", delta.arguments))
        else:
            out.tool_calls[delta.index].arguments += delta.arguments
    return out


def parse_tool_calls(text: str, names: Collection[str]) -> ParsedOutput:
    """A whole output's content and calls (the same split as streaming it through ToolCallParser)."""
    parser = ToolCallParser(names)
    return collect([*parser.push(text), *parser.finish()])


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([^"\\]*)"\s*,\s*"arguments"\s*:')


class ToolCallParser:
    """Generated text in, content and call pieces out, as the text arrives (any split: a marker may span
    deltas).

    A call is `<tool_call>` + its JSON + `</tool_call>`, or a bare JSON call that is the whole output (as
    small models write one without the markers: llama.cpp takes it too; the `auto` grammar lets an output
    start with `{` only as a call).  A call is emitted once its head (`{"name": "<a callable tool>",
    "arguments":`) is complete, then its arguments' JSON text as it comes.  Text that may be the start of a
    marker or a call is held back until resolved, so no marker leaks into content; whitespace between
    content and calls is left out.  A block that cannot be a call's head (malformed JSON, an unknown name)
    is content; one cut short before its head was complete is dropped."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = frozenset(names)
        self._heads = [f'{{"name": "{name}", "arguments":' for name in self.names]  # as the grammar writes them
        self.calls = 0  # calls started so far
        self.closed = 0  # calls whose end was read (complete, unless cut short)
        self._state: Literal["text", "head", "arguments", "tail"] = "text"
        self._buf = ""  # text received and not yet resolved
        self._begun = False  # content or a call was emitted: a bare call can only open the output
        self._bare = False  # the current call has no markers
        self._after_call = False  # drop the whitespace that follows a call
        # the arguments' JSON scan: nesting depth, inside a string, after a backslash, value begun
        self._depth, self._in_string, self._escape, self._value = 0, False, False, False

    def push(self, text: str) -> list[ParsedDelta]:
        """Add generated text; the content and call pieces now resolved."""
        self._buf += text
        out: list[ParsedDelta] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[ParsedDelta]:
        """What is still held once the output ended: a partial marker, or a block that cannot be a call,
        is content; trailing whitespace too when no call was made."""
        out: list[ParsedDelta] = []
        if self._state == "text":
            self._emit_text(self._buf.rstrip() if self.calls else self._buf, out)
        elif self._state == "head" and not self._may_be_head():
            self._emit_text(("" if self._bare else OPEN) + self._buf, out)
        self._buf = ""
        return out

    def _step(self, out: list[ParsedDelta]) -> bool:
        """Resolve what the buffer allows in the current state; True if the state changed."""
        if self._state == "text":
            return self._text(out)
        if self._state == "head":
            return self._head(out)
        if self._state == "arguments":
            return self._arguments(out)
        return self._tail()

    def _emit_text(self, text: str, out: list[ParsedDelta]) -> None:
        if self._after_call:
            text = text.lstrip()
            self._after_call = not text
        if text:
            out.append(text)
            self._begun = True

    def _may_be_head(self) -> bool:
        """Whether the held block may still become a call's head as the grammar writes it."""
        start = self._buf.lstrip()
        return any(head.startswith(start) for head in self._heads)

    def _text(self, out: list[ParsedDelta]) -> bool:
        if not self._begun and self._buf.lstrip().startswith("{"):
            self._state, self._bare = "head", True
            return True
        at = self._buf.find(OPEN)
        if at >= 0:
            self._emit_text(self._buf[:at].rstrip(), out)
            self._buf, self._state, self._bare = self._buf[at + len(OPEN) :], "head", False
            return True
        # Hold a tail that may begin the marker, and trailing whitespace (dropped if a call follows).
        hold = next((k for k in range(min(len(OPEN) - 1, len(self._buf)), 0, -1) if OPEN.startswith(self._buf[-k:])), 0)
        body, held = self._buf[: len(self._buf) - hold], self._buf[len(self._buf) - hold :]
        kept = body.rstrip()
        self._emit_text(kept, out)
        self._buf = body[len(kept) :] + held
        return False

    def _head(self, out: list[ParsedDelta]) -> bool:
        head = _HEAD.match(self._buf)
        if head is not None and head.group(1) in self.names:
            out.append(ToolCallDelta(self.calls, "", new_call_id(), head.group(1)))
            self.calls += 1
            self._begun = True
            self._buf, self._state = self._buf[head.end() :], "arguments"
            self._depth, self._in_string, self._escape, self._value = 0, False, False, False
            return True
        if self._may_be_head():
            return False
        if self._bare:  # not a call: the output is text
            self._emit_text(self._buf, out)
            self._buf, self._state = "", "text"
            return True
        end = self._buf.find(CLOSE)
        if end < 0:
            return False
        # A closed block without a call's head: what the model wrote is content.
        self._emit_text(OPEN + self._buf[: end + len(CLOSE)], out)
        self._buf, self._state = self._buf[end + len(CLOSE) :], "text"
        return True

    def _arguments(self, out: list[ParsedDelta]) -> bool:
        """Pass the arguments' JSON on up to where the value ends (a JSON scan: strings, nesting)."""
        begin, end = 0, None
        for i, ch in enumerate(self._buf):
            if not self._value:
                if ch.isspace():
                    begin = i + 1
                    continue
                self._value = True
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
                    if self._depth == 0:
                        end = i + 1
                        break
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]" or (self._depth == 0 and (ch.isspace() or ch == ",")):
                if self._depth == 0:  # a scalar value ends at what follows it
                    end = i
                    break
                self._depth -= 1
                if self._depth == 0:
                    end = i + 1
                    break
        fragment = self._buf[begin:end]
        if fragment:
            out.append(ToolCallDelta(self.calls - 1, fragment))
        if end is None:
            self._buf = ""
            return False
        self._buf, self._state = self._buf[end:], "tail"
        return True

    def _tail(self) -> bool:
        """After the arguments: the call's closing brace, and its closing marker (anything else in it is
        dropped)."""
        close = "}" if self._bare else CLOSE
        end = self._buf.find(close)
        if end < 0:
            return False
        self._buf, self._state = self._buf[end + len(close) :], "text"
        self._after_call = True
        self.closed += 1
        return True
