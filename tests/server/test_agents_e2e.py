"""openai-agents on a real server: agents on its default model (OpenAIResponsesModel, /v1/responses) and
on OpenAIChatCompletionsModel, with a structured output type and with a function tool whose result the
final answer uses. Greedy sampling and a plain prompt keep the 0.5B model's choices reproducible."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tests.helpers import MODEL
from tests.live_server import Server

agents = pytest.importorskip("agents")
from agents import (  # noqa: E402
    Agent,
    Model,
    ModelSettings,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
)
from openai import AsyncOpenAI  # noqa: E402

NO_TRACING = RunConfig(tracing_disabled=True)  # traces would go to OpenAI's servers


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]


@pytest.fixture
def client(server: Server) -> Iterator[AsyncOpenAI]:
    yield AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def responses_model(client: AsyncOpenAI) -> Model:
    return OpenAIResponsesModel(model=MODEL, openai_client=client)


def test_structured_output_on_the_responses_model(client: AsyncOpenAI) -> None:
    agent = Agent(
        name="geographer", instructions="Describe the city the user names.", model=responses_model(client),
        output_type=City, model_settings=ModelSettings(temperature=0, max_tokens=100),
    )  # fmt: skip
    result = Runner.run_sync(agent, "Paris", run_config=NO_TRACING)
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

    streamed, final = asyncio.run(run())
    assert "Paris" in final and streamed == final
