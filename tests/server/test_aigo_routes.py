"""The AIgo REST API (/api/v1/...) in process, over a fake engine: the contract's shapes, the model
catalogue, SSE framing without [DONE], validation and the error envelope."""

from __future__ import annotations

import datetime
import json

import httpx
import pytest

from tests.fake_engine import REPLY, FakeEngine, in_process
from tests.helpers import EMBED, FRANCE, GEMMA, MODEL, assert_error
from wicore.engine.request import EngineRequest, FinishReason, Priority

pytestmark = pytest.mark.anyio
MODEL_ID = f"wicore:{MODEL}"
EMBED_ID = f"wicore:{EMBED}"


async def sse(client: httpx.AsyncClient, path: str, body: dict) -> list[dict]:
    async with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line[6:]) for line in lines]  # every line is JSON: no [DONE]


# -- models and health --------------------------------------------------------------------------------


async def test_models_list(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        models = (await client.get("/api/v1/models")).json()["models"]
    assert [m["id"] for m in models] == [MODEL_ID, f"wicore:{GEMMA}", EMBED_ID]
    assert [m["loaded"] for m in models] == [True, False, False]  # the default model loads at start-up
    for m in models:
        assert set(m) == {"id", "name", "provider", "capabilities", "parameters", "loaded"}
        assert m["provider"] == "wicore"
    chat, _, embed = models
    assert chat["capabilities"] == ["text_generation", "chat"] and embed["capabilities"] == ["embedding"]
    assert chat["parameters"]["max_tokens"] == 512 and chat["parameters"]["max_context_length"] == 4096
    assert embed["parameters"]["dimensions"] == 384


@pytest.mark.parametrize("model", [MODEL_ID, MODEL])
async def test_chat_model_detail(engine: FakeEngine, model: str) -> None:
    async with in_process(engine) as client:
        r = await client.get(f"/api/v1/models/{model}")
    assert r.status_code == 200
    d = r.json()
    assert d["id"] == MODEL_ID and d["description"] and d["name"].startswith("Qwen2.5 Coder 0.5B")
    assert d["metadata"] == {
        "context_window": 32768,
        "vocabulary_size": 151936,
        "architecture": "qwen2",
        "parameter_count": "0.5B",
        "format": "gguf",
    }
    assert {"max_tokens", "temperature", "top_p", "top_k", "max_context_length", "stop_sequences"} <= set(
        d["parameters"]
    )


async def test_embedding_model_detail(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        d = (await client.get(f"/api/v1/models/{EMBED_ID}")).json()
    assert d["id"] == EMBED_ID and d["capabilities"] == ["embedding"]
    assert d["metadata"]["vocabulary_size"] == 30522 and d["metadata"]["architecture"] == "bert"
    assert d["metadata"]["context_window"] == 256 and d["metadata"]["parameter_count"] == "22.7M"


@pytest.mark.parametrize("model", ["ollama:deepseek-r1:8b", "wicore:nope", "gpt-4"])
async def test_unknown_model_detail_is_404(engine: FakeEngine, model: str) -> None:
    async with in_process(engine) as client:
        assert_error(await client.get(f"/api/v1/models/{model}"), 404, "model")


async def test_health(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.get("/api/v1/health")
        assert r.status_code == 200
        h = r.json()
        assert set(h) == {"status", "version", "timestamp", "models_available", "uptime_seconds"}
        assert h["status"] == "ok" and h["models_available"] == 3 and h["uptime_seconds"] > 0
        stamp = datetime.datetime.fromisoformat(h["timestamp"])
        assert h["timestamp"].endswith("Z") and abs(datetime.datetime.now(datetime.UTC) - stamp).total_seconds() < 60
        engine.ready = False
        r = await client.get("/api/v1/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"


# -- generate -----------------------------------------------------------------------------------------


async def test_generate_shape_and_priority(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        body = {"model": MODEL_ID, "prompt": "def gcd(a, b):", "max_tokens": 4, "priority": "high"}
        g = (await client.post("/api/v1/generate", json=body)).json()
    assert set(g) == {"text", "model", "usage", "finish_reason"} and g["model"] == MODEL_ID
    assert g["finish_reason"] == "length" and g["usage"]["completion_tokens"] == 4
    assert g["usage"]["total_tokens"] == g["usage"]["prompt_tokens"] + 4
    assert "prompt_tokens_details" not in g["usage"]  # OpenAI's; not in the AIgo contract
    (request,) = engine.requests
    assert isinstance(request, EngineRequest) and request.priority == Priority.HIGH


async def test_generate_stream(engine: FakeEngine) -> None:
    body = {"model": MODEL_ID, "prompt": "def gcd(a, b):", "max_tokens": 5, "temperature": 0}
    async with in_process(engine) as client:
        events = await sse(client, "/api/v1/generate", {**body, "stream": True})
        whole = (await client.post("/api/v1/generate", json=body)).json()
    assert all(set(e) == {"text", "finish_reason"} for e in events) and len(events) > 3
    assert [e["finish_reason"] for e in events] == [None] * (len(events) - 1) + ["length"]
    assert "".join(e["text"] for e in events) == whole["text"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": 5}, 400, "prompt"),
        ({"prompt": ["a"]}, 400, "prompt"),
        ({}, 400, "prompt"),
        ({"prompt": "x", "temperature": 3}, 400, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": "10"}, 400, "max_tokens"),
        ({"prompt": "x", "n": 2}, 400, "n"),
        ({"prompt": "x", "priority": "asap"}, 400, "priority"),
        ({"prompt": "x", "stream": "yes"}, 400, "stream"),
        ({"prompt": "x", "bogus": 1}, 400, "bogus"),
        ({"prompt": "x", "model": EMBED_ID}, 400, "model"),
        ({"prompt": "x", "model": "ollama:deepseek-r1:8b"}, 404, "model"),
    ],
)
async def test_generate_bad_input(engine: FakeEngine, body: dict, status: int, param: str) -> None:
    async with in_process(engine) as client:
        assert_error(await client.post("/api/v1/generate", json=body), status, param)


async def test_not_json_is_400(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.post("/api/v1/generate", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "400"


# -- chat ---------------------------------------------------------------------------------------------


async def test_chat_shape(engine: FakeEngine) -> None:
    system = {"role": "system", "content": "You are a helpful assistant."}
    body = {"model": MODEL_ID, "messages": [system, *FRANCE], "max_tokens": 32, "stream": False}
    async with in_process(engine) as client:
        c = (await client.post("/api/v1/chat", json=body)).json()
    assert set(c) == {"message", "model", "usage", "finish_reason"}
    assert c["message"] == {"role": "assistant", "content": REPLY}
    assert c["finish_reason"] == "stop" and c["model"] == MODEL_ID
    assert c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]


@pytest.mark.parametrize(("path", "extra"), [("/api/v1/chat/stream", {}), ("/api/v1/chat", {"stream": True})])
async def test_chat_stream(engine: FakeEngine, path: str, extra: dict) -> None:
    async with in_process(engine) as client:
        events = await sse(client, path, {"model": MODEL, "messages": FRANCE, "max_tokens": 32, **extra})
    assert all(set(e) == {"delta", "finish_reason"} for e in events)
    assert events[0]["delta"]["role"] == "assistant"
    assert all("role" not in e["delta"] for e in events[1:])
    assert "".join(e["delta"]["content"] for e in events) == REPLY
    assert [e["finish_reason"] for e in events][-2:] == [None, "stop"]


async def test_error_mid_stream_is_one_line_without_done(engine: FakeEngine) -> None:
    engine.finish = FinishReason.TIMEOUT
    async with in_process(engine) as client:
        events = await sse(client, "/api/v1/chat/stream", {"messages": FRANCE})
    assert events[-1]["error"]["code"] == "408" and "error" not in events[0]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": FRANCE, "top_p": 2}, "top_p"),
    ],
)
async def test_chat_bad_input(engine: FakeEngine, body: dict, param: str) -> None:
    async with in_process(engine) as client:
        assert_error(await client.post("/api/v1/chat", json=body), 400, param)
        assert_error(await client.post("/api/v1/chat/stream", json=body), 400, param)


async def test_chat_unknown_model(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.post("/api/v1/chat/stream", json={"model": "llama2", "messages": FRANCE})
    assert_error(r, 404, "model")


# -- embed --------------------------------------------------------------------------------------------


async def test_embed_shapes_and_priority(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        one = (await client.post("/api/v1/embed", json={"model": EMBED_ID, "input": "文本", "priority": "low"})).json()
        assert set(one) == {"embedding", "dimensions", "model", "usage"}
        assert one["dimensions"] == 384 and len(one["embedding"]) == 384 and one["model"] == EMBED_ID
        assert engine.requests[-1].priority == Priority.LOW
        many = (await client.post("/api/v1/embed", json={"input": ["a", "b"], "dimensions": 64})).json()
        assert set(many) == {"embeddings", "dimensions", "model", "usage"} and many["dimensions"] == 64


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "x", "dimensions": 1024}, 400, "dimensions"),
        ({"input": ""}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": ["a", ""]}, 400, "input"),
        ({"input": 42}, 400, "input"),
        ({"input": ["a", 1]}, 400, "input"),
        ({}, 400, "input"),
        ({"input": "x", "model": MODEL_ID}, 400, "model"),
        ({"input": "x", "model": "ollama:bge-m3"}, 404, "model"),
    ],
)
async def test_embed_bad_input(engine: FakeEngine, body: dict, status: int, param: str | None) -> None:
    async with in_process(engine) as client:
        assert_error(await client.post("/api/v1/embed", json=body), status, param)
