"""LangChain's ChatOpenAI on a real server: `with_structured_output` by JSON schema and by function
calling returns the pydantic model; `bind_tools` hands back the AIMessage's tool calls, streamed or not,
and the tool's result comes back into the answer."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tests.helpers import MODEL, WEATHER, City, get_temperature
from tests.live_server import Server


@pytest.fixture(scope="module")
def llm(server: Server) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, base_url=server.url + "/v1", api_key=SecretStr("unused"), temperature=0, max_tokens=80,
        max_retries=0,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(llm: ChatOpenAI, method: Literal["json_schema", "function_calling"]) -> None:
    city = llm.with_structured_output(City, method=method).invoke("Describe Paris.")
    assert isinstance(city, City) and (city.name, city.country, city.continent) == ("Paris", "France", "Europe")


def test_bind_tools_and_the_result_back(llm: ChatOpenAI) -> None:
    message = llm.bind_tools([get_temperature]).invoke(WEATHER)
    assert isinstance(message, AIMessage)
    (call,) = message.tool_calls
    assert call["name"] == "get_temperature" and call["args"] == {"city": "Paris"} and call["id"]
    answer = llm.invoke([HumanMessage(WEATHER), message, ToolMessage("17", tool_call_id=call["id"])])
    assert "17" in str(answer.content)


def test_bind_tools_streamed(llm: ChatOpenAI) -> None:
    chunks = list(llm.bind_tools([get_temperature]).stream(WEATHER))
    assert len(chunks) > 2  # the arguments arrived in pieces
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert isinstance(merged, AIMessageChunk)
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("get_temperature", {"city": "Paris"})]
