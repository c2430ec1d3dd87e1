"""Locust users of `make soak`: short generations and embeddings over every surface, streamed and not.

Each user picks, by weight: OpenAI chat (JSON, SSE), OpenAI completions, AIgo chat and generate (SSE),
Ollama chat (NDJSON) and generate, and embeddings on the OpenAI, AIgo and Ollama routes. Every answer's
shape is checked (a stream read to its end); a 429 counts as a success on its own row, as in
locustfile.py.

    locust -f load_tests/soak_locustfile.py --headless -u 16 -r 4 -t 600s --host http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager
from locustfile import PROMPTS, REQUEST_TIMEOUT_S, check_json, check_stream, judge

MAX_TOKENS = (8, 16, 24)
EMBED = "all-minilm-l6-v2"
MODEL = "qwen2.5-coder-0.5b-instruct"
Check = Callable[[ResponseContextManager], str | None]


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": random.choice(PROMPTS)}]


def check_sse_events(response: ResponseContextManager) -> str | None:
    """AIgo's stream: JSON events, the last one with a finish_reason."""
    last: dict[str, Any] = {}
    for raw in response.iter_lines():
        line = raw.decode("utf-8", "replace")
        if line.startswith("data:"):
            last = json.loads(line[len("data:") :])
            if "error" in last:
                return f"stream error: {last['error']}"
    return None if last.get("finish_reason") else f"the stream ended without a finish_reason: {last}"


def check_ndjson(response: ResponseContextManager) -> str | None:
    """Ollama's stream: one JSON object a line, the last one `done`."""
    last: dict[str, Any] = {}
    for raw in response.iter_lines():
        if raw.strip():
            last = json.loads(raw)
            if "error" in last:
                return f"stream error: {last['error']}"
    return None if last.get("done") else f"the stream ended before done: {last}"


def has(*path: str | int, kind: type = str) -> Check:
    """A check that the JSON body holds a `kind` at `path`."""

    def check(response: ResponseContextManager) -> str | None:
        try:
            value: Any = response.json()
            for key in path:
                value = value[key]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return f"no {'/'.join(map(str, path))} ({type(e).__name__}): {response.text[:200]}"
        return None if isinstance(value, kind) else f"{'/'.join(map(str, path))} is {type(value).__name__}"

    return check


class SoakUser(HttpUser):
    wait_time = between(0.2, 1.0)

    def _post(self, name: str, path: str, body: dict[str, Any], check: Check, stream: bool = False) -> None:
        start = time.perf_counter()
        with self.client.post(
            path, json=body, name=name, stream=stream, catch_response=True, timeout=REQUEST_TIMEOUT_S
        ) as response:
            judge(response, name, start, check)

    @task(3)
    def openai_chat(self) -> None:
        body = {"messages": _messages(), "max_tokens": random.choice(MAX_TOKENS), "temperature": 0.7}
        self._post("openai chat json", "/v1/chat/completions", body, check_json)

    @task(3)
    def openai_chat_stream(self) -> None:
        body = {"messages": _messages(), "max_tokens": random.choice(MAX_TOKENS), "stream": True}
        self._post("openai chat stream", "/v1/chat/completions", body, check_stream, stream=True)

    @task(1)
    def openai_completion(self) -> None:
        body = {"prompt": random.choice(PROMPTS), "max_tokens": random.choice(MAX_TOKENS)}
        self._post("openai completion json", "/v1/completions", body, has("choices", 0, "text"))

    @task(1)
    def aigo_chat(self) -> None:
        body = {"messages": _messages(), "max_tokens": random.choice(MAX_TOKENS)}
        self._post("aigo chat json", "/api/v1/chat", body, has("message", "content"))

    @task(1)
    def aigo_generate_stream(self) -> None:
        body = {"prompt": random.choice(PROMPTS), "max_tokens": random.choice(MAX_TOKENS), "stream": True}
        self._post("aigo generate stream", "/api/v1/generate", body, check_sse_events, stream=True)

    @task(2)
    def ollama_chat_stream(self) -> None:
        body = {"model": MODEL, "messages": _messages(), "options": {"num_predict": random.choice(MAX_TOKENS)}}
        self._post("ollama chat stream", "/api/chat", body, check_ndjson, stream=True)

    @task(1)
    def ollama_generate(self) -> None:
        body = {"model": MODEL, "prompt": random.choice(PROMPTS), "stream": False,
                "options": {"num_predict": random.choice(MAX_TOKENS)}}  # fmt: skip
        self._post("ollama generate json", "/api/generate", body, has("response"))

    @task(1)
    def openai_embeddings(self) -> None:
        body = {"model": EMBED, "input": random.sample(PROMPTS, 4)}
        self._post("openai embeddings", "/v1/embeddings", body, has("data", 3, "embedding", kind=list))

    @task(1)
    def aigo_embed(self) -> None:
        body = {"model": EMBED, "input": random.choice(PROMPTS) * 40}  # cut at the model's limit
        self._post("aigo embed", "/api/v1/embed", body, has("embedding", kind=list))

    @task(1)
    def ollama_embed(self) -> None:
        body = {"model": EMBED, "input": random.sample(PROMPTS, 2)}
        self._post("ollama embed", "/api/embed", body, has("embeddings", 1, kind=list))
