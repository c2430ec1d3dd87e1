"""What every surface shares, in process over a fake engine: auth, rate limits, request ids, the error
envelope, and the server's own /, /health, /status and /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import openai
import pytest

from tests.fake_engine import FakeEngine, fake_app, in_process
from tests.helpers import EMBED, FRANCE, MODEL, STORY, assert_ollama_error, story
from wicore.engine.messages import SchedulerStats
from wicore.server.errors import is_ollama_path

pytestmark = pytest.mark.anyio
MODEL_ID = f"wicore:{MODEL}"


def openai_client(http_client: object, key: str) -> openai.AsyncOpenAI:
    """The official client, talking to the in-process app."""
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, http_client=http_client, max_retries=0)  # type: ignore[arg-type]


async def test_auth_and_rate_limit(engine: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"api": {"auth_enabled": True, "api_key": ["key-one", "key-two"], "rate_limit_per_minute": 3}}
    async with in_process(engine, config) as client:
        assert (await client.get("/health")).status_code == 200  # public
        r = await client.post("/v1/chat/completions", json=story(1))
        assert r.status_code == 401 and r.json()["error"]["code"] == "401"
        bad = openai_client(client, "wrong")
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
        good = openai_client(client, "key-one")
        for _ in range(2):  # the failed call above counted against its own key, not this one
            await good.chat.completions.create(model=MODEL, messages=STORY, max_tokens=1)  # type: ignore[arg-type]
        await good.models.list()
        with pytest.raises(openai.RateLimitError) as exc:
            await good.chat.completions.create(model=MODEL, messages=STORY, max_tokens=1)  # type: ignore[arg-type]
        assert int(exc.value.response.headers["retry-after"]) >= 1
        other = openai_client(client, "key-two")
        assert (await other.models.list()).data  # limits are per key
    logged = capsys.readouterr()
    assert "key-one" not in logged.out + logged.err  # keys never logged


async def test_auth_on_every_surface(engine: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"api": {"auth_enabled": True, "api_key": "secret-key", "rate_limit_per_minute": 0}}
    ok = {"Authorization": "Bearer secret-key"}
    wrong = {"Authorization": "Bearer nope"}
    async with in_process(engine, config) as client:
        assert (await client.get("/api/v1/health")).status_code == 200  # health checks stay public
        assert (await client.get("/api/version")).status_code == 200
        calls = [
            ("GET", "/api/v1/models", None),
            ("GET", f"/api/v1/models/{MODEL_ID}", None),
            ("POST", "/api/v1/generate", {"prompt": "hi", "max_tokens": 2}),
            ("POST", "/api/v1/chat", {"messages": FRANCE, "max_tokens": 2}),
            ("POST", "/api/v1/chat/stream", {"messages": FRANCE, "max_tokens": 2}),
            ("POST", "/api/v1/embed", {"input": "hi"}),
            ("POST", "/v1/embeddings", {"model": EMBED, "input": "hi"}),
            ("GET", "/api/tags", None),
            ("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "options": {"num_predict": 2}}),
            ("POST", "/api/chat", {"model": MODEL, "messages": FRANCE, "options": {"num_predict": 2}}),
            ("POST", "/api/embed", {"model": EMBED, "input": "hi"}),
            ("POST", "/api/embeddings", {"model": EMBED, "prompt": "hi"}),
            ("POST", "/api/show", {"model": MODEL}),
            ("GET", "/api/ps", None),
        ]
        for method, path, body in calls:
            for headers in ({}, wrong):
                r = await client.request(method, path, json=body, headers=headers)
                if is_ollama_path(path):  # Ollama's clients read its own shape
                    assert_ollama_error(r, 401, "API key")
                else:
                    assert r.status_code == 401 and r.json()["error"]["code"] == "401", path
            r = await client.request(method, path, json=body, headers=ok)
            assert r.status_code == 200, (path, r.text)
    logged = capsys.readouterr()
    assert "secret-key" not in logged.out + logged.err


async def test_auth_without_a_key_is_refused(engine: FakeEngine) -> None:
    with pytest.raises(ValueError, match="api_key"):
        in_process(engine, {"api": {"auth_enabled": True}})


async def test_request_id_header(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.get("/health")
        assert r.headers.get("x-request-id")
        mine = await client.get("/health", headers={"X-Request-ID": "trace-42"})
        assert mine.headers["x-request-id"] == "trace-42"


async def test_unknown_endpoint_in_the_envelope(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.get("/v2/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]


async def test_health_status_root_metrics(engine: FakeEngine) -> None:
    engine.stats = SchedulerStats(waiting_by_priority={"urgent": 2}, active=1, completed=3, kv_blocks_total=8)
    async with in_process(engine) as client:
        await client.post("/v1/chat/completions", json={"messages": FRANCE, "max_tokens": 2})
        await client.post("/v1/chat/completions", json={"messages": FRANCE, "temperature": 9})
        health = (await client.get("/health")).json()
        assert health["status"] == "healthy" and health["engine"] == "wicore-mojo" and health["scheduler"] == "running"
        assert health["total_requests"] == "2" and health["error_count"] == "1" and health["error_rate"] == "50.0%"
        status = (await client.get("/status")).json()
        assert status["server_running"] == "是" and status["total_requests"] == "2"
        assert "调度器状态" in status["scheduler_status"] and "紧急优先级: 2 个请求" in status["queue_summary"]
        assert status["scheduler"]["queue_length"] == 2 and status["scheduler"]["active"] == 1
        assert (await client.get("/")).json()["message"]
        metrics = (await client.get("/metrics")).text
        assert "wicore:num_requests_running" in metrics and "wicore:generation_tokens_total" in metrics
        assert 'finished_reason="length"' in metrics  # the engine sequence above, measured here
        engine.ready = False
        loading = await client.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat", "/api/chat"])
async def test_a_client_gone_before_the_answer_is_499_and_cancels(engine: FakeEngine, path: str) -> None:
    """The one 499 path: a hang-up while a non-streamed answer is computed cancels its engine request."""
    engine.stall = 0.2
    app = fake_app(engine)
    body = json.dumps({"model": MODEL, "messages": FRANCE, "stream": False}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        if len(messages) == 1:
            await asyncio.sleep(0.05)  # the client hangs up while the engine works
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("t", 80),
             "scheme": "http", "http_version": "1.1", "root_path": "", "asgi": {"version": "3.0"}}  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert [r.request_id for r in engine.requests] == engine.cancelled


async def test_cors_preflight_and_simple_request_for_configured_origins(engine: FakeEngine) -> None:
    config = {"api": {"cors_origins": ["http://app.example"], "auth_enabled": True, "api_key": "k"}}
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    async with in_process(engine, config) as client:
        r = await client.options("/v1/chat/completions", headers=preflight)  # no key: browsers send none here
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = await client.get("/v1/models", headers={"Origin": "http://app.example", "Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        r = await client.get("/v1/models", headers={"Origin": "http://app.example"})  # the 401 is readable too
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://app.example"
        r = await client.get("/v1/models", headers={"Origin": "http://evil.example", "Authorization": "Bearer k"})
        assert "access-control-allow-origin" not in r.headers


async def test_no_cors_headers_by_default(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.get("/v1/models", headers={"Origin": "http://app.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        assert (await client.options("/v1/chat/completions", headers=preflight)).status_code == 405


async def test_a_body_over_the_limit_is_a_413_before_it_is_read(engine: FakeEngine) -> None:
    padding = "x" * 4000
    big = {"model": MODEL, "messages": [{"role": "user", "content": padding}]}

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        body = json.dumps(big).encode()
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    async with in_process(engine, {"api": {"max_request_bytes": 2048}}) as client:
        declared = await client.post("/v1/chat/completions", json=big)
        streamed = await client.post("/v1/chat/completions", content=chunked())
        ollama = await client.post("/api/chat", json={**big, "stream": False})
        small = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": FRANCE})
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert "api.max_request_bytes" in r.json()["error"]["message"] and r.headers["x-request-id"]
    assert_ollama_error(ollama, 413, "too large")
    assert small.status_code == 200
    assert len(engine.requests) == 1  # only the small one reached the engine
