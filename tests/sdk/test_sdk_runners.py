"""The aigo runners and adapters against a real WiCore server and in-process on the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aigo.models import (
    CapabilityError,
    HuggingFaceRunner,
    MixedModelRunner,
    OllamaRunner,
    OpenAIRunner,
    RunnerError,
    WiCoreRunner,
    get_model_runner,
)
from aigo.models.adapters import ChatAdapter, EmbeddingAdapter, TextGenerationAdapter, cosine
from aigo.models.base import ModelConfig
from tests.helpers import embedding_path, model_path
from tests.live_server import Server, free_port, serve
from wicore.models import registry

MODEL = "qwen2.5-coder-0.5b-instruct"
EMBEDDER = "all-minilm-l6-v2"
FRANCE = "What is the capital of France?"
PARIS = "The capital of France is Paris."
SHORT = "The capital of France"  # its first 4 tokens
KEY = "sk-aigo-test"
SEED_TEXTS = ["人工智能正在改变世界。", "深度学习是机器学习的一个分支。", "今天天气真好，我想去公园散步。"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model_path(MODEL)
    # Auth on: every remote call below also proves the runners send the key.
    with serve(tmp_path_factory.mktemp("sdk-server"), {"api": {"auth_enabled": True, "api_key": KEY}}) as s:
        yield s


def remote(server: Server, **kw: object) -> ModelConfig:
    return ModelConfig(
        provider="openai", model_name=MODEL, base_url=server.url + "/v1", api_key=KEY, temperature=0, **kw
    )


@pytest.fixture(scope="module")
def local() -> WiCoreRunner:
    model_path(MODEL)
    runner = get_model_runner(ModelConfig(provider="wicore", model_name=MODEL, temperature=0, max_tokens=32))
    assert isinstance(runner, WiCoreRunner)
    runner.load()
    return runner


@pytest.fixture(scope="module")
def embedder() -> WiCoreRunner:
    embedding_path(EMBEDDER)
    return WiCoreRunner(ModelConfig(provider="wicore", model_name=EMBEDDER))


def test_openai_runner_against_server(server: Server) -> None:
    runner = get_model_runner(remote(server))
    assert isinstance(runner, OpenAIRunner)
    runner.load()
    assert runner.generate(FRANCE, max_tokens=32) == PARIS
    assert runner.chat([{"role": "user", "content": FRANCE}], max_tokens=4) == SHORT
    pieces = list(runner.stream_generate(FRANCE, max_tokens=4))
    assert len(pieces) > 1 and "".join(pieces) == SHORT
    assert runner.generate(FRANCE, max_tokens=2) == "The capital"


def test_wicore_provider_with_base_url_uses_the_server(server: Server) -> None:
    config = ModelConfig(provider="wicore", model_name=MODEL, base_url=server.url + "/v1", api_key=KEY, temperature=0)
    runner = get_model_runner(config)
    assert isinstance(runner, OpenAIRunner) and runner.generate(FRANCE, max_tokens=32) == PARIS


def test_remote_errors_are_model_errors(server: Server) -> None:
    with pytest.raises(RunnerError, match="404.*no-such-model"):
        get_model_runner(remote(server).model_copy(update={"model_name": "no-such-model"})).generate(FRANCE)
    closed = ModelConfig(provider="openai", model_name=MODEL, base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(RunnerError, match="cannot reach"):
        get_model_runner(closed).generate(FRANCE)
    # A request the server refuses (400 in its envelope) carries the server's message.
    with pytest.raises(RunnerError, match="400.*top_p"):
        get_model_runner(remote(server)).generate(FRANCE, top_p=5.0)
    for wrong_key in (None, "sk-wrong"):
        with pytest.raises(RunnerError, match="401"):
            get_model_runner(remote(server).model_copy(update={"api_key": wrong_key})).load()


def test_ollama_runner_against_server(server: Server, embedder: WiCoreRunner) -> None:
    ollama = ModelConfig(provider="ollama", model_name=MODEL, base_url=server.url, api_key=KEY, temperature=0)
    runner = get_model_runner(ollama)
    assert isinstance(runner, OllamaRunner)
    runner.load()
    assert runner.generate(FRANCE, max_tokens=32) == PARIS
    assert runner.chat([{"role": "user", "content": FRANCE}], max_tokens=4) == SHORT
    pieces = list(runner.stream_generate(FRANCE, max_tokens=4))
    assert len(pieces) > 1 and "".join(pieces) == SHORT
    assert "".join(runner.stream_chat([{"role": "user", "content": FRANCE}], max_tokens=2, stop=".")) == "The capital"
    ollama_embedder = OllamaRunner(ollama.model_copy(update={"model_name": EMBEDDER}))
    remote_vectors = ollama_embedder.embed(SEED_TEXTS)
    assert cosines(remote_vectors, embedder.embed(SEED_TEXTS)) > 0.9999
    with pytest.raises(RunnerError, match="no such model.*ollama pull llama2"):
        OllamaRunner(ollama.model_copy(update={"model_name": "llama2"})).load()
    with pytest.raises(RunnerError, match="400.*cannot embed"):
        runner.embed(["text"])


def test_remote_embeddings(server: Server, embedder: WiCoreRunner) -> None:
    config = remote(server).model_copy(update={"model_name": EMBEDDER})
    adapter = EmbeddingAdapter(config)
    assert cosines(adapter.embed_batch(SEED_TEXTS), embedder.embed(SEED_TEXTS)) > 0.9999
    similarities = adapter.compute_similarities("机器学习是什么？", SEED_TEXTS)
    assert max(range(3), key=similarities.__getitem__) == 1, similarities


def cosines(a: list[list[float]], b: list[list[float]]) -> float:
    """The smallest cosine between matching rows."""
    return min(cosine(x, y) for x, y in zip(a, b, strict=True))


def test_local_runner_matches_server(local: WiCoreRunner, server: Server) -> None:
    assert local.generate(FRANCE) == PARIS
    assert local.chat([{"role": "user", "content": FRANCE}], max_tokens=4) == SHORT
    assert "".join(local.stream_generate(FRANCE, max_tokens=4)) == SHORT
    assert "".join(local.stream_chat([{"role": "user", "content": FRANCE}], max_tokens=4)) == SHORT
    assert local.generate(FRANCE, max_tokens=2) == get_model_runner(remote(server)).generate(FRANCE, max_tokens=2)


def test_capability_errors(local: WiCoreRunner, embedder: WiCoreRunner) -> None:
    with pytest.raises(CapabilityError, match=r"WiCoreRunner\(qwen2.5-coder-0.5b-instruct\) does not support embed"):
        local.embed(["text"])
    for call in (lambda: embedder.generate("x"), lambda: embedder.chat([{"role": "user", "content": "x"}])):
        with pytest.raises(CapabilityError, match=r"WiCoreRunner\(all-minilm-l6-v2\) does not support"):
            call()
    mixed = MixedModelRunner(ModelConfig(provider="mixed"), {"generate": [local]})
    with pytest.raises(CapabilityError, match="MixedModelRunner does not support chat"):
        mixed.chat([{"role": "user", "content": "x"}])
    assert issubclass(CapabilityError, NotImplementedError)


def test_huggingface_runner_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = model_path(MODEL)
    runner = HuggingFaceRunner(ModelConfig(provider="huggingface", model_name=str(gguf), temperature=0))
    assert runner.generate(FRANCE, max_tokens=2) == "The capital"
    # A hub id found in the local hub cache (the cache's layout: models--org--name/snapshots/<rev>/).
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-Coder-0.5B-Instruct-GGUF" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "qwen2.5-coder-0.5b-instruct-q5_0.gguf").symlink_to(gguf)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = get_model_runner(
        ModelConfig(provider="huggingface", model_name="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", temperature=0)
    )
    assert cached.generate(FRANCE, max_tokens=2) == "The capital"
    folder = registry.resolve_embedding(EMBEDDER)
    bert = HuggingFaceRunner(ModelConfig(provider="huggingface", model_name=str(folder)))
    assert len(bert.embed(["hello"])[0]) == 384
    missing = HuggingFaceRunner(ModelConfig(provider="huggingface", model_name="org/not-downloaded"))
    fix = "huggingface-cli download org/not-downloaded"
    with pytest.raises(RunnerError, match=f"not on disk.*cannot be reached.*{fix}"):
        missing.load()


def test_mixed_runner_falls_back(server: Server, local: WiCoreRunner, embedder: WiCoreRunner) -> None:
    dead = {"provider": "openai", "model_name": MODEL, "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    live = remote(server).model_dump()
    config = ModelConfig(
        provider="mixed",
        routes={
            "generate": [dead, live],
            "chat": [dead, live],
            "embed": [dead | {"model_name": EMBEDDER}, live | {"model_name": EMBEDDER}],
        },
    )
    runner = get_model_runner(config)
    assert isinstance(runner, MixedModelRunner)
    runner.load()  # the dead runner's failure to load is logged, not raised
    assert runner.generate(FRANCE, max_tokens=32) == PARIS
    assert "".join(runner.stream_chat([{"role": "user", "content": FRANCE}], max_tokens=4)) == SHORT
    assert "".join(runner.stream_generate(FRANCE, max_tokens=4)) == SHORT
    assert len(runner.embed(["hello", "world"])) == 2
    only_dead = MixedModelRunner(ModelConfig(provider="mixed"), {"generate": [get_model_runner(ModelConfig(**dead))]})
    with pytest.raises(RunnerError, match="every runner failed for generate.*cannot reach"):
        only_dead.generate(FRANCE)
    # A runner lacking the capability is skipped too.
    skip = MixedModelRunner(ModelConfig(provider="mixed"), {"embed": [local, embedder]})
    assert len(skip.embed(["hello"])[0]) == 384


def test_chat_and_generation_adapters(server: Server) -> None:
    chat = ChatAdapter(remote(server, max_tokens=32))
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": FRANCE}]
    reply = chat.process(messages)
    assert reply == PARIS
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And of Germany?"}]
    assert "Berlin" in chat.process(messages)
    with pytest.raises(ValueError, match="messages"):
        chat.process([{"role": "user"}])
    generator = TextGenerationAdapter(remote(server))
    assert generator.generate(prompt=FRANCE, max_tokens=2) == "The capital"
    assert generator.generate(prompt=FRANCE, max_tokens=4) == SHORT


def test_embedding_adapter_seed_example(embedder: WiCoreRunner) -> None:
    adapter = EmbeddingAdapter(ModelConfig(provider="wicore", model_name=EMBEDDER), runner=embedder)
    vector = adapter.embed("这是一段示例文本。")
    assert len(vector) == 384 and abs(sum(x * x for x in vector) - 1) < 1e-4
    assert len(adapter.embed_batch(SEED_TEXTS)) == 3
    similarities = adapter.compute_similarities("机器学习是什么？", SEED_TEXTS)
    assert max(range(3), key=similarities.__getitem__) == 1, similarities
    assert similarities[1] > 0.7 and all(-1 <= s <= 1 for s in similarities)
    with pytest.raises(ValueError, match="texts"):
        adapter.embed_batch([])


def test_env_openai_key_only_for_openai_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # A key meant for api.openai.com must not be sent to some other base_url.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert OpenAIRunner(ModelConfig(provider="openai")).config.api_key == "sk-test"
    assert OpenAIRunner(ModelConfig(provider="openai", base_url="http://127.0.0.1:1/v1")).config.api_key is None
