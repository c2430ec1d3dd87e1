"""A response's output: the generated text split into output items (assistant messages and function
calls) and the stream events that build them, one code path for whole and streamed responses.

With tools offered, the text goes through the surface-neutral ToolCallParser (server/tools.py): its
content becomes a message item, each call a function_call item, in the order the model wrote them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from wicore.server.openai.protocol import ChatLogprob
from wicore.server.responses.protocol import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    ItemStatus,
    OutputFunctionCall,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputTextPart,
    ResponseEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from wicore.server.tools import ParsedDelta, ToolCallDelta, ToolCallParser


class OutputItems:
    """Builds the output items of one generated sequence from its text as it arrives; `push` and
    `finish` return the stream events of what they resolved, `items` holds the items completed so far."""

    def __init__(self, item_id: str, tool_names: Collection[str] = ()) -> None:
        self.item_id = item_id  # the request's id, which item ids carry
        self.parser = ToolCallParser(tool_names) if tool_names else None
        self.items: list[OutputItem] = []
        self._open: OutputMessage | OutputFunctionCall | None = None
        self._text = ""  # the open message's text, or the open call's arguments
        self._logprobs: list[ChatLogprob] = []  # the open message's
        self._pending: list[ChatLogprob] = []  # of tokens pushed whose text is not yet resolved

    def push(self, text: str, logprobs: Sequence[ChatLogprob] = ()) -> list[ResponseEvent]:
        """Add generated text and its tokens' logprobs, which go with the message text it becomes (the
        parser may hold text back; a call's tokens have no logprobs in this API)."""
        self._pending += logprobs
        deltas: Iterable[ParsedDelta] = self.parser.push(text) if self.parser else [text] if text else []
        return self._apply(deltas)

    def finish(self, cut: bool) -> list[ResponseEvent]:
        """The events that close the output; `cut`: max_output_tokens ended it (the last item is incomplete)."""
        events = self._apply(self.parser.finish() if self.parser else [])
        if not self.items and self._open is None:
            events += self._open_message()  # an empty answer is still one (empty) message
        return events + self._close("incomplete" if cut else "completed")

    def _apply(self, deltas: Iterable[ParsedDelta]) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        for delta in deltas:
            if isinstance(delta, str):
                if not isinstance(self._open, OutputMessage):
                    events += self._close("completed") + self._open_message()
                self._text += delta
                self._logprobs += self._pending
                events.append(
                    TextDeltaEvent(item_id=self._open_id, output_index=self._index, delta=delta, logprobs=self._pending)
                )
                self._pending = []
            elif delta.id is not None:
                events += self._close("completed") + self._open_call(delta)
                self._pending = []
            else:
                self._text += delta.arguments
                events.append(
                    ArgumentsDeltaEvent(item_id=self._open_id, output_index=self._index, delta=delta.arguments)
                )
        return events

    @property
    def _index(self) -> int:
        return len(self.items)  # the open item's place in `output`

    @property
    def _open_id(self) -> str:
        assert self._open is not None
        return self._open.id

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self.item_id}" if not self.items else f"{prefix}_{self.item_id}_{self._index}"

    def _open_message(self) -> list[ResponseEvent]:
        self._open, self._text = OutputMessage(id=self._new_id("msg"), status="in_progress", content=[]), ""
        self._logprobs = []
        return [
            OutputItemEvent(type="response.output_item.added", output_index=self._index, item=self._open),
            ContentPartEvent(
                type="response.content_part.added", item_id=self._open.id, output_index=self._index,
                part=OutputTextPart(text=""),
            ),
        ]  # fmt: skip

    def _open_call(self, delta: ToolCallDelta) -> list[ResponseEvent]:
        assert delta.id is not None and delta.name is not None
        self._open = OutputFunctionCall(
            id=self._new_id("fc"), status="in_progress", call_id=delta.id, name=delta.name, arguments=""
        )
        self._text = delta.arguments
        events: list[ResponseEvent] = [
            OutputItemEvent(type="response.output_item.added", output_index=self._index, item=self._open)
        ]
        if delta.arguments:
            events.append(ArgumentsDeltaEvent(item_id=self._open.id, output_index=self._index, delta=delta.arguments))
        return events

    def _close(self, status: ItemStatus) -> list[ResponseEvent]:
        """Complete the open item (if any) with `status`: its done events, and it joins `items`."""
        item, index = self._open, self._index
        if item is None:
            return []
        events: list[ResponseEvent]
        if isinstance(item, OutputMessage):
            part = OutputTextPart(text=self._text, logprobs=self._logprobs)
            item = item.model_copy(update={"status": status, "content": [part]})
            events = [
                TextDoneEvent(item_id=item.id, output_index=index, text=part.text, logprobs=part.logprobs),
                ContentPartEvent(type="response.content_part.done", item_id=item.id, output_index=index, part=part),
            ]
        else:
            item = item.model_copy(update={"status": status, "arguments": self._text})
            events = [ArgumentsDoneEvent(item_id=item.id, output_index=index, name=item.name, arguments=self._text)]
        self.items.append(item)
        self._open, self._text = None, ""
        return [*events, OutputItemEvent(type="response.output_item.done", output_index=index, item=item)]
