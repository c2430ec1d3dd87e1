"""instructor over the openai client on a real server: TOOLS (a forced function call) and JSON_SCHEMA
(response_format) both return the pydantic model, first try."""

from __future__ import annotations

from typing import Any

import instructor
import openai
import pytest

from tests.helpers import MODEL, City
from tests.live_server import Server


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        # One call: with parallel calls allowed (OpenAI's default) the 0.5B model repeats the forced call
        # until max_tokens, and instructor refuses an answer cut by the length limit.
        (instructor.Mode.TOOLS, {"parallel_tool_calls": False}),
        (instructor.Mode.JSON_SCHEMA, {}),
    ],
)
def test_response_model(server: Server, mode: instructor.Mode, extra: dict[str, Any]) -> None:
    client = instructor.from_openai(
        openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0), mode=mode
    )
    city = client.chat.completions.create(
        model=MODEL, response_model=City, messages=[{"role": "user", "content": "Describe Paris."}],
        temperature=0, max_tokens=80, max_retries=0, **extra,
    )  # fmt: skip
    assert isinstance(city, City) and (city.name, city.country, city.continent) == ("Paris", "France", "Europe")
