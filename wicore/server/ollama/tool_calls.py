"""Tool calling on Ollama's /api/chat: the request's tools checked, the chat template's inputs, the
output's grammar, and the generated text rendered as Ollama's `message.tool_calls` (arguments as an
object; streamed as Ollama streams them: content as it comes, each call whole once complete). The
surface-neutral work is server/tools.py's."""

from __future__ import annotations

from typing import Any

from wicore.server.ollama.protocol import OllamaCallFunction, OllamaChatMessage, OllamaChatRequest, OllamaToolCall
from wicore.server.tools import (
    CallFormat,
    ParsedCall,
    ParsedOutput,
    ToolCallParser,
    collect,
    template_inputs,
)


def _ollama_calls(calls: list[ParsedCall]) -> list[OllamaToolCall] | None:
    return [
        OllamaToolCall(function=OllamaCallFunction(name=c.name, arguments=c.arguments_object())) for c in calls
    ] or None


class OllamaChatTools:
    """One /api/chat request's tools: checked (400 naming the field) before anything is queued; with none
    offered the message is the text as generated."""

    def __init__(self, body: OllamaChatRequest, fmt: CallFormat) -> None:
        self.calling = body.tool_calling()  # ToolError: a 400 naming the field
        self.fmt = fmt
        self.body = body
        self._parser: ToolCallParser | None = self.calling.parser() if self.calling.active else None
        self._streamed = ParsedOutput()  # what the stream has parsed so far
        self._sent = 0  # calls sent in the stream

    def template_inputs(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The conversation and `tools` the chat template renders."""
        conversation = [m.template_message() for m in self.body.messages]
        return template_inputs(conversation, self.calling.offered, self.fmt)

    def grammar(self, format_grammar: str | None) -> str | None:
        """The tool grammar when tools are offered (an answer that is not a call follows `format`), else
        `format_grammar` (format's, already checked)."""
        if not self.calling.active:
            return format_grammar
        return self.calling.grammar(self.fmt, self.body.format_schema())

    def message(self, text: str) -> OllamaChatMessage:
        """A whole reply's message: its content and calls."""
        if not self.calling.active:
            return OllamaChatMessage(content=text)
        parsed = self.calling.parse(text)
        return OllamaChatMessage(content=parsed.content, tool_calls=_ollama_calls(parsed.tool_calls))

    def stream(self, text: str, done: bool) -> list[OllamaChatMessage]:
        """The stream's messages for new text (`done`: its last): the content, then each call completed."""
        if self._parser is None:
            return [OllamaChatMessage(content=text)] if text else []
        pieces = self._parser.push(text) + (self._parser.finish() if done else [])
        content_before = len(self._streamed.content)
        collect(pieces, self._streamed)
        messages = []
        if len(self._streamed.content) > content_before:
            messages.append(OllamaChatMessage(content=self._streamed.content[content_before:]))
        ready = len(self._streamed.tool_calls) if done else self._parser.closed
        if ready > self._sent:
            calls = _ollama_calls(self._streamed.tool_calls[self._sent : ready])
            messages.append(OllamaChatMessage(content="", tool_calls=calls))
            self._sent = ready
        return messages
