"""Tool calling on a real server with the real model, through the official openai and ollama clients:
each tool_choice, calls validated against their tool's schema, streamed calls reassembled by the openai
client's stream helper, parallel_tool_calls, history with calls and results, and the 400s."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.helpers import FRANCE, MODEL, assert_error, assert_ollama_error
from tests.live_server import Server

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
TIME_PARAMETERS = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                      "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "description": "The current time in a timezone",
                                      "parameters": TIME_PARAMETERS}},
]  # fmt: skip
WEATHER = [{"role": "user", "content": "What's the weather like in Paris?"}]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def valid_calls(message: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of each call, after checking its id and its arguments against its tool's schema."""
    calls = []
    for call in message.tool_calls or []:
        assert call.type == "function" and call.id.startswith("call_")
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        calls.append((call.function.name, arguments))
    return calls


def create(client: openai.OpenAI, **kw: Any) -> ChatCompletion:
    return client.chat.completions.create(
        **{"model": MODEL, "messages": WEATHER, "tools": TOOLS, "temperature": 0, "max_tokens": 60, **kw}
    )


@pytest.mark.parametrize(
    "tool_choice", ["auto", "required", {"type": "function", "function": {"name": "get_time"}}]
)  # fmt: skip
def test_tool_choice_gives_a_valid_call(client: openai.OpenAI, tool_choice: Any) -> None:
    r = create(client, tool_choice=tool_choice, parallel_tool_calls=False)
    choice = r.choices[0]
    calls = valid_calls(choice.message)
    assert choice.finish_reason == "tool_calls" and len(calls) == 1 and choice.message.content is None
    if isinstance(tool_choice, dict):
        assert calls[0][0] == "get_time"
    else:
        assert calls[0] == ("get_weather", {"city": "Paris", "unit": "celsius"})  # greedy


def test_tool_choice_none_offers_no_tools(client: openai.OpenAI) -> None:
    r = create(client, tool_choice="none", messages=FRANCE)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "The capital of France is Paris."  # as without tools
    assert (
        r.usage is not None and r.usage.prompt_tokens == create(client, messages=FRANCE, tools=None).usage.prompt_tokens
    )


def test_required_calls_are_valid_when_sampled(client: openai.OpenAI) -> None:
    """The grammar's guarantee: at temperature 1 every choice is a call whose arguments fit the schema."""
    r = create(client, tool_choice="required", parallel_tool_calls=False, temperature=1.0, n=4, seed=7)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and len(valid_calls(choice.message)) == 1


def test_parallel_calls(client: openai.OpenAI) -> None:
    """Allowed, the model may make several calls: each complete one is valid (at max_tokens the last may
    be cut short, as OpenAI's are)."""
    choice = create(client, tool_choice="required", parallel_tool_calls=True, max_tokens=120).choices[0]
    calls = choice.message.tool_calls or []
    complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]
    assert choice.finish_reason in ("tool_calls", "length") and complete
    assert len(valid_calls(choice.message.model_copy(update={"tool_calls": complete}))) == len(complete)
    assert len({c.id for c in calls}) == len(calls) and [c.function.name for c in calls][0] == "get_weather"


def test_streamed_calls_reassemble_to_the_whole_response(client: openai.OpenAI, server: Server) -> None:
    kw: dict[str, Any] = {"tool_choice": "required", "parallel_tool_calls": False}
    whole = create(client, **kw).choices[0]
    with client.chat.completions.stream(
        model=MODEL,
        messages=WEATHER,
        tools=TOOLS,
        temperature=0,
        max_tokens=60,
        **kw,  # type: ignore[arg-type]
    ) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == whole.finish_reason == "tool_calls"
    assert final.message.content is None and whole.message.content is None
    assert valid_calls(final.message) == valid_calls(whole.message)
    # On the wire: the call's first delta carries index, id, type, name and empty arguments; then fragments.
    body = {"model": MODEL, "messages": WEATHER, "tools": TOOLS, "temperature": 0, "max_tokens": 60, "stream": True,
            **kw}  # fmt: skip
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls", [])]
    first, *fragments = deltas
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert len(fragments) > 1 and all(set(f) == {"index", "function"} for f in fragments)
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == valid_calls(whole.message)[0][1]
    assert not any(e["choices"][0]["delta"].get("content") for e in events)  # no marker text leaked


def test_history_with_calls_and_results(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    history = [*WEATHER, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 22 degrees Celsius."}]  # fmt: skip
    r = create(client, messages=history, parallel_tool_calls=False)
    # The 0.5B model tends to call again; whichever it does, the turn is well formed.
    assert valid_calls(r.choices[0].message) or r.choices[0].message.content
    assert r.usage is not None and r.usage.prompt_tokens > create(client, max_tokens=1).usage.prompt_tokens + 20
    r = create(client, messages=[*FRANCE, {**history[1], "tool_calls": [{**call, "function": {
        "name": "get_capital", "arguments": '{"country": "France"}'}}]}, {**history[2], "content": "Paris"}],
        tool_choice="none")  # fmt: skip
    assert "Paris" in (r.choices[0].message.content or "")


def test_tool_errors_name_the_field(server: Server) -> None:
    url = server.url + "/v1/chat/completions"
    bad_schema = [TOOLS[0], {"type": "function", "function": {"name": "f", "parameters": {"type": "strng"}}}]
    assert_error(httpx.post(url, json={"messages": WEATHER, "tools": bad_schema}), 400, "tools[1].function.parameters")
    unknown = {"type": "function", "function": {"name": "nope"}}
    assert_error(
        httpx.post(url, json={"messages": WEATHER, "tools": TOOLS, "tool_choice": unknown}), 400, "tool_choice"
    )
    assert_error(httpx.post(url, json={"messages": WEATHER, "tool_choice": "required"}), 400, "tool_choice")
    bad_name = [{"type": "function", "function": {"name": "has space"}}]
    assert_error(httpx.post(url, json={"messages": WEATHER, "tools": bad_name}), 400, "tools[0].function.name")


# -- Ollama --------------------------------------------------------------------------------------------


def get_weather(city: str) -> str:
    """The current weather in a city.

    Args:
      city: The city's name
    """
    return "sunny"


def test_ollama_chat_with_tools(server: Server) -> None:
    client = ollama.Client(host=server.url)
    options = {"temperature": 0, "num_predict": 60}
    r = client.chat(model=MODEL, messages=WEATHER, tools=[get_weather], options=options)
    (call,) = r.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert r.message.content == "" and r.done_reason == "stop"
    parts = list(client.chat(model=MODEL, messages=WEATHER, tools=[get_weather], options=options, stream=True))
    streamed = [c for p in parts for c in p.message.tool_calls or []]
    assert streamed == [call] and parts[-1].done and not "".join(p.message.content or "" for p in parts)
    history = [
        *WEATHER,
        r.message,
        {"role": "tool", "content": "Sunny, 22 degrees Celsius.", "tool_name": "get_weather"},
    ]
    answer = client.chat(model=MODEL, messages=history, tools=[get_weather], options=options)
    assert answer.done and (answer.message.content or answer.message.tool_calls)
    assert (answer.prompt_eval_count or 0) > (r.prompt_eval_count or 0) + 20  # the call and its result were rendered
    bad = {"model": MODEL, "messages": WEATHER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "strng"}}}}}]}  # fmt: skip
    assert_ollama_error(httpx.post(server.url + "/api/chat", json=bad), 400, "tools[0].function.parameters")
