"""The Ollama-compatible routes on a real server process: the real model's text, options and embeddings
(shapes and errors: test_ollama_routes.py)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import ollama
import pytest

from tests.helpers import EMBED, FRANCE, MODEL, OLLAMA_FINAL_KEYS, WEATHER, get_temperature
from tests.live_server import Server

GREEDY = {"temperature": 0, "num_predict": 32}


def post(server: Server, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def ndjson(server: Server, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def assert_final(chunk: dict, reason: str) -> None:
    assert set(chunk) >= OLLAMA_FINAL_KEYS and chunk["done"] is True and chunk["done_reason"] == reason
    assert chunk["prompt_eval_count"] > 5 and chunk["eval_count"] > 0
    # Durations are nanoseconds: a real generation takes well over a millisecond and under a minute.
    assert 1e6 < chunk["total_duration"] < 6e10
    assert chunk["prompt_eval_duration"] + chunk["eval_duration"] <= chunk["total_duration"]


def test_chat_streams_ndjson_by_default(server: Server) -> None:
    chunks = ndjson(server, "/api/chat", {"model": MODEL, "messages": FRANCE, "options": GREEDY})
    assert all(c["model"] == MODEL for c in chunks)
    assert all(c["done"] is False and c["message"]["role"] == "assistant" for c in chunks[:-1])
    assert "".join(c["message"]["content"] for c in chunks) == "The capital of France is Paris."
    assert_final(chunks[-1], "stop")
    assert chunks[-1]["eval_count"] == len(chunks)  # a line per token here, plus the end-of-turn token


def test_chat_without_streaming(server: Server) -> None:
    r = post(server, "/api/chat", {"model": f"{MODEL}:latest", "messages": FRANCE, "stream": False, "options": GREEDY})
    c = r.json()
    assert r.headers["content-type"] == "application/json"
    assert c["message"] == {"role": "assistant", "content": "The capital of France is Paris."}
    assert_final(c, "stop")


def test_generate_stream_and_options(server: Server) -> None:
    body = {
        "model": MODEL,
        "prompt": "Count from one to ten in words.",
        "options": {"temperature": 0, "num_predict": 6},
    }
    chunks = ndjson(server, "/api/generate", body)
    assert all(set(c) == {"model", "created_at", "done", "response"} for c in chunks[:-1])
    assert_final(chunks[-1], "length")
    assert chunks[-1]["eval_count"] == 6 and chunks[-1]["response"] == ""
    text = "".join(c["response"] for c in chunks)
    whole = post(server, "/api/generate", {**body, "stream": False}).json()
    assert whole["response"] == text and whole["eval_count"] == 6 and whole["done"] is True
    # A stop string ends it early; seeded sampling repeats itself.
    stopped = post(server, "/api/generate", {**body, "stream": False, "options": {"temperature": 0, "stop": [","]}})
    assert stopped.json()["done_reason"] == "stop" and "," not in stopped.json()["response"]
    sampled = {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": 7, "num_predict": 8, "repeat_penalty": 1.1}
    runs = [post(server, "/api/generate", {**body, "stream": False, "options": sampled}).json() for _ in range(2)]
    assert runs[0]["response"] == runs[1]["response"] and runs[0]["eval_count"] == 8


def test_generate_system_and_raw(server: Server) -> None:
    # Without raw the prompt goes through the chat template, so it is answered like a chat turn.
    templated = post(server, "/api/generate", {"model": MODEL, "prompt": FRANCE[0]["content"], "stream": False,
                                                "options": GREEDY}).json()  # fmt: skip
    assert templated["response"] == "The capital of France is Paris."
    raw = post(server, "/api/generate", {"model": MODEL, "prompt": "def gcd(a, b):", "raw": True, "stream": False,
                                          "options": {"temperature": 0, "num_predict": 12}}).json()  # fmt: skip
    openai = post(server, "/v1/completions", {"model": MODEL, "prompt": "def gcd(a, b):", "temperature": 0,
                                               "max_tokens": 12}).json()  # fmt: skip
    assert raw["response"] == openai["choices"][0]["text"]
    assert raw["prompt_eval_count"] < templated["prompt_eval_count"]


def test_embed(server: Server) -> None:
    r = post(server, "/api/embed", {"model": EMBED, "input": ["Why is the sky blue?", "Why is grass green?"]}).json()
    assert r["model"] == EMBED and len(r["embeddings"]) == 2 and all(len(e) == 384 for e in r["embeddings"])
    np.testing.assert_allclose(np.linalg.norm(r["embeddings"], axis=1), 1, atol=1e-5)
    one = post(server, "/api/embed", {"model": f"{EMBED}:latest", "input": "Why is the sky blue?"}).json()
    np.testing.assert_allclose(one["embeddings"][0], r["embeddings"][0], atol=1e-6)
    assert one["prompt_eval_count"] > 3 and one["total_duration"] > 0


def test_ollama_client_show_ps_pull_and_embeddings(server: Server) -> None:
    client = ollama.Client(host=server.url)
    shown = client.show(MODEL)
    assert shown.details is not None and shown.details.family == "qwen2"
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None and shown.modelinfo["qwen2.context_length"] == 32768
    assert shown.template and "<|im_start|>" in shown.template
    # The default model is loaded (the embedding model too if an earlier test of the session embedded).
    loaded = next(m for m in client.ps().models if m.model == f"{MODEL}:latest")
    assert loaded.size_vram == 0 and loaded.details.family == "qwen2" and loaded.size > 0
    # The model is present: pull only verifies it.
    statuses = [p.status for p in client.pull(MODEL, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any("already present" in (s or "") for s in statuses)
    assert client.pull(f"{EMBED}:latest").status == "success"
    vector = client.embeddings(model=EMBED, prompt="hello world").embedding
    assert len(vector) == 384 and abs(float(np.linalg.norm(vector)) - 1) < 1e-4
    embedded = client.embed(model=EMBED, input="hello world").embeddings[0]
    assert np.allclose(vector, embedded, atol=1e-5)


def test_ollama_client_errors(server: Server) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as info:
        client.show("llama3")
    assert info.value.status_code == 404 and info.value.error.startswith("model 'llama3' not found; available models: ")
    assert MODEL in info.value.error and EMBED in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("llama3")
    assert info.value.status_code == 404 and "bundled models are" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=MODEL, messages=FRANCE, options={"top_p": 1.5})
    assert info.value.status_code == 400 and info.value.error.startswith("options.top_p: must be between 0 and 1")
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model=EMBED, input="word " * 300, truncate=False)
    assert info.value.status_code == 400 and "more than" in info.value.error


def test_ollama_client_tools(server: Server) -> None:
    """The client turns a Python function into a tool; the call comes back parsed, and its result goes
    back in a `tool` message (without the tools then: the 0.5B model calls a tool again while offered)."""
    client = ollama.Client(host=server.url)
    asked = {"role": "user", "content": WEATHER}
    r = client.chat(model=MODEL, messages=[asked], tools=[get_temperature], options=GREEDY)
    assert r.done_reason == "stop" and r.message.tool_calls is not None
    (call,) = r.message.tool_calls
    assert call.function.name == "get_temperature" and call.function.arguments == {"city": "Paris"}
    result = {"role": "tool", "content": "17", "tool_name": "get_temperature"}
    answer = client.chat(model=MODEL, messages=[asked, r.message, result], options=GREEDY)
    assert "17" in (answer.message.content or "")
