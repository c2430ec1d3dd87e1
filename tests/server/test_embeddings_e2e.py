"""Embeddings: the engine worker's Embedder in process, and POST /v1/embeddings on a real server."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai.types import CreateEmbeddingResponse

from tests.helpers import EMBED, embedding_path, story
from tests.live_server import Server, Streamer, serve, wait_for_status
from wicore.engine.messages import EmbedOutput, EmbedRequest
from wicore.engine.request import Priority
from wicore.engine.worker import Embedder
from wicore.models.embedding import EmbeddingModel

TEXTS = ["What is machine learning?", "机器学习是什么？", "def gcd(a, b):\n    return a if not b else gcd(b, a % b)"]


def embedding_model_path() -> Path:
    return embedding_path(EMBED)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    embedding_model_path()
    return EmbeddingModel.load(EMBED).embed(TEXTS)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


# -- the worker's Embedder, in process ----------------------------------------------------------------


def test_embedder_runs_highest_priority_first_and_expires_late_requests(reference: np.ndarray) -> None:
    embedder = Embedder(EMBED)
    now = time.time()
    embedder.add(EmbedRequest("low", TEXTS[:1], None, Priority.LOW, now))
    embedder.add(EmbedRequest("late", TEXTS[:1], None, Priority.URGENT, now - 2, deadline=now - 1))
    embedder.add(EmbedRequest("high", TEXTS, 8, Priority.HIGH, now))
    embedder.add(EmbedRequest("cancelled", TEXTS, None, Priority.URGENT, now))
    assert embedder.cancel("cancelled") and not embedder.cancel("cancelled")
    order: list[EmbedOutput] = []
    steps = []
    while embedder.has_work():
        outputs = embedder.step()
        steps.append([o.request_id for o in outputs])
        order += outputs
    # "high" and "low" ask for different dimensions, so they are not batched together.
    assert steps == [["late", "high"], ["low"]]
    late, high, low = order
    assert late.embeddings is None and late.error is not None and "timed out" in late.error
    assert high.error is None and high.embeddings is not None and high.prompt_tokens > len(TEXTS) * 3
    vectors = np.array(high.embeddings)
    assert vectors.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    truncated = reference[:, :8] / np.linalg.norm(reference[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, truncated, atol=1e-5)
    np.testing.assert_allclose(np.array(low.embeddings), reference[:1], atol=1e-6)
    assert embedder.step() == []


def test_embedder_batches_requests_with_the_same_dimensions(reference: np.ndarray) -> None:
    embedder = Embedder(EMBED)
    now = time.time()
    for i, text in enumerate(TEXTS):
        embedder.add(EmbedRequest(f"r{i}", [text], None, Priority.NORMAL, now + i))
    embedder.add(EmbedRequest("all", TEXTS, None, Priority.LOW, now))
    embedder.add(EmbedRequest("short", TEXTS, 16, Priority.NORMAL, now - 1))
    first = embedder.step()
    assert [o.request_id for o in first] == ["short"]  # the earliest of the highest priority leads
    batched = embedder.step()
    assert [o.request_id for o in batched] == ["r0", "r1", "r2", "all"]
    for i, out in enumerate(batched[:3]):
        np.testing.assert_allclose(out.embeddings, reference[i : i + 1], atol=1e-5)
        assert out.prompt_tokens == EmbeddingModel.load(EMBED).count_tokens([TEXTS[i]])[0]
    np.testing.assert_allclose(batched[3].embeddings, reference, atol=1e-5)
    assert batched[3].prompt_tokens == sum(o.prompt_tokens for o in batched[:3])
    assert not embedder.has_work()


def test_embedder_reports_bad_input_and_a_missing_model() -> None:
    embedder = Embedder(EMBED)
    embedder.add(EmbedRequest("big", ["x"], 385))
    [out] = embedder.step()
    assert out.embeddings is None and out.error is not None and "dimensions" in out.error
    missing = Embedder("nope")
    missing.add(EmbedRequest("r", ["x"]))
    [out] = missing.step()
    assert out.error is not None and "unknown embedding model" in out.error


# -- /v1/embeddings -----------------------------------------------------------------------------------


def test_openai_client_float_and_base64(client: openai.OpenAI, reference: np.ndarray) -> None:
    # The openai client asks for base64 unless told otherwise, and decodes it.
    r = client.embeddings.create(model=EMBED, input=TEXTS)
    assert isinstance(r, CreateEmbeddingResponse) and r.model == EMBED and r.object == "list"
    assert [d.index for d in r.data] == [0, 1, 2]
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), reference, atol=1e-6)
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(EmbeddingModel.load(EMBED).count_tokens(TEXTS))
    floats = client.embeddings.create(model=EMBED, input=TEXTS[0], encoding_format="float")
    assert len(floats.data) == 1 and len(floats.data[0].embedding) == 384
    np.testing.assert_allclose(floats.data[0].embedding, reference[0], atol=1e-6)
    # The wire JSON itself, float encoding: exactly OpenAI's shape.
    raw = httpx.post(f"{client.base_url}embeddings", json={"model": EMBED, "input": TEXTS}, timeout=30).json()
    CreateEmbeddingResponse.model_validate(raw, strict=True)


def test_an_input_over_the_limit_is_a_400_and_the_model_is_listed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=EMBED, input=["fine", "word " * 300])
    assert info.value.body["param"] == "input" and "input[1]: 302 tokens" in info.value.body["message"]
    assert EMBED in [m.id for m in client.models.list().data]
    assert client.models.retrieve(EMBED).owned_by == "wicore"


def test_base64_wire_format_and_dimensions(server: Server, reference: np.ndarray) -> None:
    body = {"model": EMBED, "input": TEXTS[1], "encoding_format": "base64", "dimensions": 32}
    r = httpx.post(server.url + "/v1/embeddings", json=body, timeout=30)
    assert r.status_code == 200
    # openai's model types the decoded list, so the base64 wire shape is checked by hand.
    payload = r.json()
    assert payload["object"] == "list" and payload["model"] == EMBED and payload["usage"]["prompt_tokens"] > 3
    data = payload["data"][0]["embedding"]
    assert payload["data"][0]["object"] == "embedding" and isinstance(data, str)
    vector = np.frombuffer(base64.b64decode(data), "<f4")
    expected = reference[1, :32] / np.linalg.norm(reference[1, :32])
    assert vector.shape == (32,)
    np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_embeddings_have_their_own_worker_and_in_flight_limit(tmp_path: Path) -> None:
    config = {"scheduler": {"max_concurrent": 1, "max_queue_size": 0}, "api": {"rate_limit_per_minute": 0}}
    with serve(tmp_path, config) as server:
        # A generation holds the chat model's only slot for ~40 tokens, then its client hangs up.
        streamer = Streamer(server.url, story(400, stream=True, ignore_eos=True), stop_after=40)
        streamer.start()
        wait_for_status(server, lambda s: s["active"] == 1)
        r = httpx.post(server.url + "/v1/chat/completions", json=story(1), timeout=30)
        assert r.status_code == 429 and r.json()["error"]["code"] == "429" and r.headers["retry-after"]
        # Limits hold per model: the embedding model's worker has its own slot.
        r = httpx.post(server.url + "/v1/embeddings", json={"model": EMBED, "input": "x"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
        streamer.join(60)
        # A dead embedding worker is replaced; a request meanwhile waits for the new one.
        os.kill(server.worker_pid(EMBED), signal.SIGKILL)
        r = httpx.post(server.url + "/api/v1/embed", json={"input": "x"}, timeout=60)
        assert r.status_code == 200 and len(r.json()["embedding"]) == 384
