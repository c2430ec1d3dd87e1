"""A real server process on loopback, driven by the official `openai` client and by httpx."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.helpers import DATA, EMBED, FRANCE, GEMMA, MODEL, model_path
from tests.live_server import Server, serve
from wicore.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def sse_events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_chat_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=32)
    assert isinstance(r, ChatCompletion)
    assert r.choices[0].message.content == "The capital of France is Paris."
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == MODEL and r.object == "chat.completion"


def test_chat_streaming_shape(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0, max_tokens=32, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The capital of France is Paris."
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "stop"
    assert not finishing[0].choices[0].delta.content
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens > 0


def test_sse_wire_format_ends_with_done(server: Server) -> None:
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    for e in events[:-1]:
        ChatCompletionChunk.model_validate(json.loads(e))


def test_completions_endpoint(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=12)
    assert isinstance(r, Completion)
    assert r.choices[0].text.startswith(", in a small village, there lived")
    assert r.choices[0].finish_reason == "length" and r.usage is not None and r.usage.completion_tokens == 12


def test_stop_seed_n_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=32, stop=["Lily"])
    assert r.choices[0].text == ", in a small village, there lived a young girl named "
    assert r.choices[0].finish_reason == "stop"
    args = dict(model=MODEL, messages=FRANCE, temperature=1.0, max_tokens=12, seed=11)
    a = client.chat.completions.create(**args)
    b = client.chat.completions.create(**args)
    assert a.choices[0].message.content == b.choices[0].message.content
    many = client.chat.completions.create(**{**args, "n": 3})
    assert [c.index for c in many.choices] == [0, 1, 2]
    lp = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3
    )
    content = lp.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert content[0].token == content[0].top_logprobs[0].token  # greedy picks the most likely
    chinese = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "用中文说：你好，世界"}], temperature=0, max_tokens=48,
        logprobs=True,
    )  # fmt: skip
    assert chinese.choices[0].finish_reason == "stop"  # not cut inside a character
    tokens = chinese.choices[0].logprobs.content
    text = bytes(b for t in tokens for b in t.bytes).decode()
    assert text == chinese.choices[0].message.content + "<|im_end|>"  # the stop token has its logprob too


def test_models_health_status_root_metrics(server: Server, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL, GEMMA, EMBED] and models.data[0].owned_by == "wicore"
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "healthy" and health["engine"] == "wicore-mojo"
    status = httpx.get(server.url + "/status").json()
    assert status["server_running"] == "是" and status["port"] == str(server.port)
    assert "调度器状态" in status["scheduler_status"] and "紧急优先级" in status["queue_summary"]
    assert isinstance(status["scheduler"], dict)
    assert httpx.get(server.url + "/").json()["message"]
    metrics = httpx.get(server.url + "/metrics").text
    assert "wicore:num_requests_running" in metrics and "wicore:generation_tokens_total" in metrics


def test_batch_of_16_equals_each_request_alone(client: openai.OpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Count from {i} to {i + 5}:" for i in range(16)]

    def run(p: str) -> str:
        r = client.completions.create(model=MODEL, prompt=p, temperature=0, max_tokens=16)
        return r.choices[0].text

    alone = [run(p) for p in prompts]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(run, prompts))
    assert together == alone


def test_repeated_prompt_reports_cached_tokens(server: Server, client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "List five prime numbers and say why each one is prime."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    chunks = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    second = [c for c in chunks if c.usage is not None][-1]
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    prompt = second.usage.prompt_tokens
    # All full 16-token blocks but the one holding the last prompt token come from the cache.
    assert second.usage.prompt_tokens_details.cached_tokens == (prompt - 1) // 16 * 16 > 0
    assert first.usage.prompt_tokens_details.cached_tokens <= second.usage.prompt_tokens_details.cached_tokens
    status = httpx.get(server.url + "/status").json()["scheduler"]
    assert status["prefix_cache_hits"] >= second.usage.prompt_tokens_details.cached_tokens
    metrics = httpx.get(server.url + "/metrics").text
    assert "wicore:prefix_cache_hits_total" in metrics and "wicore:prefix_cache_queries_total" in metrics


def test_serves_gemma3_completions_and_refuses_chat_without_a_template(tmp_path: Path) -> None:
    """The second bundled model, a base Gemma 3: completions equal transformers' greedy text; it has no
    chat template, so chat is a 400 naming `messages`."""
    gemma = GEMMA
    tokenizer = Tokenizer.from_gguf(model_path(gemma))
    case = json.loads((DATA / "gemma3_reference.json").read_text())["cases"][1]
    with serve(tmp_path, {"model": {"name": gemma}}) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        # 8 tokens: the float32 reference nearly ties at step 11, where int8 activations may pick the
        # other token (test_generate.py, NEAR_TIE).
        r = client.completions.create(model=gemma, prompt=case["prompt"], temperature=0, max_tokens=8)
        assert r.choices[0].text == tokenizer.decode(case["greedy_ids"][:8])
        assert r.usage is not None and r.usage.prompt_tokens == len(case["prompt_ids"])  # BOS included
        chat = httpx.post(server.url + "/v1/chat/completions", json={"messages": FRANCE}, timeout=30)
        assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"


def test_nulls_and_documented_fields_as_other_clients_send_them(server: Server) -> None:
    body = {
        "model": MODEL, "messages": [{"role": "developer", "content": "Answer in one sentence."}, *FRANCE],
        "max_tokens": 32, "temperature": 0, "top_p": None, "n": None, "stream": None, "stream_options": None,
        "stop": None, "seed": None, "logprobs": None, "top_logprobs": None, "presence_penalty": None,
        "frequency_penalty": None, "logit_bias": None, "user": None, "parallel_tool_calls": None, "store": False,
        "metadata": {"run": "1"}, "service_tier": "auto", "reasoning_effort": None, "prompt_cache_key": "k",
    }  # fmt: skip
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert ChatCompletion.model_validate(r.json()).choices[0].message.content == "The capital of France is Paris."
    r = httpx.post(server.url + "/v1/chat/completions", json={**body, "invented": 1}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "invented"


def test_tool_call_history_through_the_real_template(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_capital", "arguments": '{"country": "France"}'}}  # fmt: skip
    r = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=32,
        messages=[
            *FRANCE,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Paris"},
        ],
    )  # fmt: skip
    assert "Paris" in (r.choices[0].message.content or "")


def test_completion_echo(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=4, temperature=0)
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    assert r.choices[0].text == prompt + plain.choices[0].text and " Paris" in r.choices[0].text


def test_completion_echo_with_prompt_logprobs(client: openai.OpenAI) -> None:
    """lm-evaluation-harness's log-likelihood request: echo, logprobs, no new tokens to speak of."""
    prompt = "The capital of France is Paris"
    r = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=1, temperature=0)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    n = len(lp.tokens) - 1  # the prompt's tokens, then the one generated
    assert "".join(lp.tokens[:n]) == prompt and r.choices[0].text.startswith(prompt)
    assert lp.token_logprobs[0] is None and all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    assert lp.token_logprobs[n - 1] > -1.0  # " Paris" is what the model expects here
    assert lp.top_logprobs[0] is None and all(len(t) == 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset is not None and lp.text_offset[n] == len(prompt)
