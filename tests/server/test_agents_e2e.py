"""openai-agents on a real server: agents on its default model (OpenAIResponsesModel, /v1/responses) and
on OpenAIChatCompletionsModel, with a structured output type and with a function tool whose result the
final answer uses. Greedy sampling and a plain prompt keep the 0.5B model's choices reproducible."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, TypeVar

import pytest
from agents import (
    Agent,
    Model,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
)
from openai import AsyncOpenAI
from pydantic import BaseModel, Field

from tests.helpers import MODEL
from tests.live_server import Server

NO_TRACING = RunConfig(tracing_disabled=True)  # traces would go to OpenAI's servers


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]


@pytest.fixture
def client(server: Server) -> Iterator[AsyncOpenAI]:
    yield AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


T = TypeVar("T")


def run_and_close(client: AsyncOpenAI, run: Coroutine[Any, Any, T]) -> T:
    """`run` on a loop of its own, then the client closed on that loop: left open, its connections would
    be closed by the garbage collector in some later test's loop, long after this one is gone."""

    async def main() -> T:
        try:
            return await run
        finally:
            await client.close()

    return asyncio.run(main())


def responses_model(client: AsyncOpenAI) -> Model:
    return OpenAIResponsesModel(model=MODEL, openai_client=client)


class Report(BaseModel):
    city: str
    temperature_celsius: int


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_agent_calls_its_tool_and_answers_with_the_result(client: AsyncOpenAI, api: str) -> None:
    """The first turn must call the tool (tool_choice required; the agent resets it to auto after), the
    second answers in the output type, which the 0.5B model fills from the tool's result (17 is nowhere
    else to be found)."""
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"It is 17 degrees Celsius and raining in {city}."

    model = responses_model(client) if api == "responses" else OpenAIChatCompletionsModel(MODEL, client)
    agent = Agent(
        name="weather", instructions="Report the weather with the get_weather tool.", model=model,
        tools=[get_weather], output_type=Report,
        model_settings=ModelSettings(temperature=0, tool_choice="required", parallel_tool_calls=False, max_tokens=60),
    )  # fmt: skip
    result = run_and_close(
        client, Runner.run(agent, "What is the weather in Paris?", run_config=NO_TRACING, max_turns=3)
    )
    assert asked == ["Paris"]
    assert result.final_output == Report(city="Paris", temperature_celsius=17)


def test_structured_output_on_the_responses_model(client: AsyncOpenAI) -> None:
    agent = Agent(
        name="geographer", instructions="Describe the city the user names.", model=responses_model(client),
        output_type=City, model_settings=ModelSettings(temperature=0, max_tokens=100),
    )  # fmt: skip
    result = run_and_close(client, Runner.run(agent, "Paris", run_config=NO_TRACING))
    city = result.final_output
    assert isinstance(city, City) and city.name == "Paris" and city.continent == "Europe"


def test_streamed_run_on_the_responses_model(client: AsyncOpenAI) -> None:
    agent = Agent(
        name="assistant", instructions="Answer in one short sentence.", model=responses_model(client),
        model_settings=ModelSettings(temperature=0, max_tokens=40),
    )  # fmt: skip

    async def run() -> tuple[str, str]:
        result = Runner.run_streamed(agent, "What is the capital of France?", run_config=NO_TRACING)
        deltas = [
            e.data.delta
            async for e in result.stream_events()
            if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"
        ]
        return "".join(deltas), str(result.final_output)

    streamed, final = run_and_close(client, run())
    assert "Paris" in final and streamed == final
