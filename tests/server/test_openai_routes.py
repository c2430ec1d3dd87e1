"""The OpenAI-compatible routes in process, over a fake engine: validation, envelopes, SSE framing,
fan-out, logprob shapes and the mapping of engine refusals and failures to HTTP statuses."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.fake_engine import REPLY, FakeEngine, in_process
from tests.helpers import EMBED, FRANCE, GEMMA, MODEL, assert_error, assert_ollama_error
from wicore.engine.client import EngineUnavailable, QueueFull
from wicore.engine.request import EngineRequest, FinishReason, Priority

pytestmark = pytest.mark.anyio


async def sse_events(response: httpx.Response) -> list[str]:
    return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]


async def chat(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": MODEL, "messages": FRANCE, **body})


async def test_chat_completion_shape(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await chat(client, temperature=0, max_tokens=32)
    assert r.status_code == 200, r.text
    c = ChatCompletion.model_validate(r.json())
    assert c.choices[0].message.content == REPLY
    assert c.choices[0].message.role == "assistant" and c.choices[0].finish_reason == "stop"
    assert c.usage is not None and c.usage.prompt_tokens > 10
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert c.model == MODEL and c.object == "chat.completion" and c.id.startswith("chatcmpl-")


async def test_chat_streaming_shape_and_done(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        body = {"model": MODEL, "messages": FRANCE, "max_tokens": 32, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = await sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "stop"
    assert not finishing[0].choices[0].delta.content
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens > 0


async def test_completion_length_and_stop(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.post("/v1/completions", json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3})
        c = Completion.model_validate(r.json())
        assert c.choices[0].finish_reason == "length" and c.usage is not None and c.usage.completion_tokens == 3
        r = await client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 32, "stop": ["Paris"]})
        c = Completion.model_validate(r.json())
        assert c.choices[0].text == "The capital of France is " and c.choices[0].finish_reason == "stop"


async def test_n_fans_out_with_seeds_and_priority(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await chat(client, n=3, seed=11, priority="urgent", max_tokens=4)
        assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2]
        requests = [q for q in engine.requests if isinstance(q, EngineRequest)]
        assert [q.params.seed for q in requests] == [11, 12, 13]
        assert all(q.priority == Priority.URGENT for q in requests)
        assert len({q.request_id for q in requests}) == 3
        batch = await client.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 2})
        assert [c["index"] for c in batch.json()["choices"]] == [0, 1, 2, 3]


async def test_logprob_shapes(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await chat(client, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3)
        content = ChatCompletion.model_validate(r.json()).choices[0].logprobs.content  # type: ignore[union-attr]
        assert len(content) == 4 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
        assert content[0].token == content[0].top_logprobs[0].token
        text = bytes(b for t in content for b in t.bytes).decode()  # type: ignore[union-attr]
        assert text == "The capital of France"
        r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "logprobs": 2})
        lp = r.json()["choices"][0]["logprobs"]
        assert lp["text_offset"] == [0, 3, 11] and all(len(t) == 2 for t in lp["top_logprobs"])


@pytest.mark.parametrize(
    "body,param",
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"priority": "asap"}, "priority"),
        ({"n": 0}, "n"),
        ({"logit_bias": {"12": 500}}, "logit_bias"),
        ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"best_of": 2}, "best_of"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"minimum": []}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        # SGLang's own fields pass only at the defaults its gateway sends (what this server does anyway).
        ({"skip_special_tokens": False}, "skip_special_tokens"),
        ({"continue_final_message": 1}, "continue_final_message"),
    ],
)  # fmt: skip
async def test_bad_parameters_are_400_naming_the_parameter(engine: FakeEngine, body: dict, param: str) -> None:
    async with in_process(engine) as client:
        r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": FRANCE, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert param in err["message"] and err["type"] == "invalid_request_error" and err["code"] == "400"
    assert not engine.requests


async def test_unknown_model_is_404_and_long_prompt_is_400(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": FRANCE})
        assert r.status_code == 404 and "gpt-9" in r.json()["error"]["message"]
        long = [{"role": "user", "content": "word " * 5000}]
        r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": long})
        assert r.status_code == 400 and "context" in r.json()["error"]["message"]
        r = await client.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await client.post("/v1/completions", json={"prompt": [10**7], "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        r = await chat(client, n=33)  # more sequences than the scheduler admits at once
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert not engine.requests


async def test_models(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        models = (await client.get("/v1/models")).json()
        listed = openai.types.Model  # every card validates as the client's own type
        # Every downloaded model, the default first; the default loaded at start-up, the others not yet.
        assert [listed.model_validate(m).id for m in models["data"]] == [MODEL, GEMMA, EMBED]
        assert [m["loaded"] for m in models["data"]] == [True, False, False]
        assert all(m["owned_by"] == "wicore" and m["created"] > 0 for m in models["data"])
        assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
        assert (await client.get(f"/v1/models/{EMBED}")).json()["id"] == EMBED
        missing = await client.get("/v1/models/gpt-9")
        assert missing.status_code == 404 and f"available models: {MODEL}, {GEMMA}, {EMBED}" in missing.text


@pytest.mark.parametrize(
    ("refusal", "status", "kind"),
    [(QueueFull("full"), 429, "rate_limit_exceeded"), (EngineUnavailable("loading"), 503, "server_error")],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_refusals_keep_their_status(engine: FakeEngine, refusal: Exception, status: int, kind: str,
                                          stream: bool) -> None:  # fmt: skip
    engine.refuse = refusal
    async with in_process(engine) as client:
        r = await chat(client, max_tokens=2, stream=stream)
        assert r.status_code == status and r.json()["error"]["type"] == kind
        if status == 429:
            assert r.headers["retry-after"] == "1"
        e = await client.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
        assert e.status_code == status


@pytest.mark.parametrize(("finish", "status"), [(FinishReason.TIMEOUT, 408), (FinishReason.ERROR, 500)])
async def test_failures_in_the_envelope_and_mid_stream(engine: FakeEngine, finish: FinishReason, status: int) -> None:
    engine.finish = finish
    async with in_process(engine) as client:
        r = await chat(client, max_tokens=8)
        assert r.status_code == status and r.json()["error"]["code"] == str(status)
        async with client.stream("POST", "/v1/chat/completions", json={"messages": FRANCE, "stream": True}) as s:
            events = await sse_events(s)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == str(status)
    if finish == FinishReason.TIMEOUT:
        assert "timed out" in json.loads(events[-2])["error"]["message"]


async def test_a_dead_engine_is_503(engine: FakeEngine) -> None:
    engine.finish, engine.ready = FinishReason.ERROR, False
    async with in_process(engine) as client:
        r = await chat(client, max_tokens=8)
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"


async def test_embeddings_float_base64_and_dimensions(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.post("/v1/embeddings", json={"model": EMBED, "input": ["a", "b"], "dimensions": 8})
        e = CreateEmbeddingResponse.model_validate(r.json())
        assert [len(d.embedding) for d in e.data] == [8, 8] and e.model == EMBED
        r = await client.post("/v1/embeddings", json={"input": "a", "encoding_format": "base64", "priority": "high"})
        assert isinstance(r.json()["data"][0]["embedding"], str)
        assert engine.requests[-1].priority == Priority.HIGH
        r = await client.post("/v1/embeddings", json={"input": "a", "dimensions": 385})
        assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
        r = await client.post("/v1/embeddings", json={"model": MODEL, "input": "a"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model" and "cannot embed" in r.text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": EMBED, "input": "x", "dimensions": 385}, 400, "dimensions"),
        ({"model": EMBED, "input": "x", "dimensions": 0}, 400, "dimensions"),
        ({"model": EMBED, "input": [1, 2, 3]}, 400, "input"),
        ({"model": EMBED, "input": [[1, 2]]}, 400, "input"),
        ({"model": EMBED, "input": ""}, 400, "input"),
        ({"model": EMBED, "input": []}, 400, "input"),
        ({"model": EMBED, "input": ["ok", 5]}, 400, "input"),
        ({"model": EMBED, "input": ["x"] * 2049}, 400, "input"),
        ({"model": EMBED}, 400, "input"),
        ({"model": EMBED, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": "text-embedding-3-small", "input": "x"}, 404, "model"),
    ],
)
async def test_bad_embedding_requests_in_the_envelope(engine: FakeEngine, body: dict, status: int, param: str) -> None:
    async with in_process(engine) as client:
        assert_error(await client.post("/v1/embeddings", json=body), status, param)
    assert not engine.requests


async def test_dimensions_too_large_through_the_client(engine: FakeEngine) -> None:
    async with in_process(engine) as http:
        client = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            await client.embeddings.create(model=EMBED, input="x", dimensions=1024)


async def test_embedding_timeout_is_408(engine: FakeEngine) -> None:
    async with in_process(engine, {"scheduler": {"request_timeout": 1e-6}}) as client:
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/api/v1/embed", {"input": "x"})):
            r = await client.post(path, json=body)
            assert r.status_code == 408 and "timed out" in r.json()["error"]["message"]
        assert_ollama_error(await client.post("/api/embed", json={"model": EMBED, "input": "x"}), 408, "timed out")


async def test_chat_with_tool_history_renders_it_through_the_template(engine: FakeEngine) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]
    async with in_process(engine) as client:
        r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "temperature": None})
    assert r.status_code == 200, r.text
    prompt = engine.tokenizer.decode(engine.requests[0].prompt_ids, skip_special_tokens=False)
    # Qwen2.5's template: the developer text as the system turn, the call and the tool's answer in its tags.
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<|im_start|>user\n<tool_response>\n21 C\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


async def test_completion_echo_prepends_the_prompt(engine: FakeEngine) -> None:
    async with in_process(engine) as client:
        r = await client.post("/v1/completions", json={"prompt": "Say hi.", "echo": True, "n": 2, "max_tokens": 4})
        body = {"prompt": ["A.", "B."], "echo": True, "max_tokens": 4, "stream": True}
        async with client.stream("POST", "/v1/completions", json=body) as s:
            events = [json.loads(e) for e in await sse_events(s) if e != "[DONE]"]
    assert r.status_code == 200, r.text
    reply = engine.tokenizer.decode(engine.tokenizer.encode(REPLY, add_special_tokens=False)[:4])
    assert [c.text for c in Completion.model_validate(r.json()).choices] == ["Say hi." + reply] * 2
    texts = {0: "", 1: ""}
    for e in events:
        for c in e["choices"]:  # stream chunks before the last have finish_reason null
            texts[c["index"]] += c["text"]
    assert texts == {0: "A." + reply, 1: "B." + reply}


async def test_embedding_over_the_limit_is_a_400_naming_input(engine: FakeEngine) -> None:
    long = "word " * 300  # all-MiniLM-L6-v2 takes 256 tokens
    async with in_process(engine) as client:
        r = await client.post("/v1/embeddings", json={"model": EMBED, "input": ["short", long]})
        assert_error(r, 400, "input")
        assert r.json()["error"]["message"].startswith("input[1]: 302 tokens, more than")
        # Past 8192 characters in all, the inputs are counted in a thread: the same answer.
        r = await client.post("/v1/embeddings", json={"model": EMBED, "input": ["word " * 200] * 9 + [long]})
        assert_error(r, 400, "input")
        assert r.json()["error"]["message"].startswith("input[9]: 302 tokens, more than")
        assert (await client.post("/v1/embeddings", json={"input": "word " * 254})).status_code == 200  # 256 fits
    assert len(engine.requests) == 1  # the refused ones never reached the engine


async def test_completion_echo_with_logprobs_scores_the_prompt(engine: FakeEngine) -> None:
    body = {"prompt": "Say hi.", "echo": True, "logprobs": 1, "max_tokens": 2}
    async with in_process(engine) as client:
        r = await client.post("/v1/completions", json=body)
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
            events = [json.loads(e) for e in await sse_events(s) if e != "[DONE]"]
    assert r.status_code == 200, r.text
    assert engine.requests[0].params.prompt_logprobs == 1 and engine.requests[0].params.logprobs == 1
    prompt = engine.tokenizer.encode("Say hi.")
    texts = [engine.tokenizer.decode([t]) for t in prompt]
    # The first prompt token has nothing before it: null, as OpenAI sends it (openai-python's types say
    # float, but its client does not validate responses); the fake engine scores the rest -1.
    (choice,) = r.json()["choices"]
    lp = choice["logprobs"]
    n = len(prompt)
    assert lp["tokens"][:n] == texts and len(lp["tokens"]) == n + 2
    assert lp["token_logprobs"][:n] == [None] + [-1.0] * (n - 1) and lp["token_logprobs"][n:] == [-0.25, -0.25]
    assert lp["top_logprobs"][0] is None and lp["top_logprobs"][1] == {texts[1]: -1.0}
    # Offsets run through the echoed prompt, then the completion after it.
    assert lp["text_offset"] == [sum(map(len, texts[:k])) for k in range(n)] + [7, 7 + len(lp["tokens"][n])]
    first = events[0]["choices"][0]
    assert first["text"] == "Say hi." and first["logprobs"]["tokens"] == texts
    assert first["logprobs"]["token_logprobs"][0] is None
    assert events[1]["choices"][0]["logprobs"]["text_offset"] == [7]


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/v1/chat/completions", {"messages": FRANCE}), ("/v1/completions", {"prompt": "The capital of France is"})],
)
@pytest.mark.parametrize(
    ("response_format", "constrained"),
    [
        ({"type": "text"}, False),
        ({"type": "json_object"}, True),
        ({"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object"}, "strict": True}}, True),
    ],
)
async def test_response_format_reaches_the_engine_as_a_grammar(
    engine: FakeEngine, path: str, extra: dict, response_format: dict, constrained: bool
) -> None:
    async with in_process(engine) as client:
        r = await client.post(path, json={"model": MODEL, **extra, "response_format": response_format})
    assert r.status_code == 200, r.text
    assert (engine.requests[-1].params.grammar is not None) == constrained


async def test_response_format_schema_objects_are_closed(engine: FakeEngine) -> None:
    """instructor's JSON_SCHEMA mode sends a pydantic schema without `additionalProperties`: the grammar
    allows no keys beyond the listed ones (as llama-server and vLLM), or a small model adds keys until
    max_tokens cuts its JSON short."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "City", "schema": schema}}
    async with in_process(engine) as client:
        r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": FRANCE,
                                                            "response_format": response_format})  # fmt: skip
    assert r.status_code == 200, r.text
    grammar = json.loads(engine.requests[-1].params.grammar or "")
    assert grammar["grammars"][0]["json_schema"]["additionalProperties"] is False


async def test_long_prompts_are_tokenised_off_the_loop_and_hopeless_ones_refused_unread(engine: FakeEngine) -> None:
    fits = "word " * 3000  # past the inline limit: tokenised in a thread
    hopeless = "a" * (engine.max_model_len * engine.tokenizer.max_token_bytes + 1)
    async with in_process(engine, {"api": {"max_request_bytes": 64 * 2**20}}) as client:
        ok = await client.post("/v1/completions", json={"model": MODEL, "prompt": fits, "max_tokens": 2})
        assert ok.status_code == 200, ok.text
        assert engine.requests[-1].prompt_ids == engine.tokenizer.encode(fits)
        sent = len(engine.requests)
        for path, body, param in (
            ("/v1/completions", {"prompt": hopeless}, "prompt"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": hopeless}]}, "messages"),
        ):
            r = await client.post(path, json={"model": MODEL, **body})
            assert_error(r, 400, param)
            assert "cannot fit the model's context" in r.json()["error"]["message"]
    assert len(engine.requests) == sent


async def test_the_fields_sglangs_gateway_adds_are_accepted_at_their_defaults(engine: FakeEngine) -> None:
    # Exactly what sglang-router 0.3.2 forwards (captured on loopback): its runtime's fields added, and
    # max_tokens renamed to max_completion_tokens.
    chat_body = {
        "messages": FRANCE, "model": MODEL, "logprobs": False, "max_completion_tokens": 32, "stream": False,
        "no_stop_trim": False, "ignore_eos": False, "continue_final_message": False, "skip_special_tokens": True,
        "separate_reasoning": True, "stream_reasoning": True, "return_hidden_states": False,
    }  # fmt: skip
    completion_body = {
        "model": MODEL, "prompt": "hi", "max_tokens": 32, "stream": False, "echo": False, "no_stop_trim": False,
        "ignore_eos": False, "skip_special_tokens": True, "return_hidden_states": False,
    }  # fmt: skip
    async with in_process(engine) as client:
        chat_r = await client.post("/v1/chat/completions", json=chat_body)
        completion_r = await client.post("/v1/completions", json=completion_body)
    assert chat_r.status_code == 200, chat_r.text
    assert ChatCompletion.model_validate(chat_r.json()).choices[0].message.content == REPLY
    assert completion_r.status_code == 200, completion_r.text
    assert Completion.model_validate(completion_r.json()).choices[0].text
    assert [r.params.max_tokens for r in engine.requests] == [32, 32]
