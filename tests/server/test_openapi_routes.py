"""The published OpenAPI document, in process over a fake engine: request bodies from the models the
routes validate with, each route's error responses in its surface's shape, and range bounds."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from tests.fake_engine import FakeEngine, in_process
from wicore.server.aigo.protocol import AigoChatRequest, AigoEmbedRequest, AigoGenerateRequest
from wicore.server.ollama.protocol import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaModelRequest,
)
from wicore.server.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from wicore.server.responses.protocol import ResponsesRequest

pytestmark = pytest.mark.anyio
BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/responses": ResponsesRequest,
    "/api/v1/generate": AigoGenerateRequest,
    "/api/v1/chat": AigoChatRequest,
    "/api/v1/chat/stream": AigoChatRequest,
    "/api/v1/embed": AigoEmbedRequest,
    "/api/generate": OllamaGenerateRequest,
    "/api/chat": OllamaChatRequest,
    "/api/embeddings": OllamaEmbeddingsRequest,
    "/api/embed": OllamaEmbedRequest,
    "/api/show": OllamaModelRequest,
    "/api/pull": OllamaModelRequest,
}


def resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    return document["components"]["schemas"][ref.removeprefix("#/components/schemas/")]


async def test_every_post_route_publishes_its_body_and_errors(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        document = (await client.get("/openapi.json")).json()
    posts = {path: ops["post"] for path, ops in document["paths"].items() if "post" in ops}
    assert set(posts) == set(BODIES)
    for path, operation in posts.items():
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert operation["requestBody"]["required"] is True
        published = resolve(document, schema["$ref"])
        expected = BODIES[path].model_json_schema(ref_template="#/components/schemas/{model}")
        # FastAPI's document model drops null defaults and writes numbers as floats; the shape is the model's.
        for key in ("title", "required", "additionalProperties"):
            assert published.get(key) == expected.get(key), (path, key)
        assert published["properties"].keys() == expected["properties"].keys(), path
        responses = operation["responses"]
        assert {"400", "413", "429", "500"} <= set(responses), (path, sorted(responses))
        shape = "OllamaErrorResponse" if not path.startswith(("/v1/", "/api/v1/")) else "ErrorResponse"
        for status, response in responses.items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{shape}"}, (
                    path,
                    status,
                )
    chat = posts["/v1/chat/completions"]["responses"]["200"]["content"]
    assert chat["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionResponse"}
    assert "text/event-stream" in chat and "application/x-ndjson" in posts["/api/chat"]["responses"]["200"]["content"]
    # No FastAPI 422: validation errors are answered 400 in the envelope.
    assert all("422" not in op["responses"] for ops in document["paths"].values() for op in ops.values())
    assert "HTTPValidationError" not in document["components"]["schemas"]


async def test_range_checks_are_published_and_the_envelope_still_names_the_field(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        document = (await client.get("/openapi.json")).json()
        body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 3}
        r = await client.post("/v1/chat/completions", json=body)
    temperature = resolve(document, "#/components/schemas/ChatCompletionRequest")["properties"]["temperature"]
    assert temperature["minimum"] == 0 and temperature["maximum"] == 2
    # The published schema rejects what the route rejects, and the route's 400 names the field.
    schema = {**resolve(document, "#/components/schemas/ChatCompletionRequest"), "components": document["components"]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema)
    jsonschema.validate({**body, "temperature": 1.5}, schema)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    assert r.json()["error"]["message"].startswith("temperature: must be between 0 and 2")
