"""Several models on one real server: every downloaded model servable by name, one engine worker each,
loaded on first use and unloaded by `model.max_loaded`, `keep_alive` and worker deaths, driven by the
official openai and ollama clients."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.helpers import EMBED, FRANCE, GEMMA, MODEL, embedding_path, model_path
from tests.live_server import Server, serve

# Gemma-3-270m is a base model without a chat template: it is asked through completions.
SKY = "The sky is"


def loaded(server: Server) -> list[str]:
    """The models /api/ps lists, most recently used first."""
    return [m["name"].removesuffix(":latest") for m in httpx.get(server.url + "/api/ps", timeout=10).json()["models"]]


def wait_until(check: Callable[[], bool], timeout: float = 20) -> bool:
    end = time.time() + timeout
    while not check():
        if time.time() > end:
            return False
        time.sleep(0.1)
    return True


def client_of(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Both generative models may stay loaded, with the embedding model (max_loaded 3, the default)."""
    model_path(MODEL), model_path(GEMMA), embedding_path(EMBED)
    config = {"api": {"rate_limit_per_minute": 0}, "scheduler": {"request_timeout": 90}}
    with serve(tmp_path_factory.mktemp("models"), config) as s:
        yield s


def test_two_models_and_embeddings_interleaved(server: Server) -> None:
    client = client_of(server)
    listed = {m.id: m.model_extra["loaded"] for m in client.models.list().data}  # type: ignore[index]
    assert listed == {MODEL: True, GEMMA: False, EMBED: False}  # only the default model loads at start-up

    for _ in range(2):
        chat = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=8, temperature=0)
        assert chat.model == MODEL and "Paris" in (chat.choices[0].message.content or "")
        sky = client.completions.create(model=GEMMA, prompt=SKY, max_tokens=6, temperature=0)
        assert sky.model == GEMMA and sky.choices[0].text.strip() and sky.usage and sky.usage.completion_tokens == 6
        vectors = client.embeddings.create(model=EMBED, input=["blue sky", "Paris"])
        assert vectors.model == EMBED and [len(d.embedding) for d in vectors.data] == [384, 384]

    assert set(loaded(server)) == {MODEL, GEMMA, EMBED}
    assert all(m.model_extra["loaded"] for m in client.models.list().data)  # type: ignore[index]
    status = httpx.get(server.url + "/status", timeout=10).json()
    by_name = {m["name"]: m for m in status["models"]}
    assert len({m["pid"] for m in status["models"]}) == 3  # one worker process each
    assert by_name[GEMMA]["scheduler"]["generation_tokens_total"] >= 12
    assert status["scheduler"]["generation_tokens_total"] == sum(
        m["scheduler"]["generation_tokens_total"] for m in status["models"]
    )
    assert status["memory_bytes"] == sum(m["memory_bytes"] for m in status["models"]) > 0
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert f'wicore:generation_tokens_total{{model_name="{GEMMA}"}} 12.0' in metrics
    assert f'wicore:num_requests_running{{model_name="{MODEL}"}}' in metrics

    # A model that does not exist: 404 in each surface's shape, listing the ones there are.
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="llama-9", messages=FRANCE, max_tokens=2)
    message = info.value.body["message"]  # type: ignore[index]
    assert "llama-9" in message and all(name in message for name in (MODEL, GEMMA, EMBED))
    with pytest.raises(ollama.ResponseError) as ollama_info:
        ollama.Client(host=server.url).generate(model="llama-9", prompt="x")
    assert ollama_info.value.status_code == 404 and GEMMA in ollama_info.value.error
    aigo = httpx.post(server.url + "/api/v1/generate", json={"model": "wicore:llama-9", "prompt": "x"}, timeout=10)
    assert aigo.status_code == 404 and aigo.json()["error"]["param"] == "model" and GEMMA in aigo.text


def test_ollama_keep_alive(server: Server) -> None:
    client = ollama.Client(host=server.url)
    # A duration string: the model stays loaded about that long once the request ends.
    client.generate(model=GEMMA, prompt=SKY, raw=True, options={"num_predict": 2}, keep_alive="10m")
    (gemma,) = [m for m in client.ps().models if m.model == f"{GEMMA}:latest"]
    assert gemma.expires_at is not None
    left = gemma.expires_at.timestamp() - time.time()
    assert 500 < left <= 600
    # keep_alive 0: unloaded as soon as the request ends.
    reply = client.generate(model=GEMMA, prompt=SKY, raw=True, options={"num_predict": 2}, keep_alive=0)
    assert reply.done and reply.response
    assert wait_until(lambda: GEMMA not in loaded(server)), loaded(server)
    # An empty prompt with keep_alive 0 is `ollama stop`: nothing loads.
    stop = client.generate(model=GEMMA, prompt="", keep_alive=0)
    assert stop.done_reason == "unload" and GEMMA not in loaded(server)
    # Loaded on demand, the wait shows as Ollama's load_duration (within total_duration); loaded, ~0.
    cold = client.generate(model=GEMMA, prompt=SKY, raw=True, options={"num_predict": 2}, keep_alive=0)
    warm_up = client.generate(model=GEMMA, prompt="")  # an empty prompt alone loads it
    warm = client.generate(model=GEMMA, prompt=SKY, raw=True, options={"num_predict": 2})
    assert cold.load_duration is not None and cold.total_duration is not None
    assert 0.05e9 < cold.load_duration < cold.total_duration
    assert warm_up.done_reason == "load" and GEMMA in loaded(server)
    assert warm.load_duration is not None and warm.load_duration < 0.05e9


def test_a_killed_worker_fails_only_its_models_requests(server: Server) -> None:
    client = client_of(server)
    client.completions.create(model=GEMMA, prompt=SKY, max_tokens=2)  # loaded
    gemma_pid = server.worker_pid(GEMMA)
    outcome: dict[str, object] = {}
    chunks = {MODEL: 0, GEMMA: 0}

    def stream(model: str, prompt: str, max_tokens: int) -> None:
        try:
            pieces = client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True}
            )
            for piece in pieces:
                chunks[model] += 1
                if piece.choices and piece.choices[0].finish_reason:
                    outcome[model] = piece.choices[0].finish_reason
        except openai.APIError as e:
            outcome[model] = e

    threads = [
        threading.Thread(target=stream, args=(MODEL, "def fibonacci(n):", 40)),
        threading.Thread(target=stream, args=(GEMMA, "Once upon a time", 400)),
    ]
    for t in threads:
        t.start()
    assert wait_until(lambda: chunks[GEMMA] >= 3 and chunks[MODEL] >= 1, 60), chunks
    os.kill(gemma_pid, signal.SIGKILL)
    for t in threads:
        t.join(120)
    assert isinstance(outcome[GEMMA], openai.APIError) and "worker died" in str(outcome[GEMMA]), outcome
    assert outcome[MODEL] == "length", outcome  # the other model's stream ran to its end
    chat = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=4)
    assert chat.choices[0].finish_reason == "length"
    # The dead worker was replaced; a request waits for the new one.
    again = client.completions.create(model=GEMMA, prompt=SKY, max_tokens=3)
    assert again.usage and again.usage.completion_tokens == 3 and server.worker_pid(GEMMA) != gemma_pid
    restarts = httpx.get(server.url + "/status", timeout=10).json()["models"]
    assert {m["name"]: m["worker_restarts"] for m in restarts}[GEMMA] == 1


def test_max_loaded_one_swaps_models_without_failing_a_request(tmp_path: Path) -> None:
    config = {"api": {"rate_limit_per_minute": 0}, "model": {"max_loaded": 1}, "scheduler": {"request_timeout": 120}}
    with serve(tmp_path, config) as server:
        client = client_of(server)
        assert loaded(server) == [MODEL]
        client.completions.create(model=GEMMA, prompt=SKY, max_tokens=2)
        assert loaded(server) == [GEMMA]  # the second unloaded the first
        seen: set[tuple[str, ...]] = set()
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.add(tuple(loaded(server)))
                time.sleep(0.05)

        def ask(i: int) -> str:
            model = (MODEL, GEMMA)[i % 2]
            r = client.completions.create(model=model, prompt=f"{SKY} {i}", max_tokens=4, temperature=0)
            assert r.usage and r.usage.completion_tokens == 4
            return r.model

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # Concurrent requests across the two: each waits while the other model drains and unloads.
        with ThreadPoolExecutor(6) as pool:
            answered = list(pool.map(ask, range(6)))
        stop.set()
        watcher.join(10)
        assert answered == [MODEL, GEMMA] * 3  # every request answered, by its own model
        assert all(len(models) <= 1 for models in seen), seen  # never two loaded at once
        status = httpx.get(server.url + "/status", timeout=10).json()
        assert len(status["models"]) == 1 and status["max_loaded"] == 1
