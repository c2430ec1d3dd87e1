"""LlamaIndex on a real server, through its Ollama LLM (the OpenAI one requires openai<3): chat,
`structured_predict` and `as_structured_llm` (Ollama's `format` schema) return the pydantic model, and
`predict_and_call` calls a FunctionTool with the arguments the model chose."""

from __future__ import annotations

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.ollama import Ollama

from tests.helpers import MODEL, WEATHER, City, get_temperature
from tests.live_server import Server


@pytest.fixture(scope="module")
def llm(server: Server) -> Ollama:
    return Ollama(
        model=MODEL, base_url=server.url, request_timeout=120, temperature=0, additional_kwargs={"num_predict": 80}
    )


def assert_paris(city: object) -> None:
    assert isinstance(city, City) and (city.name, city.country, city.continent) == ("Paris", "France", "Europe")


def test_chat(llm: Ollama) -> None:
    r = llm.chat([ChatMessage(role="user", content="What is the capital of France?")])
    assert r.message.content == "The capital of France is Paris."


def test_structured_predict_and_structured_llm(llm: Ollama) -> None:
    assert_paris(llm.structured_predict(City, PromptTemplate("Describe {city}."), city="Paris"))
    r = llm.as_structured_llm(City).chat([ChatMessage(role="user", content="Describe Paris.")])
    assert_paris(r.raw)


def test_predict_and_call(llm: Ollama) -> None:
    r = llm.predict_and_call([FunctionTool.from_defaults(fn=get_temperature)], WEATHER)
    (source,) = r.sources
    assert source.tool_name == "get_temperature" and source.raw_input == {"args": (), "kwargs": {"city": "Paris"}}
    assert source.raw_output == 17
