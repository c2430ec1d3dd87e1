"""Structured output on a real server: OpenAI's response_format and Ollama's format, through the official
clients, constrain the real model's output (the grammar's guarantee itself: tests/engine/test_structured.py)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.helpers import MODEL, City
from tests.live_server import Server

ASK = [{"role": "user", "content": "Describe Paris as JSON."}]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_openai_parse_returns_the_model(client: openai.OpenAI, temperature: float) -> None:
    r = client.chat.completions.parse(
        model=MODEL, messages=ASK, response_format=City, temperature=temperature, max_tokens=80
    )
    city = r.choices[0].message.parsed
    assert isinstance(city, City), r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_openai_json_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        # seeded: an unconstrained object at temperature 1 can, on an unlucky draw, run past any max_tokens
        model=MODEL,
        messages=ASK,
        response_format={"type": "json_object"},
        temperature=1.0,
        max_tokens=200,
        seed=3,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_openai_completions_json_schema_streamed(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    stream = client.completions.create(
        model=MODEL, prompt="Is water wet? Answer in JSON:", max_tokens=20, stream=True,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}},
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)


def test_openai_bad_schema_is_400(client: openai.OpenAI) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": "low"}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, response_format=bad)  # type: ignore[arg-type]
    assert e.value.body is not None and e.value.body["param"] == "response_format"  # type: ignore[index]


def test_ollama_format_schema_and_json(server: Server) -> None:
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=server.url)
    r = client.chat(model=MODEL, messages=ASK, format=City.model_json_schema(), options={"num_predict": 80})
    City.model_validate_json(r.message.content or "")
    r = client.generate(model=MODEL, prompt="A JSON object about cats:", format="json", options={"num_predict": 200})
    assert isinstance(json.loads(r.response), dict)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=MODEL, messages=ASK, format={"type": "integer", "minimum": "low"})
    assert e.value.status_code == 400 and "format" in str(e.value)
