"""Locust load test: chat completions, streamed and not, at mixed priorities.

Each simulated user sends short chat prompts with a small `max_tokens`, half of them streamed,
with priorities drawn low 30 %, normal 50 %, high 15 %, urgent 5 %. Every response's shape is
checked: a non-streaming body carries `choices[0].message.content`; a stream is `data:` chunks of
one `id`, one of them carrying a `finish_reason`, ending with `data: [DONE]`. A 429 (full queue or
rate limit) is the server doing its job under overload: it counts as a success, reported on its
own row (`... 429`) so the number of rejections stays visible. Statistics rows are per mode and
priority, so latency per priority can be compared. `WICORE_API_KEY`, when set, is sent as the
Bearer key.

    locust -f load_tests/locustfile.py --headless -u 8 -r 2 -t 60s --host http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager

PRIORITIES = ("low", "normal", "high", "urgent")
PRIORITY_WEIGHTS = (30, 50, 15, 5)
PROMPTS = (
    "What is the capital of France?",
    "Name three prime numbers.",
    "Write a haiku about the sea.",
    "What does HTTP stand for?",
    "Give me a synonym for fast.",
    "Write a Python one-liner that reverses a string.",
    "Why is the sky blue? One sentence.",
    "List two uses of a hash map.",
    "Translate 'good morning' into Spanish.",
    "What is 17 times 3?",
)
MAX_TOKENS = (8, 16, 24)
REQUEST_TIMEOUT_S = 60.0


class ChatUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        if key := os.environ.get("WICORE_API_KEY"):
            self.client.headers["Authorization"] = f"Bearer {key}"

    def _body(self, priority: str, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": random.choice(MAX_TOKENS),
            "temperature": random.choice((0.0, 0.7)),
            "priority": priority,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _post(self, stream: bool) -> None:
        priority = random.choices(PRIORITIES, weights=PRIORITY_WEIGHTS)[0]
        name = f"chat {'stream' if stream else 'json'} [{priority}]"
        start = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions",
            json=self._body(priority, stream),
            name=name,
            stream=stream,
            catch_response=True,
            timeout=REQUEST_TIMEOUT_S,
        ) as response:
            judge(response, name, start, check_stream if stream else check_json)

    @task
    def chat_json(self) -> None:
        self._post(stream=False)

    @task
    def chat_stream(self) -> None:
        self._post(stream=True)


def judge(
    response: ResponseContextManager, name: str, start: float, check: Callable[[ResponseContextManager], str | None]
) -> None:
    """Record a response: a 429 as a success on its own row, another status than 200 as a failure, a 200 as
    what `check` says of its body (read to its end), timed to its last byte (`start`: perf_counter())."""
    if response.status_code == 429:
        response.request_meta["name"] = f"{name} 429"
        response.success()
        return
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return
    problem = check(response)
    # Locust stops its clock at the headers; a stream's latency is its last byte.
    response.request_meta["response_time"] = (time.perf_counter() - start) * 1000
    if problem:
        response.failure(problem)
    else:
        response.success()


def check_json(response: ResponseContextManager) -> str | None:
    """None when the body is a chat completion with text content, else what is wrong."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return f"bad chat.completion body ({type(e).__name__}: {e}): {response.text[:200]}"
    return None if isinstance(content, str) else f"content is {type(content).__name__}, not str"


def check_stream(response: ResponseContextManager) -> str | None:
    """Read the SSE stream to its end; None when its shape is right, else what is wrong."""
    ids: set[str] = set()
    finished = done = False
    size = 0
    for raw in response.iter_lines():
        size += len(raw) + 1
        line = raw.decode("utf-8", "replace")
        if not line.startswith("data:"):
            continue
        if done:
            return "data after [DONE]"
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(payload)
        except ValueError:
            return f"chunk is not JSON: {payload[:200]}"
        if "error" in chunk:
            return f"stream error: {chunk['error']}"
        ids.add(chunk.get("id"))
        finished |= any(c.get("finish_reason") for c in chunk.get("choices") or [])
    response.request_meta["response_length"] = size
    if not done:
        return "stream did not end with data: [DONE]"
    if len(ids) != 1:
        return f"expected one id per stream, got {len(ids)}"
    return None if finished else "no chunk carried a finish_reason"
