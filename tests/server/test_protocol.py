"""The server's request/response models and error mapping, without a server: every bad parameter is a 400
naming it, responses validate as the official `openai` client's types, and /status renders the seed's text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ValidationError
from structlog.testing import capture_logs

from wicore.engine.messages import SchedulerStats
from wicore.engine.request import Priority
from wicore.server.errors import APIError, validation_error
from wicore.server.middleware import SlidingWindowLimiter
from wicore.server.monitoring import StatusResponse
from wicore.server.openai import protocol as openai_protocol
from wicore.server.openai.protocol import (
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprob,
    ChatResponseMessage,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    TopLogprob,
)
from wicore.server.openai.protocol import ChatCompletionChunk as WicoreChunk
from wicore.server.protocol import DeltaMessage, UsageInfo

MESSAGES = [{"role": "user", "content": "hi"}]


def _error(model: type, body: Any) -> APIError:
    """The APIError the server answers for `body` (sent as JSON, as a client would)."""
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(json.dumps(body))
    return validation_error(info.value.errors(include_url=False))


@pytest.mark.parametrize(
    ("param", "value", "says"),
    [
        ("temperature", 2.5, "must be between 0 and 2"),
        ("temperature", -0.1, "must be between 0 and 2"),
        ("top_p", 1.01, "must be between 0 and 1"),
        ("frequency_penalty", 2.5, "must be between -2 and 2"),
        ("presence_penalty", -3, "must be between -2 and 2"),
        ("n", 0, "must be between 1 and 128"),
        ("top_k", -2, "must be at least -1"),
        ("min_p", 1.5, "must be between 0 and 1"),
        ("repetition_penalty", 0, "must be greater than 0"),
        ("max_tokens", 0, "must be at least 1"),
        ("max_completion_tokens", 0, "must be at least 1"),
        ("top_logprobs", 21, "must be between 0 and 20"),
        ("logit_bias", {"42": 100.5}, "values must be between -100 and 100"),
        ("logit_bias", {"hello": 1}, "keys must be token ids"),
        ("logit_bias", {"²": 1}, "keys must be token ids"),
        ("logit_bias", {str(i): 1 for i in range(301)}, "at most 300 entries"),
        ("stop", ["a", "b", "c", "d", "e"], "at most 4 stop sequences"),
        ("stop", "", "must be a non-empty string"),
        ("stop", 7, "must be a non-empty string"),
        ("priority", "max", "'low', 'normal', 'high' or 'urgent'"),
        ("seed", "42", "valid integer"),
        ("max_tokens", 10.5, "valid integer"),
        ("max_tokens", True, "valid integer"),  # JSON true is not a number here
        ("stream", "yes", "valid boolean"),
        ("tools", [], "unsupported parameter"),
        ("response_format", {"type": "yaml"}, "'text', 'json_object' or 'json_schema'"),
        ("response_format", {"type": "json_schema"}, 'give it exactly when type is "json_schema"'),
    ],
)
def test_chat_parameter_errors_name_the_parameter(param: str, value: Any, says: str) -> None:
    error = _error(ChatCompletionRequest, {"messages": MESSAGES, param: value})
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.message.startswith(f"{param}"), error.message
    assert says in error.message
    assert error.param is not None and error.param.split(".")[0] == param


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({}, "messages", "is required"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'user', 'assistant' or 'tool'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "must be a string or a list"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "is required"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].type", "text"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "messages[0].tool_calls",
            "only assistant",
        ),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content", "is required"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id", "is required"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]},
            "messages[0].tool_calls[0].function",
            "is required",
        ),
        ({"messages": MESSAGES, "stream_options": {"include_usage": 1}}, "stream_options.include_usage", "boolean"),
        ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs", "requires logprobs"),
    ],
)
def test_chat_structure_errors(body: dict[str, Any], param: str, says: str) -> None:
    error = _error(ChatCompletionRequest, body)
    assert error.status == 400
    assert error.message.startswith(f"{param}") and says in error.message, error.message


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({}, "prompt", "is required"),
        ({"prompt": []}, "prompt", "must be a string, a list of strings"),
        ({"prompt": [1, "a"]}, "prompt", "must be a string, a list of strings"),
        ({"prompt": [[1, 2], []]}, "prompt", "must be a string, a list of strings"),
        ({"prompt": [-1]}, "prompt", "must be a string, a list of strings"),
        ({"prompt": "x", "logprobs": 21}, "logprobs", "must be between 0 and 20"),
        ({"prompt": "x", "best_of": 3}, "best_of", "only best_of equal to n"),
        ({"prompt": "x", "suffix": "y"}, "suffix", "unsupported parameter"),
    ],
)
def test_completion_errors(body: dict[str, Any], param: str, says: str) -> None:
    error = _error(CompletionRequest, body)
    assert error.status == 400
    assert error.message.startswith(f"{param}:") and says in error.message, error.message


def test_body_errors_without_a_parameter() -> None:
    for raw, says in [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
    ]:
        with pytest.raises(ValidationError) as info:
            ChatCompletionRequest.model_validate_json(raw)
        error = validation_error(info.value.errors(include_url=False))
        assert error.status == 400 and says in error.message and error.param is None


def test_error_envelope_matches_the_seed() -> None:
    cases = [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "invalid_request_error"),
        (408, "timeout_error"),
        (429, "rate_limit_exceeded"),
        (500, "server_error"),
        (503, "server_error"),
    ]
    for status, kind in cases:
        error = APIError(status, "boom", headers={"Retry-After": "1"} if status == 429 else None)
        body = json.loads(error.response("/v1/chat/completions").body)
        assert body == {"error": {"message": "boom", "type": kind, "param": None, "code": str(status)}}
        assert error.response("/api/v1/chat").status_code == status
        assert json.loads(error.response("/api/v1/chat").body) == body  # AIgo's paths have the envelope
        ollama = error.response("/api/chat")  # Ollama's its own shape
        assert json.loads(ollama.body) == {"error": "boom"} and ollama.status_code == status
    assert APIError(429, "busy", headers={"Retry-After": "1"}).response("/api/tags").headers["retry-after"] == "1"


def test_valid_chat_request_maps_to_sampling_params() -> None:
    body = ChatCompletionRequest.model_validate_json(
        json.dumps(
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                ],
                "stop": "END",
                "seed": 7,
                "n": 3,
                "logit_bias": {"42": -100, "7": 5},
                "logprobs": True,
                "top_logprobs": 3,
                "priority": "urgent",
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_completion_tokens": 9,
                "temperature": 1,  # a JSON integer is a fine float
            }
        )
    )
    assert body.conversation() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"}]
    assert body.requested_max_tokens == 9 and body.include_usage and body.num_logprobs == 3
    assert body.engine_priority is Priority.URGENT
    params = body.sampling_params(9, body.num_logprobs, seed_offset=2)
    assert params.stop == ("END",) and params.seed == 9 and params.max_tokens == 9 and params.logprobs == 3
    assert params.logit_bias == {42: -100.0, 7: 5.0} and params.temperature == 1.0


def test_chat_defaults_follow_the_seed() -> None:
    body = ChatCompletionRequest.model_validate({"messages": MESSAGES})
    assert (body.temperature, body.top_p, body.frequency_penalty, body.presence_penalty) == (0.7, 1.0, 0.0, 0.0)
    assert body.requested_max_tokens is None and body.n == 1 and body.priority == "normal"
    assert body.num_logprobs is None and not body.include_usage
    params = body.sampling_params(512, None)
    assert (params.top_k, params.min_p, params.repetition_penalty, params.seed) == (0, 0.0, 1.0, None)
    # top_p = 0 keeps only the likeliest token, which is greedy decoding.
    greedy = ChatCompletionRequest.model_validate({"messages": MESSAGES, "top_p": 0}).sampling_params(5, None)
    assert greedy.temperature == 0.0 and greedy.top_p == 1.0
    # logprobs without top_logprobs: the chosen tokens' logprobs, no alternatives.
    assert ChatCompletionRequest.model_validate({"messages": MESSAGES, "logprobs": True}).num_logprobs == 0


def test_completion_prompt_shapes() -> None:
    def prompts(p: Any) -> list[Any]:
        return CompletionRequest.model_validate_json(json.dumps({"prompt": p})).prompts()

    assert prompts("hi") == ["hi"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2, 3]) == [[1, 2, 3]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    body = CompletionRequest.model_validate({"prompt": "x"})
    assert (body.max_tokens, body.temperature, body.logprobs) == (16, 1.0, None)


# -- responses against the official client's types ----------------------------------------------------


def _chat_logprobs() -> ChatChoiceLogprobs:
    alternatives = [TopLogprob(token="Hi", logprob=-0.1, bytes=[72, 105]), TopLogprob(token="Yo", logprob=-2.5)]
    return ChatChoiceLogprobs(
        content=[ChatLogprob(token="Hi", logprob=-0.1, bytes=[72, 105], top_logprobs=alternatives)]
    )


def test_chat_completion_validates_as_openai_type() -> None:
    response = ChatCompletionResponse(
        id="chatcmpl-abc",
        created=1704067200,
        model="m",
        choices=[
            ChatCompletionChoice(index=0, message=ChatResponseMessage(content="Hi"), finish_reason="stop"),
            ChatCompletionChoice(
                index=1, message=ChatResponseMessage(content="Hi"), logprobs=_chat_logprobs(), finish_reason="length"
            ),
        ],
        usage=UsageInfo.of(15, 2),
    )
    data = json.loads(response.model_dump_json())
    parsed = ChatCompletion.model_validate(data)
    assert parsed.object == "chat.completion" and parsed.choices[0].message.role == "assistant"
    assert parsed.usage is not None and parsed.usage.total_tokens == 17
    assert parsed.choices[1].logprobs is not None and parsed.choices[1].logprobs.content is not None
    assert parsed.choices[1].logprobs.content[0].top_logprobs[1].token == "Yo"


def test_chat_chunks_have_the_streaming_shape() -> None:
    def chunk(choices: list[ChatCompletionChunkChoice], usage: UsageInfo | None = None) -> dict[str, Any]:
        data = json.loads(
            WicoreChunk(id="chatcmpl-1", created=1, model="m", choices=choices, usage=usage).model_dump_json()
        )
        ChatCompletionChunk.model_validate(data)
        return data

    role = chunk([ChatCompletionChunkChoice(index=0, delta=DeltaMessage(role="assistant", content=""))])
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["choices"][0]["finish_reason"] is None and "usage" not in role
    content = chunk([ChatCompletionChunkChoice(index=0, delta=DeltaMessage(content="Hi"), logprobs=_chat_logprobs())])
    assert content["choices"][0]["delta"] == {"content": "Hi"}
    finish = chunk([ChatCompletionChunkChoice(index=0, delta=DeltaMessage(), finish_reason="stop")])
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "stop"
    usage = chunk([], UsageInfo.of(3, 4))
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert {c["object"] for c in (role, content, finish, usage)} == {"chat.completion.chunk"}


def test_completion_validates_as_openai_type() -> None:
    logprobs = CompletionLogprobs(
        tokens=["a", "b"], token_logprobs=[-0.5, -1.0], top_logprobs=[{"a": -0.5}, {"b": -1.0}], text_offset=[0, 1]
    )
    response = CompletionResponse(
        id="cmpl-1",
        created=1,
        model="m",
        choices=[CompletionChoice(index=0, text="ab", logprobs=logprobs, finish_reason="length")],
        usage=UsageInfo.of(2, 2),
    )
    parsed = Completion.model_validate(json.loads(response.model_dump_json()))
    assert parsed.object == "text_completion" and parsed.choices[0].logprobs is not None
    assert parsed.choices[0].logprobs.text_offset == [0, 1]
    # A stream's last chunk (finish_reason set, no usage) is a Completion too.
    last = CompletionResponse(
        id="cmpl-1", created=1, model="m", choices=[CompletionChoice(index=0, text="", finish_reason="stop")]
    )
    data = json.loads(last.model_dump_json())
    assert "usage" not in data
    Completion.model_validate(data)


def test_model_list_shape() -> None:
    listing = ModelList(data=[ModelCard(id="m", created=1704067200)]).model_dump()
    assert listing == {
        "object": "list",
        "data": [{"id": "m", "object": "model", "created": 1704067200, "owned_by": "wicore", "loaded": False}],
    }


# -- /status ------------------------------------------------------------------------------------------


def test_status_text_from_scheduler_stats() -> None:
    stats = SchedulerStats(
        running=True,
        waiting_by_priority={"low": 2, "normal": 8, "high": 2, "urgent": 0},
        active=5,
        total_requests=1250,
        completed=1240,
        failed=3,
        cancelled=7,
        avg_processing_time=0.1564,
        avg_wait_time=0.0231,
        kv_blocks_total=100,
        kv_blocks_free=75,
        active_request_ids=["a", "b"],
    )
    status = StatusResponse.of(stats, port=8000, uptime=3600.54, total_requests=1250, error_count=3)
    assert status.scheduler_status == (
        "调度器状态:\n  运行中: 是\n  总请求数: 1250\n  已完成: 1240\n  失败: 3\n  取消: 7\n  活跃请求: 5\n"
        "  队列长度: 12\n  成功率: 99.2%\n  平均处理时间: 0.156s\n  平均等待时间: 0.023s"
    )
    assert status.queue_summary == (
        "队列状态:\n  低优先级: 2 个请求\n  普通优先级: 8 个请求\n  高优先级: 2 个请求\n  紧急优先级: 0 个请求\n"
        "  活跃处理: 5 个请求"
    )
    data = status.model_dump()
    assert (data["server_running"], data["port"], data["uptime"]) == ("是", "8000", "3600.5s")
    assert (data["total_requests"], data["error_count"]) == ("1250", "3")
    s = data["scheduler"]
    assert (s["queue_length"], s["active"], s["completed"], s["failed"], s["cancelled"]) == (12, 5, 1240, 3, 7)
    assert s["success_rate"] == pytest.approx(99.2) and s["kv_cache_usage"] == pytest.approx(0.25)
    assert s["waiting_by_priority"] == {"low": 2, "normal": 8, "high": 2, "urgent": 0}
    assert s["active_request_ids"] == ["a", "b"]


def test_status_of_a_stopped_idle_scheduler() -> None:
    status = StatusResponse.of(SchedulerStats(running=False), port=1, uptime=0.0, total_requests=0, error_count=0)
    assert "运行中: 否" in status.scheduler_status and "成功率: 100.0%" in status.scheduler_status
    assert status.queue_summary.count(": 0 个请求") == 5


# -- rate limiting ------------------------------------------------------------------------------------


def test_sliding_window_limiter() -> None:
    limiter = SlidingWindowLimiter(3, window=60.0)
    assert [limiter.hit("a", t) for t in (0.0, 10.0, 20.0)] == [None, None, None]
    assert limiter.hit("a", 30.0) == pytest.approx(30.0)  # the hit at 0 leaves the window at 60
    assert limiter.hit("b", 30.0) is None  # other clients are counted apart
    assert limiter.hit("a", 60.5) is None  # one slot freed
    assert limiter.hit("a", 61.0) == pytest.approx(9.0)
    # Idle clients are forgotten after a window, and start afresh.
    assert limiter.hit("a", 500.0) is None and "b" not in limiter._hits


# Every chat parameter OpenAI's reference marks nullable, each as `null`: the default applies.
NULLABLE_CHAT = [
    "temperature", "top_p", "n", "max_tokens", "max_completion_tokens", "presence_penalty", "frequency_penalty",
    "logprobs", "top_logprobs", "stream", "stream_options", "stop", "seed", "user", "logit_bias", "response_format",
    "parallel_tool_calls", "store", "metadata", "service_tier", "reasoning_effort", "modalities", "audio",
    "prediction", "web_search_options", "verbosity",
]  # fmt: skip


def test_chat_null_means_the_default() -> None:
    body = ChatCompletionRequest.model_validate_json(json.dumps({"messages": MESSAGES} | dict.fromkeys(NULLABLE_CHAT)))
    assert body == ChatCompletionRequest.model_validate({"messages": MESSAGES})
    assert body.temperature == 0.7 and body.n == 1 and body.stream is False and body.logprobs is False


def test_completion_and_embedding_nulls_mean_the_default() -> None:
    nullable = ["echo", "suffix", "best_of", "logprobs", "max_tokens", "temperature", "top_p", "n", "stream", "seed",
                "stop", "presence_penalty", "frequency_penalty", "logit_bias", "user", "stream_options"]  # fmt: skip
    body = CompletionRequest.model_validate_json(json.dumps({"prompt": "x"} | dict.fromkeys(nullable)))
    assert body == CompletionRequest.model_validate({"prompt": "x"})
    assert body.max_tokens == 16 and body.temperature == 1.0 and body.echo is False
    embed = EmbeddingRequest.model_validate_json('{"input": "x", "dimensions": null, "encoding_format": null}')
    assert embed.encoding_format == "float" and embed.dimensions is None


def test_documented_parameters_are_ignored_and_logged_once(monkeypatch: pytest.MonkeyPatch) -> None:
    documented = {
        "store": True, "metadata": {"k": "v"}, "service_tier": "auto", "reasoning_effort": "low",
        "prompt_cache_key": "p", "safety_identifier": "s", "modalities": ["text"], "verbosity": "low",
    }  # fmt: skip
    monkeypatch.setattr(openai_protocol, "ignored_logged", set())  # as in a fresh process
    with capture_logs() as logs:
        for _ in range(2):
            body = ChatCompletionRequest.model_validate_json(json.dumps({"messages": MESSAGES} | documented))
    assert body == ChatCompletionRequest.model_validate({"messages": MESSAGES})
    assert sorted(e["parameter"] for e in logs) == sorted(documented)  # each once, not once per request


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"messages": MESSAGES, "invented": 1}, "invented", "unsupported parameter"),
        ({"messages": MESSAGES, "parallel_tool_calls": True}, "parallel_tool_calls", "unsupported parameter"),
        ({"messages": MESSAGES, "tools": None}, "tools", "unsupported parameter"),
    ],
)
def test_invented_or_unsupported_fields_still_fail(body: dict[str, Any], param: str, says: str) -> None:
    error = _error(ChatCompletionRequest, body)
    assert error.param == param and says in error.message


def test_tool_history_and_developer_role_reach_the_template_in_transformers_form() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    body = ChatCompletionRequest.model_validate_json(json.dumps({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]}))  # fmt: skip
    assert body.conversation() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
        ]},
        {"role": "tool", "content": "21 C", "tool_call_id": "call_1"},
    ]  # fmt: skip
