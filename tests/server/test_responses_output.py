"""Output items of the Responses API from generated text: content and calls split as the text arrives
in any pieces, the events that build them valid `openai` stream events in OpenAI's order, and the items
the same whole or streamed."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseStreamEvent
from pydantic import TypeAdapter

from wicore.server.openai.protocol import ChatLogprob
from wicore.server.responses.output import OutputItems
from wicore.server.responses.protocol import ResponseEvent

STREAM_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TEXT_AND_CALLS = f"Let me check.\n{CALL}\n{CALL.replace('Paris', 'Lyon')}"


def run(text: str, pieces: int, tools: tuple[str, ...] = ("get_weather",), cut: bool = False) -> tuple[
    OutputItems, list[ResponseEvent]
]:  # fmt: skip
    """`text` pushed in chunks of `pieces` characters (0: whole), then finished."""
    output = OutputItems("req1", tools)
    chunks = [text[i : i + pieces] for i in range(0, len(text), pieces)] if pieces else [text]
    events = [e for chunk in chunks for e in output.push(chunk)] + output.finish(cut)
    for k, event in enumerate(events):
        event.sequence_number = k
        assert STREAM_EVENT.validate_python(event.model_dump()).type == event.type
    return output, events


@pytest.mark.parametrize("pieces", [0, 1, 3, 7])
def test_content_then_calls(pieces: int) -> None:
    output, events = run(TEXT_AND_CALLS, pieces)
    message, first, second = output.items
    assert ResponseOutputMessage.model_validate(message.model_dump()).content[0].text == "Let me check."  # type: ignore[union-attr]
    calls = [ResponseFunctionToolCall.model_validate(c.model_dump()) for c in (first, second)]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Lyon"}]
    assert all(c.name == "get_weather" and c.call_id.startswith("call_") and c.status == "completed" for c in calls)
    assert len({message.id, first.id, second.id}) == 3 and calls[0].call_id != calls[1].call_id
    types = [e.type for e in events]
    assert types[:2] == ["response.output_item.added", "response.content_part.added"]
    text_done = types.index("response.output_text.done")
    assert types[text_done : text_done + 4] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
    ]  # fmt: skip
    assert types[-2:] == ["response.function_call_arguments.done", "response.output_item.done"]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    for index, call in ((1, calls[0]), (2, calls[1])):
        assert "".join(e.delta for e in deltas if e.output_index == index) == call.arguments  # type: ignore[attr-defined]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[attr-defined]
    assert text == "Let me check." and "<tool_call>" not in text


def test_whole_and_streamed_agree() -> None:
    whole, _ = run(TEXT_AND_CALLS, 0)
    streamed, _ = run(TEXT_AND_CALLS, 2)
    strip = [{k: v for k, v in i.model_dump().items() if k != "call_id"} for i in whole.items]
    assert strip == [{k: v for k, v in i.model_dump().items() if k != "call_id"} for i in streamed.items]


def test_without_tools_the_markers_are_text() -> None:
    output, _ = run(CALL, 4, tools=())
    (message,) = output.items
    assert message.type == "message" and message.content[0].text == CALL  # type: ignore[union-attr]


def test_an_empty_answer_is_one_empty_message() -> None:
    output, events = run("", 0)
    (message,) = output.items
    assert message.type == "message" and message.content[0].text == ""  # type: ignore[union-attr]
    assert [e.type for e in events][-1] == "response.output_item.done"


def test_a_cut_answer_leaves_the_last_item_incomplete() -> None:
    output, _ = run(f"{CALL}\nAnd more", 5, cut=True)
    call, message = output.items
    assert call.status == "completed" and message.status == "incomplete"


def test_logprobs_go_with_the_message_text_not_the_calls() -> None:
    output = OutputItems("req1", ("get_weather",))
    said, marker = ChatLogprob(token="Hi", logprob=-0.1), ChatLogprob(token="<tool_call>", logprob=-0.2)
    events = output.push("Hi", [said]) + output.push(f"\n{CALL}", [marker]) + output.finish(cut=False)
    message, call = output.items
    assert message.content[0].logprobs == [said] and call.type == "function_call"  # type: ignore[union-attr]
    assert [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs] == [said]  # type: ignore[attr-defined]
