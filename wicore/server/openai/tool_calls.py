"""Tool calling on /v1/chat/completions: the request's tools checked, the chat template's inputs, the
output's grammar, and the generated text rendered as OpenAI's `tool_calls` (whole, or streamed as
tool-call deltas). The surface-neutral work is server/tools.py's."""

from __future__ import annotations

from typing import Any

from wicore.engine.request import FinishReason
from wicore.server.openai.protocol import (
    ChatCompletionRequest,
    ChatDeltaMessage,
    ChatResponseMessage,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    OpenAIFinishReason,
    openai_finish_reason,
)
from wicore.server.protocol import FunctionCall, ToolCall
from wicore.server.tools import (
    CallFormat,
    ParsedDelta,
    ToolCallDelta,
    ToolCallParser,
    template_inputs,
)


class ChatTools:
    """One chat request's tool calling: built (and checked: 400 naming the field) before anything is
    queued; with no tool offered it changes nothing (content is the text as generated)."""

    def __init__(self, body: ChatCompletionRequest, fmt: CallFormat) -> None:
        self.calling = body.tool_calling()  # ToolError: a 400 naming the field
        self.fmt = fmt
        self.body = body
        self._parsers: dict[int, ToolCallParser] = {}

    def template_inputs(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The conversation and `tools` the chat template renders."""
        return template_inputs(self.body.conversation(), self.calling.offered, self.fmt)

    def grammar(self, response_grammar: str | None) -> str | None:
        """The output's grammar: the tool grammar when tools are offered (an answer that is not a call
        follows response_format), else `response_grammar` (response_format's, already checked)."""
        if not self.calling.active:
            return response_grammar
        answer = None if self.body.response_format is None else self.body.response_format.answer_schema()
        return self.calling.grammar(self.fmt, answer)

    def message(self, text: str) -> ChatResponseMessage:
        """A whole choice's message: its content and calls."""
        if not self.calling.active:
            return ChatResponseMessage(content=text)
        parsed = self.calling.parse(text)
        calls = [
            ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in parsed.tool_calls
        ]
        return ChatResponseMessage(content=parsed.content or (None if calls else ""), tool_calls=calls or None)

    @staticmethod
    def finish_reason(reason: FinishReason | None, message: ChatResponseMessage) -> OpenAIFinishReason | None:
        if reason is FinishReason.STOP and message.tool_calls:
            return "tool_calls"
        return openai_finish_reason(reason)

    def first_delta(self) -> DeltaMessage:
        """A choice's first delta: the role, and empty content unless calls may follow (then content
        stays null until there is some, as in a whole message)."""
        return DeltaMessage(role="assistant", content=None if self.calling.active else "")

    def deltas(self, index: int, text: str, done: bool) -> list[DeltaMessage]:
        """The stream deltas of choice `index`'s new text (`done`: its last); marker text and call JSON
        never reach content."""
        if not self.calling.active:
            return [DeltaMessage(content=text)] if text else []
        parser = self._parsers.setdefault(index, self.calling.parser())
        pieces = parser.push(text) + (parser.finish() if done else [])
        return [_delta(piece) for piece in pieces]

    def stream_finish_reason(self, index: int, reason: FinishReason) -> OpenAIFinishReason | None:
        parser = self._parsers.get(index)
        if reason is FinishReason.STOP and parser is not None and parser.calls:
            return "tool_calls"
        return openai_finish_reason(reason)


def _delta(piece: ParsedDelta) -> DeltaMessage:
    if isinstance(piece, str):
        return DeltaMessage(content=piece)
    return ChatDeltaMessage(tool_calls=[_tool_call_delta(piece)])


def _tool_call_delta(piece: ToolCallDelta) -> DeltaToolCall:
    if piece.id is None:
        return DeltaToolCall(index=piece.index, function=DeltaFunctionCall(arguments=piece.arguments))
    return DeltaToolCall(
        index=piece.index, id=piece.id, type="function",
        function=DeltaFunctionCall(name=piece.name, arguments=piece.arguments),
    )  # fmt: skip
