"""Grammar-constrained decoding on the real model: the output always follows the request's grammar."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from tests.helpers import model_path
from wicore.engine.grammar import json_schema_grammar, lark_grammar, regex_grammar
from wicore.engine.llm import LLM
from wicore.engine.request import EngineRequest, FinishReason
from wicore.engine.sampling import SamplingParams

MODEL = "qwen2.5-coder-0.5b-instruct"

# Bounded schemas (enums, short strings, bounded numbers and arrays): every output that follows one
# fits in MAX_TOKENS, so each request must end by itself (finish "stop") with valid JSON.
SCHEMAS: list[dict] = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
        "required": ["color", "ok"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
            "count": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["tags", "count"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -99, "maximum": 99},
                    "y": {"type": "integer", "minimum": -99, "maximum": 99},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            },
            "label": {"type": "string", "maxLength": 6},
        },
        "required": ["point", "label"],
        "additionalProperties": False,
    },
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 50},
        "minItems": 2,
        "maxItems": 4,
    },
    {
        "type": "object",
        "properties": {
            "status": {"enum": ["open", "closed"]},
            "owner": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}, "admin": {"type": "boolean"}},
                "required": ["id", "admin"],
                "additionalProperties": False,
            },
            "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 5}]},
        },
        "required": ["status", "owner", "note"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
        "required": ["items"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "rank": {"type": "integer", "minimum": 1}},
        "required": ["city"],
        "additionalProperties": False,
    },
]
MAX_TOKENS = 64
PER_SCHEMA = 25  # 8 schemas x 25 = 200 requests


@pytest.fixture(scope="module")
def llm() -> LLM:
    model_path(MODEL)
    return LLM(MODEL, max_model_len=1024, kv_cache_tokens=16384, max_num_seqs=32)


def chat(llm: LLM, text: str) -> list[int]:
    return llm.encode_chat([{"role": "user", "content": text}])


def test_json_schema_output_parses_and_validates(llm: LLM) -> None:
    schema = SCHEMAS[0]
    grammar = json_schema_grammar(schema, "response_format")
    for temperature in (0.0, 1.0):
        params = SamplingParams(temperature=temperature, max_tokens=MAX_TOKENS, grammar=grammar)
        out = llm.generate([chat(llm, "Describe a person as JSON.")], params)[0]
        assert out.finish_reason == FinishReason.STOP
        jsonschema.validate(json.loads(out.text), schema)


def test_constrained_and_free_rows_share_a_batch(llm: LLM) -> None:
    """A constrained request changes nothing for the unconstrained ones sampled beside it."""
    prompt = chat(llm, "Write a haiku about the sea.")
    free = SamplingParams(temperature=0.0, max_tokens=16)
    alone = llm.generate([prompt], free)[0].token_ids
    regex = regex_grammar(r"[0-9]{3}-[a-z]{2}", "grammar")
    constrained = SamplingParams(temperature=1.0, max_tokens=16, grammar=regex)
    outputs: dict[str, list[int]] = {"free": [], "constrained": []}
    for request_id, params in (("free", free), ("constrained", constrained)):
        assert llm.core.scheduler.add(EngineRequest(request_id, prompt, params, arrival=time.time())) is None
    running = set(outputs)
    while running:
        for out in llm.core.step():
            outputs[out.request_id] += out.token_ids
            if out.finish_reason is not None:
                running.discard(out.request_id)
    free_ids, constrained_ids = outputs["free"], outputs["constrained"]
    assert free_ids == alone
    text = llm.tokenizer.decode(constrained_ids)
    assert len(text) == 6 and text[3] == "-" and text[:3].isdigit() and text[4:].isalpha()


def test_lark_grammar(llm: LLM) -> None:
    grammar = lark_grammar('start: "yes" | "no"', "grammar")
    out = llm.generate([chat(llm, "Is the sky blue?")], SamplingParams(temperature=1.0, max_tokens=8, grammar=grammar))
    assert out[0].text in ("yes", "no") and out[0].finish_reason == FinishReason.STOP
    # The grammar's last token ends the sequence: no step is spent drawing end-of-sequence.
    assert llm.tokenizer.decode(out[0].token_ids) == out[0].text
    assert not set(out[0].token_ids) & llm.tokenizer.stop_token_ids


def test_preemption_keeps_the_grammar_state() -> None:
    """A KV cache too small for the batch preempts and recomputes constrained sequences: the matcher
    consumed each generated token once, so the outputs equal those of a roomy cache."""
    grammar = json_schema_grammar(SCHEMAS[3], "response_format")
    params = SamplingParams(temperature=0.0, max_tokens=40, grammar=grammar)
    prompts = ["Give a point as JSON:", "A labelled point in JSON:", "JSON point please:"]
    roomy = LLM(MODEL, max_model_len=64, kv_cache_tokens=1024)
    alone = [roomy.generate([p], params)[0] for p in prompts]
    small = LLM(MODEL, max_model_len=64, kv_cache_tokens=64)  # 4 blocks for three sequences of ~30 tokens
    together = small.generate(prompts, params)
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert small.core.scheduler.snapshot().preempted > 0
    for c in together:
        jsonschema.validate(json.loads(c.text), SCHEMAS[3])


def test_many_schema_constrained_requests_all_validate(llm: LLM) -> None:
    """The guarantee: 200 requests over varied schemas, sampled at temperature 1 with no truncation,
    all end by themselves with JSON that validates."""
    prompt = chat(llm, "Reply with a JSON value.")
    start = time.perf_counter()
    failures = []
    for schema in SCHEMAS:
        params = SamplingParams(
            temperature=1.0, top_k=0, top_p=1.0, max_tokens=MAX_TOKENS, grammar=json_schema_grammar(schema, "s")
        )
        for out in llm.generate([prompt] * PER_SCHEMA, params):
            try:
                assert out.finish_reason == FinishReason.STOP, out.finish_reason
                jsonschema.validate(json.loads(out.text), schema)
            except (AssertionError, ValueError, jsonschema.ValidationError) as e:
                failures.append((schema, out.text, repr(e)))
    print(f"{len(SCHEMAS) * PER_SCHEMA} constrained requests in {time.perf_counter() - start:.1f} s")
    assert not failures, failures[:3]
