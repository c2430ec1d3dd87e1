"""The Responses API route in process, over a fake engine: the response and its stream validate as the
`openai` package's types, items reach the chat template, text.format reaches the engine as a grammar,
the stateless and unsupported fields are 400s naming them, and failures keep their status or end the
stream with an error event."""

from __future__ import annotations

import json

import httpx
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.fake_engine import REPLY, FakeEngine, in_process
from tests.helpers import MODEL, assert_error
from wicore.engine.client import QueueFull
from wicore.engine.request import FinishReason

pytestmark = pytest.mark.anyio
STREAM_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


async def create(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post("/v1/responses", json={"model": MODEL, "input": "What is the capital of France?", **body})


async def stream_events(client: httpx.AsyncClient, **body: object) -> list[tuple[str, dict]]:
    """Each event's name and data."""
    request = {"model": MODEL, "input": "What is the capital of France?", "stream": True, **body}
    async with client.stream("POST", "/v1/responses", json=request) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = (await r.aread()).decode()
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        events.append((name[7:], json.loads(data[6:])))
    return events


def prompt_text(engine: FakeEngine) -> str:
    return engine.tokenizer.decode(engine.requests[-1].prompt_ids, skip_special_tokens=False)


async def test_response_shape(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await create(client, instructions="Be brief.", metadata={"k": "v"}, store=True, temperature=None)
    assert r.status_code == 200, r.text
    resp = Response.model_validate(r.json())
    assert resp.output_text == REPLY and resp.status == "completed" and resp.incomplete_details is None
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == MODEL
    (message,) = resp.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_")
    assert resp.usage is not None and resp.usage.output_tokens == len(engine.tokenizer.encode(REPLY))
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.usage.input_tokens == len(engine.requests[-1].prompt_ids)
    assert resp.instructions == "Be brief." and resp.metadata == {"k": "v"} and resp.temperature == 0.7
    assert resp.tools == [] and resp.tool_choice == "auto" and resp.parallel_tool_calls is False
    assert prompt_text(engine).startswith("<|im_start|>system\nBe brief.<|im_end|>")


async def test_items_reach_the_template(engine: FakeEngine) -> None:
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use the tools."}]},
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}',
         "id": "fc_1", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "21 C"},
    ]  # fmt: skip
    async with in_process(engine) as client:
        r = await client.post("/v1/responses", json={"model": MODEL, "input": items, "include": [], "reasoning": None})
    assert r.status_code == 200, r.text
    prompt = prompt_text(engine)
    # Qwen2.5's template: the developer text as the system turn; the call joins the assistant turn it follows.
    assert prompt.startswith("<|im_start|>system\nUse the tools.<|im_end|>\n<|im_start|>user\nWeather in Paris?")
    assert 'Let me look.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<|im_start|>user\n<tool_response>\n21 C\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


async def test_stream_events_in_order(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        events = await stream_events(client)
    for name, data in events:
        assert STREAM_EVENT.validate_python(data).type == name
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    names = [name for name, _ in events]
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert names == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert "".join(deltas) == REPLY == events[-4][1]["text"]
    final = Response.model_validate(events[-1][1]["response"])
    assert final.output_text == REPLY and final.status == "completed" and final.usage is not None
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []
    assert len({data["response"]["id"] for name, data in events if "response" in data}) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_max_output_tokens_makes_it_incomplete(engine: FakeEngine, stream: bool) -> None:
    async with in_process(engine) as client:
        if stream:
            name, data = (await stream_events(client, max_output_tokens=3))[-1]
            assert name == "response.incomplete"
            body = data["response"]
        else:
            body = (await create(client, max_output_tokens=3)).json()
    resp = Response.model_validate(body)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens" and resp.output[0].status == "incomplete"
    assert resp.usage is not None and resp.usage.output_tokens == 3


@pytest.mark.parametrize(
    ("text", "constrained"),
    [
        ({"format": {"type": "text"}}, False),
        ({"format": {"type": "json_object"}}, True),
        ({"format": {"type": "json_schema", "name": "c", "schema": {"type": "object"}, "strict": True}}, True),
    ],
)
async def test_text_format_reaches_the_engine_as_a_grammar(engine: FakeEngine, text: dict, constrained: bool) -> None:
    async with in_process(engine) as client:
        r = await create(client, text=text)
    assert r.status_code == 200, r.text
    assert (engine.requests[-1].params.grammar is not None) == constrained
    assert r.json()["text"]["format"] == text["format"] | r.json()["text"]["format"]  # echoed as given


async def test_logprobs_when_include_asks(engine: FakeEngine) -> None:
    logprobs = {"include": ["message.output_text.logprobs"], "top_logprobs": 2}
    async with in_process(engine) as client:
        resp = Response.model_validate((await create(client, **logprobs)).json())
        events = await stream_events(client, **logprobs)
        plain = Response.model_validate((await create(client, include=["reasoning.encrypted_content"])).json())
    part = resp.output[0].content[0]  # type: ignore[union-attr]
    assert part.logprobs is not None and len(part.logprobs) == len(engine.tokenizer.encode(REPLY))
    assert "".join(lp.token for lp in part.logprobs) == REPLY
    assert all(len(lp.top_logprobs) == 2 and lp.bytes for lp in part.logprobs) and resp.top_logprobs == 2
    assert engine.requests[0].params.logprobs == 2 and engine.requests[-1].params.logprobs is None
    streamed = [lp for name, data in events if name == "response.output_text.delta" for lp in data["logprobs"]]
    assert [lp["token"] for lp in streamed] == [lp.token for lp in part.logprobs]
    assert events[-1][1]["response"]["output"][0]["content"][0]["logprobs"] == streamed
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {}},
    "strict": True,
}


@pytest.mark.parametrize(
    ("tool_choice", "shown", "constrained"),
    [("none", False, False), ("auto", True, True), ("required", True, True),
     ({"type": "function", "name": "get_weather"}, True, True)],
)  # fmt: skip
async def test_tools_reach_the_template_and_the_grammar(
    engine: FakeEngine, tool_choice: object, shown: bool, constrained: bool
) -> None:
    async with in_process(engine) as client:
        r = await create(client, tools=[WEATHER], tool_choice=tool_choice, parallel_tool_calls=False)
    assert r.status_code == 200, r.text
    resp = Response.model_validate(r.json())
    assert ("<tools>" in prompt_text(engine)) == shown and ('"get_weather"' in prompt_text(engine)) == shown
    assert (engine.requests[-1].params.grammar is not None) == constrained
    assert resp.tools[0].name == "get_weather" and resp.parallel_tool_calls is False
    assert resp.output_text == REPLY  # the fake engine's reply holds no call: it is the message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "integer", "minimum": "a"}}}},
         "text.format"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]}, "input[0].content"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": []}, "input"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"tools": [{**WEATHER, "name": "no spaces"}]}, "tools[0].name"),
        ({"tools": [{**WEATHER, "parameters": {"type": "object", "properties": {"x": {"type": "strng"}}}}]},
         "tools[0].parameters"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": 5000}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"include": ["message.output_text.tokens"]}, "include[0]"),
        ({"seed": 1}, "seed"),  # not in the Responses API: invented fields are still 400s
    ],
)  # fmt: skip
async def test_bad_requests_are_400_naming_the_field(engine: FakeEngine, body: dict, param: str) -> None:
    async with in_process(engine) as client:
        assert_error(await create(client, **body), 400, param)
    assert engine.requests == []


async def test_unknown_model_is_404(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        assert_error(await create(client, model="gpt-9"), 404, "model")


async def test_refusal_keeps_its_status(engine: FakeEngine) -> None:
    engine.refuse = QueueFull("full")
    async with in_process(engine) as client:
        for stream in (False, True):
            r = await create(client, stream=stream)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"


async def test_failure_mid_stream_is_an_error_event(engine: FakeEngine) -> None:
    engine.finish = FinishReason.TIMEOUT
    async with in_process(engine) as client:
        assert_error(await create(client), 408, None)
        events = await stream_events(client)
    name, data = events[-1]
    assert name == "error" and STREAM_EVENT.validate_python(data).type == "error"
    assert data["code"] == "408" and "timed out" in data["message"]
    assert data["sequence_number"] == len(events) - 1
    assert "response.completed" not in [n for n, _ in events]
