"""LiteLLM's `completion` on a real server as an OpenAI-compatible provider (`openai/<model>` with
`api_base`): plain, streamed, `response_format` from a pydantic model, and `tools`."""

from __future__ import annotations

import json
import os
from typing import Any

# LiteLLM fetches its model price list from GitHub on import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import FRANCE, MODEL, TEMPERATURE_TOOL, WEATHER, City  # noqa: E402
from tests.live_server import Server  # noqa: E402

PARIS = "The capital of France is Paris."
# LiteLLM's own types, built on first use, warn about a pydantic qualifier they use: nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")


@pytest.fixture(scope="module")
def provider(server: Server) -> dict[str, Any]:
    """What every call names: the server as an OpenAI-compatible provider, greedy."""
    return {"model": f"openai/{MODEL}", "api_base": server.url + "/v1", "api_key": "unused", "temperature": 0}


def test_completion_plain_and_streamed(provider: dict[str, Any]) -> None:
    r = litellm.completion(messages=FRANCE, max_tokens=32, **provider)
    assert r.choices[0].message.content == PARIS and r.usage.completion_tokens > 0
    stream = litellm.completion(messages=FRANCE, max_tokens=32, stream=True, **provider)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == PARIS


def test_response_format(provider: dict[str, Any]) -> None:
    r = litellm.completion(
        messages=[{"role": "user", "content": "Describe Paris."}], max_tokens=80, response_format=City, **provider
    )
    city = City.model_validate_json(r.choices[0].message.content)
    assert (city.name, city.country, city.continent) == ("Paris", "France", "Europe")


def test_tools(provider: dict[str, Any]) -> None:
    r = litellm.completion(
        messages=[{"role": "user", "content": WEATHER}], max_tokens=80, tools=[TEMPERATURE_TOOL], **provider
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_temperature" and json.loads(call.function.arguments) == {"city": "Paris"}
