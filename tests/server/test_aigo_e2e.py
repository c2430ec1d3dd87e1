"""The AIgo REST API (/api/v1/...) on a real server process: the real model's text and embeddings, and
priorities across surfaces on the real scheduler (shapes, validation and auth: test_aigo_routes.py)."""

from __future__ import annotations

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


# -- models and health --------------------------------------------------------------------------------


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


# -- chat ---------------------------------------------------------------------------------------------


def test_chat(server: Server) -> None:
    system = {"role": "system", "content": "You are a helpful assistant."}
    body = {"model": MODEL_ID, "messages": [system, *FRANCE], "temperature": 0, "max_tokens": 32, "stream": False}
    c = post(server, "/api/v1/chat", body).json()
    assert set(c) == {"message", "model", "usage", "finish_reason"}
    assert c["message"] == {"role": "assistant", "content": "The capital of France is Paris."}
    assert c["finish_reason"] == "stop" and c["model"] == MODEL_ID
    assert c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]


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


# -- auth ---------------------------------------------------------------------------------------------


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
