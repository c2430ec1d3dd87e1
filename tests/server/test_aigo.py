"""The AIgo REST API (/api/v1/...) on a real server process: the seed's shapes, streaming, errors, auth."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import EMBED, FRANCE, MODEL
from tests.live_server import FirstText, Server, serve, wait_for_status

MODEL_ID = f"wicore:{MODEL}"
EMBED_ID = f"wicore:{EMBED}"
GCD = "def gcd(a, b):"


def post(server: Server, path: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kw)  # type: ignore[arg-type]


def sse(server: Server, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line[6:]) for line in lines]  # every line is JSON: no [DONE]


def assert_error(r: httpx.Response, status: int, param: str | None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == str(status) and error["param"] == param
    if param:
        assert param in error["message"]


# -- models and health --------------------------------------------------------------------------------


def test_models_list(server: Server) -> None:
    models = httpx.get(server.url + "/api/v1/models").json()["models"]
    assert [m["id"] for m in models] == [MODEL_ID, EMBED_ID]
    for m in models:
        assert set(m) == {"id", "name", "provider", "capabilities", "parameters"} and m["provider"] == "wicore"
    chat, embed = models
    assert chat["capabilities"] == ["text_generation", "chat"] and embed["capabilities"] == ["embedding"]
    assert chat["parameters"]["max_tokens"] == 512 and chat["parameters"]["max_context_length"] == 4096
    assert embed["parameters"]["dimensions"] == 384


@pytest.mark.parametrize("model", [MODEL_ID, MODEL])
def test_chat_model_detail(server: Server, model: str) -> None:
    r = httpx.get(f"{server.url}/api/v1/models/{model}")
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


def test_embedding_model_detail(server: Server) -> None:
    d = httpx.get(f"{server.url}/api/v1/models/{EMBED_ID}").json()
    assert d["id"] == EMBED_ID and d["capabilities"] == ["embedding"]
    assert d["metadata"]["vocabulary_size"] == 30522 and d["metadata"]["architecture"] == "bert"
    assert d["metadata"]["context_window"] == 256 and d["metadata"]["parameter_count"] == "22.7M"


@pytest.mark.parametrize("model", ["ollama:deepseek-r1:8b", "wicore:nope", "gpt-4"])
def test_unknown_model_detail_is_404(server: Server, model: str) -> None:
    assert_error(httpx.get(f"{server.url}/api/v1/models/{model}"), 404, "model")


def test_health(server: Server) -> None:
    r = httpx.get(server.url + "/api/v1/health")
    assert r.status_code == 200
    h = r.json()
    assert set(h) == {"status", "version", "timestamp", "models_available", "uptime_seconds"}
    assert h["status"] == "ok" and h["models_available"] == 2 and h["uptime_seconds"] > 0
    stamp = datetime.datetime.fromisoformat(h["timestamp"])
    assert h["timestamp"].endswith("Z") and abs(datetime.datetime.now(datetime.UTC) - stamp).total_seconds() < 60


# -- generate -----------------------------------------------------------------------------------------


def test_generate_matches_the_openai_completion(server: Server) -> None:
    body = {"model": MODEL_ID, "prompt": GCD, "max_tokens": 24, "temperature": 0, "priority": "high"}
    r = post(server, "/api/v1/generate", body)
    assert r.status_code == 200
    g = r.json()
    assert set(g) == {"text", "model", "usage", "finish_reason"} and g["model"] == MODEL_ID
    assert g["finish_reason"] == "length" and g["usage"]["completion_tokens"] == 24
    assert g["usage"]["total_tokens"] == g["usage"]["prompt_tokens"] + 24
    openai_body = {"model": MODEL, "prompt": GCD, "max_tokens": 24, "temperature": 0}
    completion = post(server, "/v1/completions", openai_body).json()
    assert g["text"] == completion["choices"][0]["text"] and "while b" in g["text"]
    details = completion["usage"].pop("prompt_tokens_details")  # OpenAI's; not in the AIgo contract
    assert g["usage"] == completion["usage"] and details["cached_tokens"] >= 0


def test_generate_stops_on_a_stop_string(server: Server) -> None:
    body = {"model": MODEL, "prompt": GCD, "max_tokens": 40, "temperature": 0, "stop": ["%"]}
    g = post(server, "/api/v1/generate", body).json()
    assert g["finish_reason"] == "stop" and "%" not in g["text"] and g["usage"]["completion_tokens"] < 40


def test_generate_stream(server: Server) -> None:
    body = {"model": MODEL_ID, "prompt": GCD, "max_tokens": 16, "temperature": 0}
    events = sse(server, "/api/v1/generate", {**body, "stream": True})
    assert all(set(e) == {"text", "finish_reason"} for e in events) and len(events) > 3
    assert [e["finish_reason"] for e in events] == [None] * (len(events) - 1) + ["length"]
    assert "".join(e["text"] for e in events) == post(server, "/api/v1/generate", body).json()["text"]


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
def test_generate_bad_input(server: Server, body: dict, status: int, param: str) -> None:
    assert_error(post(server, "/api/v1/generate", body), status, param)


def test_not_json_is_400(server: Server) -> None:
    r = httpx.post(server.url + "/api/v1/generate", content=b"{nope", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "400"


# -- chat ---------------------------------------------------------------------------------------------


def test_chat(server: Server) -> None:
    system = {"role": "system", "content": "You are a helpful assistant."}
    body = {"model": MODEL_ID, "messages": [system, *FRANCE], "temperature": 0, "max_tokens": 32, "stream": False}
    c = post(server, "/api/v1/chat", body).json()
    assert set(c) == {"message", "model", "usage", "finish_reason"}
    assert c["message"] == {"role": "assistant", "content": "The capital of France is Paris."}
    assert c["finish_reason"] == "stop" and c["model"] == MODEL_ID
    assert c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]


@pytest.mark.parametrize(("path", "extra"), [("/api/v1/chat/stream", {}), ("/api/v1/chat", {"stream": True})])
def test_chat_stream(server: Server, path: str, extra: dict) -> None:
    events = sse(server, path, {"model": MODEL, "messages": FRANCE, "temperature": 0, "max_tokens": 32, **extra})
    assert all(set(e) == {"delta", "finish_reason"} for e in events)
    assert events[0]["delta"]["role"] == "assistant"
    assert all("role" not in e["delta"] for e in events[1:])
    assert "".join(e["delta"]["content"] for e in events) == "The capital of France is Paris."
    assert [e["finish_reason"] for e in events][-2:] == [None, "stop"]


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
def test_chat_bad_input(server: Server, body: dict, param: str) -> None:
    assert_error(post(server, "/api/v1/chat", body), 400, param)
    assert_error(post(server, "/api/v1/chat/stream", body), 400, param)


def test_chat_unknown_model(server: Server) -> None:
    assert_error(post(server, "/api/v1/chat/stream", {"model": "llama2", "messages": FRANCE}), 404, "model")


# -- embed --------------------------------------------------------------------------------------------


def test_embed_string_and_list(server: Server) -> None:
    one = post(server, "/api/v1/embed", {"model": EMBED_ID, "input": "这是一个示例文本", "dimensions": 384}).json()
    assert set(one) == {"embedding", "dimensions", "model", "usage"}
    assert one["dimensions"] == 384 and len(one["embedding"]) == 384 and one["model"] == EMBED_ID
    assert one["usage"]["prompt_tokens"] == one["usage"]["total_tokens"] > 2
    assert np.linalg.norm(one["embedding"]) == pytest.approx(1, abs=1e-5)
    many = post(server, "/api/v1/embed", {"model": EMBED, "input": ["这是一个示例文本", "hello"], "dimensions": 64})
    m = many.json()
    assert set(m) == {"embeddings", "dimensions", "model", "usage"} and m["dimensions"] == 64
    first = np.array(one["embedding"][:64]) / np.linalg.norm(one["embedding"][:64])
    np.testing.assert_allclose(m["embeddings"][0], first, atol=1e-5)
    default = post(server, "/api/v1/embed", {"input": "这是一个示例文本"}).json()  # the model is optional
    np.testing.assert_allclose(default["embedding"], one["embedding"], atol=1e-6)


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
        ({"input": "x", "model": MODEL_ID}, 400, None),
        ({"input": "x", "model": "ollama:bge-m3"}, 404, "model"),
    ],
)
def test_embed_bad_input(server: Server, body: dict, status: int, param: str | None) -> None:
    assert_error(post(server, "/api/v1/embed", body), status, param)


# -- auth ---------------------------------------------------------------------------------------------


def test_auth_on_every_surface(tmp_path: Path) -> None:
    config = {"api": {"auth_enabled": True, "api_key": "secret-key", "rate_limit_per_minute": 0}}
    with serve(tmp_path, config) as server:
        ok = {"Authorization": "Bearer secret-key"}
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(server.url + "/api/v1/health").status_code == 200  # health checks stay public
        assert httpx.get(server.url + "/api/version").status_code == 200
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
        ]
        for method, path, body in calls:
            for headers in ({}, wrong):
                r = httpx.request(method, server.url + path, json=body, headers=headers, timeout=60)
                assert r.status_code == 401 and r.json()["error"]["code"] == "401", path
            r = httpx.request(method, server.url + path, json=body, headers=ok, timeout=60)
            assert r.status_code == 200, (path, r.text)
        assert "secret-key" not in server.log.read_text()


# -- the shared scheduler: loading, priorities ----------------------------------------------------------


def test_loading_and_priorities_across_surfaces(tmp_path: Path) -> None:
    config = {
        "scheduler": {"max_concurrent": 1, "max_batch_size": 1, "max_queue_size": 4},
        "api": {"rate_limit_per_minute": 0},
    }
    with serve(tmp_path, config, wait=False) as server:
        saw_loading = False
        while True:
            try:
                r = httpx.get(server.url + "/api/v1/health", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.02)
                continue
            if r.status_code == 200:
                break
            assert r.status_code == 503 and r.json()["status"] == "loading"
            saw_loading = True
            # Short: one that is accepted as loading ends must finish well within the 30 s timeout.
            for path, body in (
                ("/api/v1/embed", {"input": "x"}),
                ("/api/v1/generate", {"prompt": "x", "max_tokens": 4}),
            ):
                g = post(server, path, body)
                assert g.status_code in (503, 200)
                if g.status_code == 503:
                    assert g.json()["error"]["code"] == "503"
            time.sleep(0.02)
        assert saw_loading

        # One slot: a long AIgo stream holds it; low-priority Ollama requests queue, then an urgent AIgo one.
        body = {"prompt": GCD, "max_tokens": 1000, "ignore_eos": True, "stream": True}
        blocker = FirstText(server.url + "/api/v1/generate", body)
        blocker.start()
        while blocker.first is None:
            time.sleep(0.01)
        ollama_low = {"model": MODEL, "prompt": "Say hi", "priority": "low", "options": {"num_predict": 3}}
        lows = [FirstText(server.url + "/api/generate", ollama_low) for _ in range(2)]
        for low in lows:
            low.start()
            time.sleep(0.05)
        urgent = FirstText(server.url + "/api/v1/generate", {"prompt": "Hi", "max_tokens": 3, "stream": True,
                                                           "priority": "urgent"})  # fmt: skip
        urgent.start()
        queued = wait_for_status(server, lambda s: s["queue_length"] == 3)
        assert queued["waiting_by_priority"] == {"low": 2, "normal": 0, "high": 0, "urgent": 1}
        blocker.hang_up.set()  # frees the slot: the urgent request goes first
        for t in [blocker, urgent, *lows]:
            t.join(120)
        assert urgent.first is not None and all(low.first is not None for low in lows)
        assert urgent.first < min(low.first for low in lows)  # type: ignore[type-var]
        status = wait_for_status(server, lambda s: s["active"] == 0 and s["cancelled"] == 1)
        assert status["active"] == 0 and status["cancelled"] == 1 and status["completed"] >= 3
