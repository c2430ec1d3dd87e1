"""server/tools.py: the call parser (whole and streamed, any split), the tool grammars as llguidance
matchers over both bundled models' real vocabularies, the generic rendering for templates without a tools
section, and the checks that name the field.  The end-to-end paths are in test_tools_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import llguidance
import pytest

from tests.helpers import GEMMA, MODEL, model_path
from wicore.engine.llm import LLM
from wicore.engine.request import FinishReason
from wicore.engine.sampling import SamplingParams
from wicore.models.config import ModelConfig
from wicore.models.prepared import metadata
from wicore.server.tools import (
    CallFormat,
    FunctionTool,
    NamedTool,
    ParsedDelta,
    ToolCallDelta,
    ToolCalling,
    ToolCallParser,
    ToolError,
    call_format,
    collect,
    parse_tool_calls,
    template_inputs,
)
from wicore.tokenizer import Tokenizer, tokenizers_json

WEATHER = FunctionTool(
    name="get_weather",
    description="The weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
)
TIME = FunctionTool(name="get_time", parameters={"type": "object", "properties": {"zone": {"type": "string"}}})
NAMES = {"get_weather", "get_time"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris {x}", "unit": "celsius"}}\n</tool_call>'
ARGUMENTS = '{"city": "Pa\\"ris {x}", "unit": "celsius"}'


def streamed(text: str, size: int) -> tuple[list[ParsedDelta], ToolCallParser]:
    parser = ToolCallParser(NAMES)
    deltas: list[ParsedDelta] = []
    for i in range(0, len(text), size):
        deltas += parser.push(text[i : i + size])
    return deltas + parser.finish(), parser


def shape(text: str, size: int | None = None) -> tuple[str, list[tuple[str, str]]]:
    """Content and (name, arguments) of `text`, parsed whole or streamed in pieces of `size` characters."""
    out = parse_tool_calls(text, NAMES) if size is None else collect(streamed(text, size)[0])
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in out.tool_calls)
    return out.content, [(c.name, c.arguments) for c in out.tool_calls]


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Just text, no <b>call</b>.", "Just text, no <b>call</b>.", []),
        (CALL, "", [("get_weather", ARGUMENTS)]),
        ("Let me look.\n" + CALL, "Let me look.", [("get_weather", ARGUMENTS)]),
        (CALL + "\n" + CALL.replace("get_weather", "get_time"), "",
         [("get_weather", ARGUMENTS), ("get_time", ARGUMENTS)]),
        ('{"name": "get_time", "arguments": {}}', "", [("get_time", "{}")]),  # bare, as small models write it
        ('{"name": "Paris", "size": 3}', '{"name": "Paris", "size": 3}', []),  # JSON that is not a call
        ("<tool_call>\nnot json\n</tool_call> after", "<tool_call>\nnot json\n</tool_call> after", []),
        ('<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
         '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>', []),  # not a callable tool
        ('<tool_call>\n{"name": "get_we', "", []),  # cut short by max_tokens before the head: dropped
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', "", [("get_weather", '{"city": "Pa')]),
        ("Ends with a partial <tool_ca", "Ends with a partial <tool_ca", []),
        ("Trailing space kept  \n", "Trailing space kept  \n", []),
    ],
)  # fmt: skip
def test_parser_whole_and_every_split_agree(text: str, content: str, calls: list[tuple[str, str]]) -> None:
    assert shape(text) == (content, calls)
    for size in (1, 2, 3, 7, 11):
        assert shape(text, size) == (content, calls), size


def test_streamed_deltas_are_openai_shaped_and_hold_back_markers() -> None:
    text = "Checking." + CALL
    deltas, parser = streamed(text, 1)
    content = [d for d in deltas if isinstance(d, str)]
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert "".join(content) == "Checking." and all("<" not in c for c in content)
    first, *fragments = calls
    assert (first.index, first.name, first.arguments) == (0, "get_weather", "") and first.id is not None
    assert all(f.id is None and f.name is None and f.index == 0 for f in fragments)
    assert "".join(f.arguments for f in fragments) == ARGUMENTS and len(fragments) > 3  # streamed as it came
    assert (parser.calls, parser.closed) == (1, 1)


def test_marker_split_across_deltas_never_reaches_content() -> None:
    parser = ToolCallParser(NAMES)
    assert parser.push("Sure <tool") == ["Sure"]
    assert parser.push("_ca") == []
    events = parser.push('ll>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>')
    assert [e.name for e in events if isinstance(e, ToolCallDelta) and e.id] == ["get_time"]
    assert not [e for e in events if isinstance(e, str)]


# -- grammars over the real vocabularies -------------------------------------------------------------


def ll_tokenizer(name: str, eos: list[int]) -> llguidance.LLTokenizer:
    """llguidance's view of a model's vocabulary, built as the worker builds it (engine/grammar.py)."""
    path = model_path(name)
    vocab_size = ModelConfig.from_metadata(metadata(path, vocabulary=False)).vocab_size
    return llguidance.LLTokenizer(tokenizers_json(path), n_vocab=vocab_size, eos_token=eos)


@pytest.fixture(scope="module", params=[MODEL, GEMMA])
def vocabulary(request: pytest.FixtureRequest) -> Iterator[tuple[Tokenizer, llguidance.LLTokenizer, CallFormat]]:
    tokenizer = Tokenizer.from_gguf(model_path(request.param))
    ll = ll_tokenizer(request.param, sorted(tokenizer.stop_token_ids))
    yield tokenizer, ll, call_format(tokenizer)


def accepts(vocabulary: tuple[Tokenizer, llguidance.LLTokenizer, CallFormat], grammar: str, text: str) -> bool:
    tokenizer, ll, _ = vocabulary
    matcher = llguidance.LLMatcher(ll, grammar, log_level=0)
    ok = all(matcher.consume_token(t) for t in tokenizer.encode(text, add_special_tokens=False))
    return ok and matcher.is_accepting()


def test_call_format_of_the_bundled_models() -> None:
    qwen = call_format(Tokenizer.from_gguf(model_path(MODEL)))
    assert qwen.renders_tools and qwen.open_token == 151657 and qwen.close_token == 151658
    gemma = call_format(Tokenizer.from_gguf(model_path(GEMMA)))
    assert gemma == CallFormat(renders_tools=False, open_token=None, close_token=None)  # no template at all


@pytest.mark.parametrize(
    ("choice", "parallel", "accepted"),
    [
        ("auto", True, {"text", "text then call", "call", "bare call", "two calls", "time call"}),
        ("auto", False, {"text", "text then call", "call", "bare call", "time call"}),
        ("required", True, {"call", "two calls", "time call"}),
        ("required", False, {"call", "time call"}),
        (NamedTool("get_time"), True, {"time call"}),
    ],
)
def test_grammars_allow_what_tool_choice_says(vocabulary: Any, choice: Any, parallel: bool, accepted: set[str]) -> None:
    grammar = ToolCalling.build([WEATHER, TIME], choice, parallel).grammar(vocabulary[2])
    assert grammar is not None
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    texts = {
        "text": "It is sunny.\nBye",
        "text then call": "Let me check.\n" + call,
        "call": call,
        "bare call": '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        "two calls": call + "\n" + call,
        "time call": '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>',
        "invented key": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "x": 1}}\n</tool_call>',
        "missing required": '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>',
        "free JSON": '{"city": "Paris"}',
    }
    assert {name for name, text in texts.items() if accepts(vocabulary, grammar, text)} == accepted


def test_auto_with_a_response_schema(vocabulary: Any) -> None:
    """response_format beside tools: an answer that is not a call follows the schema."""
    answer = {"type": "object", "properties": {"temp": {"type": "integer"}}, "required": ["temp"]}
    grammar = ToolCalling.build([WEATHER], "auto", False).grammar(vocabulary[2], answer)
    assert grammar is not None
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert accepts(vocabulary, grammar, '{"temp": 21}') and accepts(vocabulary, grammar, call)
    assert not accepts(vocabulary, grammar, "It is 21 degrees.")
    assert not accepts(vocabulary, grammar, '{"temp": "warm"}')


def test_none_offers_nothing_and_checks_name_the_field() -> None:
    assert ToolCalling.build([WEATHER], "none").grammar(CallFormat(True, None, None)) is None
    assert not ToolCalling.build([WEATHER], "none").offered and ToolCalling.build([WEATHER]).choice == "auto"
    bad = FunctionTool(name="f", parameters={"type": "object", "properties": {"n": {"type": "strng"}}})
    with pytest.raises(ToolError) as e:
        ToolCalling.build([WEATHER, bad])
    assert e.value.param == "tools[1].function.parameters" and "strng" in str(e.value)
    with pytest.raises(ToolError) as e:
        ToolCalling.build([WEATHER], NamedTool("nope"))
    assert e.value.param == "tool_choice" and "nope" in str(e.value)
    with pytest.raises(ToolError) as e:
        ToolCalling.build([], "required")
    assert e.value.param == "tool_choice"
    with pytest.raises(ToolError) as e:
        ToolCalling.build([WEATHER, WEATHER], tool_path="tools[{i}]")
    assert e.value.param == "tools[1].name"


def test_generic_rendering_for_a_template_without_tools() -> None:
    """As llama.cpp and Ollama do for such templates: the tools in the system prompt, the history's calls
    as the text the model writes them in, tool results as one user turn."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [call, call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "tool", "content": "rain", "tool_call_id": "c1"},
    ]
    messages, tools = template_inputs(conversation, [WEATHER], CallFormat(False, None, None))
    assert tools is None and [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert (
        messages[0]["content"].startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in messages[0]["content"]
    )
    one = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert messages[2]["content"] == one + "\n" + one
    assert messages[3]["content"] == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
    assert parse_tool_calls(messages[2]["content"], NAMES).tool_calls[1].arguments_object() == {"city": "Paris"}
    rendered, tools = template_inputs(conversation, [WEATHER], CallFormat(True, 1, 2))  # the template's own
    assert rendered == conversation and tools == [WEATHER.template_tool()]


def test_schema_defs_move_to_the_call_root() -> None:
    """pydantic's schemas reference `#/$defs/...`: inside a call's arguments they must still resolve."""
    schema = {
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/Place"}},
        "required": ["home"],
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    }
    tool = FunctionTool(name="move", parameters=schema)
    tokenizer = Tokenizer.from_gguf(model_path(MODEL))
    ll = ll_tokenizer(MODEL, [151645])
    grammar = ToolCalling.build([tool], "required", False).grammar(call_format(tokenizer))
    assert grammar is not None
    good = '<tool_call>\n{"name": "move", "arguments": {"home": {"city": "Oslo"}}}\n</tool_call>'
    assert accepts((tokenizer, ll, call_format(tokenizer)), grammar, good)
    assert not accepts((tokenizer, ll, call_format(tokenizer)), grammar, good.replace('"city"', '"town"'))


def test_gemma_required_call_is_valid() -> None:
    """gemma-3-270m is a base model without a chat template (its chat is refused), so its `required`
    grammar, with the markers as plain text, runs on the real model through the offline engine."""
    model_path(GEMMA)
    llm = LLM(GEMMA, max_model_len=512, kv_cache_tokens=2048)
    calling = ToolCalling.build([WEATHER], "required", False)
    grammar = calling.grammar(call_format(llm.tokenizer))
    prompt = llm.tokenizer.encode("Question: what is the weather in Paris?\nAnswer with a tool call:\n")
    for temperature in (0.0, 1.0):
        out = llm.generate([prompt], SamplingParams(temperature=temperature, max_tokens=60, grammar=grammar))[0]
        assert out.finish_reason == FinishReason.STOP, out.text
        parsed = parse_tool_calls(out.text, {"get_weather"})
        assert parsed.content == "" and [c.name for c in parsed.tool_calls] == ["get_weather"], out.text
        jsonschema.validate(json.loads(parsed.tool_calls[0].arguments), WEATHER.parameters)
