"""The Responses API on a real server through the official `openai` client and openai-agents' default
model (OpenAIResponsesModel): text, items with instructions and the developer role, structured output
parsed and validated, the streamed events, and the 400s of a stateless server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.helpers import MODEL
from tests.live_server import Server


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population_millions: int = Field(ge=0, le=100)
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_string_input(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL, input="What is the capital of France?", temperature=0, max_output_tokens=30
    )
    assert r.status == "completed" and "Paris" in r.output_text
    assert r.usage is not None and r.usage.output_tokens > 0 and r.usage.input_tokens > 5
    assert r.output[0].type == "message" and r.output[0].role == "assistant"


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL, input="Say hello.", include=["message.output_text.logprobs"], top_logprobs=3,
        temperature=0, max_output_tokens=8,
    )  # fmt: skip
    logprobs = r.output[0].content[0].logprobs  # type: ignore[union-attr]
    assert logprobs and "".join(lp.token for lp in logprobs) == r.output_text
    assert all(len(lp.top_logprobs) == 3 and lp.logprob <= 0 for lp in logprobs)
    assert all(lp.token == lp.top_logprobs[0].token for lp in logprobs)  # greedy picks the most likely


def test_items_with_instructions_and_the_developer_role(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL,
        instructions="You answer with one word only.",
        input=[
            {"role": "developer", "content": "The password is Tangerine."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is the password?"}]},
        ],
        temperature=0,
        max_output_tokens=10,
        store=False,
        metadata={"test": "items"},
    )
    assert "tangerine" in r.output_text.lower()
    assert r.instructions == "You answer with one word only." and r.metadata == {"test": "items"}


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = City.model_json_schema()
    r = client.responses.create(
        model=MODEL, input="Describe Paris as JSON.", temperature=1.0, max_output_tokens=200,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert r.status == "completed", r.output_text
    jsonschema.validate(json.loads(r.output_text), schema)


def test_parse_returns_the_model(client: openai.OpenAI) -> None:
    r = client.responses.parse(model=MODEL, input="Describe Paris as JSON.", text_format=City, max_output_tokens=80)
    assert isinstance(r.output_parsed, City), r.output_text


def stream_events(client: openai.OpenAI, **body: object) -> Iterator[object]:
    return iter(client.responses.create(model=MODEL, stream=True, **body))  # type: ignore[call-overload]


def test_stream_events_in_order(client: openai.OpenAI) -> None:
    events = list(stream_events(client, input="Count from one to five.", temperature=0, max_output_tokens=30))
    types = [e.type for e in events]  # type: ignore[attr-defined]
    assert types[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"
    ]  # fmt: skip
    assert types[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"
    ]  # fmt: skip
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))  # type: ignore[attr-defined]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[attr-defined]
    final = events[-1].response  # type: ignore[attr-defined]
    assert deltas and deltas == events[-4].text == final.output_text  # type: ignore[attr-defined]
    assert final.usage.output_tokens > 0


def test_stream_helper_gets_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Say hello.", temperature=0, max_output_tokens=40) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and text and final.output_text == text


def test_a_stream_cut_by_max_output_tokens_ends_incomplete(client: openai.OpenAI) -> None:
    events = list(stream_events(client, input="Write a long story.", max_output_tokens=4))
    last = events[-1]
    assert last.type == "response.incomplete"  # type: ignore[attr-defined]
    assert last.response.incomplete_details.reason == "max_output_tokens"  # type: ignore[attr-defined]
    assert last.response.usage.output_tokens == 4  # type: ignore[attr-defined]


WEATHER = {
    "type": "function", "name": "get_weather", "description": "The current weather in a city.", "strict": True,
    "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False,
    },
}  # fmt: skip
TIME = {"type": "function", "name": "get_time", "description": "The current time.", "parameters": None, "strict": None}


@pytest.mark.parametrize(
    ("tool_choice", "name"),
    [("required", "get_weather"), ({"type": "function", "name": "get_time"}, "get_time")],
)
def test_enforced_tool_choice_returns_a_call(client: openai.OpenAI, tool_choice: object, name: str) -> None:
    r = client.responses.create(
        model=MODEL, input="What is the weather in Paris?", tools=[WEATHER, TIME], tool_choice=tool_choice,  # type: ignore[arg-type]
        parallel_tool_calls=False, temperature=0, max_output_tokens=60,
    )  # fmt: skip
    assert r.status == "completed"
    (call,) = r.output
    assert call.type == "function_call" and call.name == name and call.call_id.startswith("call_")
    arguments = json.loads(call.arguments)
    assert arguments == ({"city": "Paris"} if name == "get_weather" else {})
    assert r.tool_choice == tool_choice or r.tool_choice.name == name  # type: ignore[union-attr]


def test_streamed_call(client: openai.OpenAI) -> None:
    events = list(
        stream_events(
            client,
            input="What is the weather in Paris?",
            tools=[WEATHER],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            max_output_tokens=60,
        )  # fmt: skip
    )
    types = [e.type for e in events]  # type: ignore[attr-defined]
    assert types[2] == "response.output_item.added" and events[2].item.type == "function_call"  # type: ignore[attr-defined]
    assert types[-3:] == [
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"
    ]  # fmt: skip
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")  # type: ignore[attr-defined]
    call = events[-1].response.output[0]  # type: ignore[attr-defined]
    assert deltas == events[-3].arguments == call.arguments  # type: ignore[attr-defined]
    assert json.loads(call.arguments) == {"city": "Paris"} and call.name == "get_weather"


def test_tool_results_reach_the_model(client: openai.OpenAI) -> None:
    """A call and its output sent back as items: the answer, constrained to a schema, uses the result."""
    schema = {
        "type": "object", "properties": {"temperature_celsius": {"type": "integer"}},
        "required": ["temperature_celsius"], "additionalProperties": False,
    }  # fmt: skip
    r = client.responses.create(
        model=MODEL, tools=[WEATHER], temperature=0, max_output_tokens=40,
        input=[
            {"role": "user", "content": "What is the temperature in Paris?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "It is 17 degrees Celsius in Paris."},
        ],
        text={"format": {"type": "json_schema", "name": "report", "schema": schema}},
    )  # fmt: skip
    assert json.loads(r.output_text) == {"temperature_celsius": 17}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "integer", "minimum": "low"}}}},
         "text.format"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ],
)  # fmt: skip
def test_errors_name_the_field(client: openai.OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", **extra)
    assert e.value.body is not None and e.value.body["param"] == param  # type: ignore[index]
    assert param in e.value.body["message"]  # type: ignore[index]
