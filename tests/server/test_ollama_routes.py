"""The Ollama-compatible routes in process, over a fake engine: NDJSON framing, the final line's counts,
options converted into the shared sampling parameters, the model list, show, ps, pull, and errors in
Ollama's own shape."""

from __future__ import annotations

import datetime
import json

import httpx
import pytest

from tests.fake_engine import REPLY, FakeEngine, in_process
from tests.helpers import EMBED, FRANCE, GEMMA, MODEL, OLLAMA_FINAL_KEYS, assert_ollama_error
from wicore.engine.grammar import closed_objects
from wicore.engine.request import EngineRequest, FinishReason, Priority
from wicore.models import registry

pytestmark = pytest.mark.anyio


async def ndjson(client: httpx.AsyncClient, path: str, body: dict) -> list[dict]:
    async with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) async for line in r.aiter_lines() if line]


async def test_version_and_tags(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        assert (await client.get("/api/version")).json()["version"]
        models = (await client.get("/api/tags")).json()["models"]
    assert [m["name"] for m in models] == [f"{MODEL}:latest", f"{GEMMA}:latest", f"{EMBED}:latest"]
    assert [m["loaded"] for m in models] == [True, False, False]  # the default model loads at start-up
    chat = models[0]
    assert chat["size"] == registry.BUNDLED[MODEL].size and chat["digest"] == registry.BUNDLED[MODEL].sha256
    assert chat["details"]["family"] == "qwen2" and chat["details"]["parameter_size"] == "0.5B"
    assert chat["details"]["quantization_level"] == "Q4_K_M" and chat["details"]["format"] == "gguf"
    datetime.datetime.fromisoformat(chat["modified_at"])


async def test_chat_streams_ndjson_by_default(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        chunks = await ndjson(client, "/api/chat", {"model": MODEL, "messages": FRANCE})
    assert all(c["model"] == MODEL for c in chunks)
    assert all(c["done"] is False and c["message"]["role"] == "assistant" for c in chunks[:-1])
    assert "".join(c["message"]["content"] for c in chunks) == REPLY
    final = chunks[-1]
    assert set(final) >= OLLAMA_FINAL_KEYS and final["done"] is True and final["done_reason"] == "stop"
    assert final["eval_count"] == len(chunks) - 1 and final["message"]["content"] == ""
    assert final["prompt_eval_duration"] + final["eval_duration"] <= final["total_duration"]


async def test_options_convert_to_sampling_parameters(engine: FakeEngine) -> None:
    options = {"temperature": 1.0, "top_k": 20, "seed": 7, "num_predict": 3, "repeat_penalty": 1.1, "stop": ["x"]}
    body = {"model": f"{MODEL}:latest", "prompt": "hi", "stream": False, "options": options, "priority": "high"}
    async with in_process(engine) as client:
        r = await client.post("/api/generate", json=body)
        defaults = await client.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})
    assert r.headers["content-type"] == "application/json"
    g = r.json()
    assert g["done_reason"] == "length" and g["eval_count"] == 3 and g["response"]
    first, second = engine.requests
    assert isinstance(first, EngineRequest) and isinstance(second, EngineRequest)
    p = first.params
    assert (p.temperature, p.top_k, p.top_p, p.seed, p.max_tokens) == (1.0, 20, 0.9, 7, 3)
    assert p.repetition_penalty == 1.1 and tuple(p.stop) == ("x",) and first.priority == Priority.HIGH
    d = second.params  # Ollama's defaults for a model that sets none
    assert (d.temperature, d.top_p, d.top_k, d.max_tokens) == (0.8, 0.9, 40, 512)
    assert defaults.json()["done_reason"] == "stop"


async def test_empty_prompt_or_messages_only_load(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        g = (await client.post("/api/generate", json={"model": MODEL})).json()
        assert g["done"] is True and g["done_reason"] == "load" and g["response"] == ""
        c = (await client.post("/api/chat", json={"model": MODEL, "messages": []})).json()
        assert c["done"] is True and c["done_reason"] == "load" and c["message"]["content"] == ""
    assert not engine.requests


async def test_error_mid_stream_is_ollamas_own_line(engine: FakeEngine) -> None:
    engine.finish = FinishReason.TIMEOUT
    async with in_process(engine) as client:
        chunks = await ndjson(client, "/api/chat", {"model": MODEL, "messages": FRANCE})
    assert chunks[0]["done"] is False and set(chunks[-1]) == {"error"} and "timed out" in chunks[-1]["error"]


async def test_embed_shape(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = (await client.post("/api/embed", json={"model": f"{EMBED}:latest", "input": ["a", "b"]})).json()
    assert r["model"] == f"{EMBED}:latest" and len(r["embeddings"]) == 2
    assert all(len(e) == 384 for e in r["embeddings"])
    assert r["prompt_eval_count"] > 3 and r["total_duration"] > 0 and 0 <= r["load_duration"] <= r["total_duration"]


async def test_embed_truncates_by_default(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.post("/api/embed", json={"model": EMBED, "input": "word " * 300})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/api/chat", {"model": "llama3", "messages": FRANCE}, 404, "model"),
        ("/api/chat", {"messages": FRANCE}, 400, "model"),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        ("/api/chat", {"model": MODEL, "messages": FRANCE, "options": {"temperature": "hot"}}, 400,
         "options.temperature"),
        ("/api/chat", {"model": MODEL, "messages": FRANCE, "options": {"top_p": 1.5}}, 400, "options.top_p"),
        ("/api/chat", {"model": MODEL, "messages": FRANCE, "options": {"repeat_penalty": 0}}, 400,
         "options.repeat_penalty"),
        ("/api/chat", {"model": MODEL, "messages": FRANCE, "stream": "no"}, 400, "stream"),
        ("/api/chat", {"model": MODEL, "messages": FRANCE, "format": "yaml"}, 400, "format"),
        ("/api/chat", {"model": MODEL, "messages": FRANCE, "format": {"type": "integer", "minimum": "x"}}, 400,
         "format"),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "format": {"type": "strange"}}, 400, "format"),
        ("/api/chat", {"model": EMBED, "messages": FRANCE}, 400, "model"),
        ("/api/generate", {"model": MODEL, "prompt": ["a"]}, 400, "prompt"),
        ("/api/generate", {"model": MODEL, "prompt": "hi", "images": ["aGk="]}, 400, "images"),
        ("/api/generate", {"model": "nope:7b", "prompt": "hi"}, 404, "model"),
        ("/api/embed", {"model": EMBED, "input": ""}, 400, "input"),
        ("/api/embed", {"model": EMBED, "input": [1, 2]}, 400, "input[0]"),
        ("/api/embed", {"model": EMBED, "input": "x", "dimensions": 999}, 400, "dimensions"),
        ("/api/embed", {"model": MODEL, "input": "x"}, 400, "model"),
        ("/api/embed", {"model": "bge-m3", "input": "x"}, 404, "model"),
        ("/api/embed", {"model": EMBED, "input": "word " * 300, "truncate": False}, 400, "input"),
    ],
)  # fmt: skip
async def test_bad_input_in_ollamas_error_shape(
    engine: FakeEngine, path: str, body: dict, status: int, param: str
) -> None:
    async with in_process(engine) as client:
        assert_ollama_error(await client.post(path, json=body), status, param)


async def test_show_describes_each_model(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        chat = (await client.post("/api/show", json={"model": f"{MODEL}:latest"})).json()
        embed = (await client.post("/api/show", json={"model": EMBED})).json()
        base = (await client.post("/api/show", json={"model": GEMMA})).json()
    assert base["capabilities"] == ["completion"]  # no chat template: no chat, so no tools
    assert chat["details"]["family"] == "qwen2" and chat["details"]["quantization_level"] == "Q4_K_M"
    assert chat["model_info"]["general.architecture"] == "qwen2" and chat["model_info"]["qwen2.block_count"] == 24
    assert "<|im_start|>" in chat["template"] and "tokenizer.chat_template" not in chat["model_info"]
    assert "temperature 0.8" in chat["parameters"].splitlines()
    assert chat["modelfile"].startswith('# Modelfile generated by "ollama show"\nFROM ')
    assert "PARAMETER top_k 40" in chat["modelfile"] and chat["capabilities"] == ["completion", "tools"]
    assert embed["details"]["family"] == "bert" and embed["capabilities"] == ["embedding"]
    assert embed["model_info"]["bert.embedding_length"] == 384 and embed["model_info"]["bert.context_length"] == 256
    assert embed["template"] == "" and embed["parameters"] == ""
    datetime.datetime.fromisoformat(chat["modified_at"])


async def test_ps_lists_the_loaded_chat_model(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        (loaded,) = (await client.get("/api/ps")).json()["models"]
    assert loaded["name"] == loaded["model"] == f"{MODEL}:latest" and loaded["size_vram"] == 0
    assert loaded["size"] == engine.memory and loaded["digest"] == registry.BUNDLED[MODEL].sha256
    assert loaded["details"]["family"] == "qwen2" and loaded["context_length"] == engine.max_model_len
    assert datetime.datetime.fromisoformat(loaded["expires_at"]).year > 2100  # loaded at start-up: kept


async def test_pull_verifies_a_present_model(engine: FakeEngine) -> None:
    # The embedding model: small, so its sha256 check is quick.
    async with in_process(engine) as client:
        lines = await ndjson(client, "/api/pull", {"model": f"{EMBED}:latest"})
        single = await client.post("/api/pull", json={"model": EMBED, "stream": False})
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    assert any("already present" in line["status"] for line in lines[1:-1])
    assert single.status_code == 200 and single.json() == {"status": "success"}


async def test_legacy_embeddings_route(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = (await client.post("/api/embeddings", json={"model": EMBED, "prompt": "hello"})).json()
        empty = (await client.post("/api/embeddings", json={"model": EMBED, "prompt": ""})).json()
        long = await client.post("/api/embeddings", json={"model": EMBED, "prompt": "word " * 300})
    assert set(r) == {"embedding"} and len(r["embedding"]) == 384
    assert empty == {"embedding": []}  # as Ollama answers an empty prompt
    assert long.status_code == 200  # the legacy route truncates


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/api/show", {"model": "llama3"}, 404, "model 'llama3' not found"),
        ("/api/show", {}, 400, "model: is required"),
        ("/api/pull", {"model": "llama3"}, 404, "model 'llama3' not found"),
        ("/api/pull", {"model": "llama3", "stream": False}, 404, "bundled models are"),
        ("/api/embeddings", {"model": MODEL, "prompt": "x"}, 400, "cannot embed"),
        ("/api/embeddings", {"model": EMBED}, 400, "prompt: is required"),
        ("/api/generate", {"model": "llama3", "prompt": "x"}, 404, f"available models: {MODEL}, {GEMMA}, {EMBED}"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "keep_alive": "soon"}, 400, "keep_alive: invalid duration"),
        ("/api/embed", {"model": EMBED, "input": "x", "keep_alive": True}, 400, "keep_alive: expected a duration"),
        ("/api/nothing", {}, 404, "no such endpoint"),
    ],
)
async def test_new_routes_errors(engine: FakeEngine, path: str, body: dict, status: int, says: str) -> None:
    async with in_process(engine) as client:
        assert_ollama_error(await client.post(path, json=body), status, says)


@pytest.mark.parametrize("fmt", ["json", {"type": "object", "properties": {"a": {"type": "integer"}}}])
async def test_format_reaches_the_engine_as_a_grammar(engine: FakeEngine, fmt: str | dict) -> None:
    async with in_process(engine) as client:
        r = await client.post("/api/chat", json={"model": MODEL, "messages": FRANCE, "format": fmt, "stream": False})
    assert r.status_code == 200, r.text
    assert engine.requests[-1].params.grammar is not None


def test_format_schema_objects_are_closed_as_in_ollama() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"type": "integer"}}},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
            "choice": {"enum": [{"properties": {}}]},
        },
        "$defs": {"p": {"properties": {"x": {"type": "string"}}}},
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["properties"]["properties"]
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert closed["properties"]["choice"] == {"enum": [{"properties": {}}]}
    assert closed["$defs"]["p"]["additionalProperties"] is False
