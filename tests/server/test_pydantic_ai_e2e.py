"""pydantic-ai on a real server through its OpenAI chat-completions model: each way it asks for a
structured output (NativeOutput: response_format json_schema; PromptedOutput: the schema in the prompt and
json_object; ToolOutput: a forced tool call) returns the pydantic model, and an agent calls its tool and
answers with the tool's result."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput, PromptedOutput, RunContext, Tool, ToolOutput
from pydantic_ai.messages import ToolCallPart, ToolReturnPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import ToolDefinition

from tests.helpers import MODEL, WEATHER, City, get_temperature
from tests.live_server import Server

SETTINGS = ModelSettings(temperature=0, max_tokens=80)


class Capital(BaseModel):
    country: str
    capital: str


@pytest.fixture(scope="module")
def model(server: Server) -> OpenAIChatModel:
    return OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=server.url + "/v1", api_key="unused"))


def assert_paris(city: City) -> None:
    assert isinstance(city, City) and (city.name, city.country, city.continent) == ("Paris", "France", "Europe")


def test_native_output(model: OpenAIChatModel) -> None:
    agent = Agent(model, output_type=NativeOutput(City), model_settings=SETTINGS)
    assert_paris(agent.run_sync("Describe Paris.").output)


def test_prompted_output(model: OpenAIChatModel) -> None:
    """json_object guarantees JSON, not the schema's bounds: asked for with a schema a small model fills right."""
    agent = Agent(model, output_type=PromptedOutput(Capital), model_settings=SETTINGS)
    assert agent.run_sync("What is the capital of France?").output == Capital(country="France", capital="Paris")


def test_tool_output(model: OpenAIChatModel) -> None:
    agent = Agent(model, output_type=ToolOutput(City), model_settings=SETTINGS)
    result = agent.run_sync("Describe Paris.")
    assert_paris(result.output)
    calls = [p for m in result.all_messages() for p in m.parts if isinstance(p, ToolCallPart)]
    assert calls and all(c.tool_name == "final_result" for c in calls)


async def offered_once(ctx: RunContext[None], tool: ToolDefinition) -> ToolDefinition | None:
    """The tool on the first step only: the 0.5B model calls a tool again and again while it is offered."""
    return tool if ctx.run_step == 1 else None


def test_agent_calls_its_tool_and_answers_with_the_result(model: OpenAIChatModel) -> None:
    agent = Agent(model, tools=[Tool(get_temperature, prepare=offered_once)], model_settings=SETTINGS)
    result = agent.run_sync(WEATHER)
    parts = [p for m in result.all_messages() for p in m.parts]
    (call,) = [p for p in parts if isinstance(p, ToolCallPart)]
    assert call.tool_name == "get_temperature" and call.args_as_dict() == {"city": "Paris"}
    (returned,) = [p for p in parts if isinstance(p, ToolReturnPart)]
    assert returned.content == 17
    assert "17" in result.output
