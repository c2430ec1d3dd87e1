"""Shared test helpers: the bundled models' names and paths, and what several test modules send or check."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from wicore.models import registry

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"
MODEL = "qwen2.5-coder-0.5b-instruct"  # the default chat model
EMBED = "all-minilm-l6-v2"  # the embedding model
GEMMA = "gemma-3-270m"  # the second chat model: a base model without a chat template
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
# What the last line of an Ollama response holds besides the text.
OLLAMA_FINAL_KEYS = {
    "model", "created_at", "done", "done_reason", "total_duration", "load_duration", "prompt_eval_count",
    "prompt_eval_duration", "eval_count", "eval_duration",
}  # fmt: skip
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to code."}]


class City(BaseModel):
    """A structured answer with bounds and an enum: the schema the structured-output tests ask for."""

    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population_millions: int = Field(ge=0, le=100)
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]


# A tool whose answer the model cannot know: a reply that has 17 in it used the tool's result.
WEATHER = "What is the temperature in Paris right now? Use the tool."


def get_temperature(city: str) -> int:
    """The temperature in a city right now, in degrees Celsius.

    Args:
        city: The city's name.
    """
    return 17


# get_temperature as OpenAI's `tools` entry, for clients that take the schema rather than the function.
TEMPERATURE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_temperature",
        "description": "The temperature in a city right now, in degrees Celsius.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def story(max_tokens: int, stream: bool = False, **extra: object) -> dict:
    """A greedy chat completion body whose answer runs long (for tests that need a busy engine)."""
    return {"model": MODEL, "messages": STORY, "max_tokens": max_tokens, "temperature": 0, "stream": stream, **extra}


def model_path(name: str) -> Path:
    """Path of a bundled model; fails (not skips) with the command that fixes it."""
    try:
        return registry.resolve(name)
    except registry.ModelError as e:
        pytest.fail(f"{e} (make test pulls it)")


def embedding_path(name: str) -> Path:
    """Folder of a bundled embedding model; fails (not skips) with the command that fixes it."""
    try:
        return registry.resolve_embedding(name)
    except registry.ModelError as e:
        pytest.fail(f"{e} (make test pulls it)")


def assert_error(r: httpx.Response, status: int, param: str | None) -> None:
    """`r` is the error envelope with `status`, naming `param` (in `param` and in the message)."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == str(status) and error["param"] == param
    if param:
        assert param in error["message"]


def assert_ollama_error(r: httpx.Response, status: int, says: str) -> None:
    """`r` is Ollama's error shape, `{"error": "message"}`, with `status` and `says` in the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and says in body["error"], body
