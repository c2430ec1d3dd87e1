"""The scheduler on the real model, in process: priorities, aging, continuous batching, chunked
prefill, preemption, cancellation and deadlines."""

from __future__ import annotations

import time

import pytest

from tests.helpers import model_path
from wicore.config import SchedulerSettings
from wicore.engine.messages import EngineRequest, Priority, RequestOutput
from wicore.engine.model_runner import ModelRunner
from wicore.engine.sampling import SamplingParams
from wicore.engine.scheduler import Scheduler
from wicore.models.prepared import load_prepared
from wicore.models.transformer import Transformer
from wicore.tokenizer import Tokenizer

MODEL = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def parts() -> tuple[Transformer, Tokenizer]:
    config, meta, weights = load_prepared(model_path(MODEL))
    return Transformer(config, weights), Tokenizer.from_metadata(meta)


def make(parts, num_blocks: int = 256, **settings) -> Scheduler:
    model, tokenizer = parts
    return Scheduler(ModelRunner(model, num_blocks, 16), tokenizer, SchedulerSettings(**settings), 1024)


def request(
    sched: Scheduler, rid: str, text: str, max_tokens: int = 8, priority=Priority.NORMAL, **kw
) -> EngineRequest:
    ids = sched.tokenizer.encode(text)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return EngineRequest(
        rid, ids, params, priority, arrival=kw.get("arrival", time.time()), deadline=kw.get("deadline")
    )


def run_all(sched: Scheduler, limit: int = 500) -> dict[str, list[RequestOutput]]:
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(limit):
        if not sched.has_work():
            break
        for out in sched.step():
            outs.setdefault(out.request_id, []).append(out)
    assert not sched.has_work()
    return outs


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def first_output_step(sched: Scheduler, ids: set[str], limit: int = 500) -> list[str]:
    """Step until done; return request ids in the order their first token appeared."""
    order: list[str] = []
    for _ in range(limit):
        if not sched.has_work():
            break
        for out in sched.step():
            if out.request_id in ids and out.request_id not in order:
                order.append(out.request_id)
    return order


def test_urgent_request_queued_after_low_ones_starts_first(parts) -> None:
    sched = make(parts, max_concurrent=1, max_batch_size=1, aging_seconds=1000)
    sched.add(request(sched, "running", "Once upon a time", max_tokens=6))
    sched.step()  # the batch is now full
    for i in range(3):
        sched.add(request(sched, f"low{i}", "Hello", max_tokens=2, priority=Priority.LOW))
    sched.add(request(sched, "urgent", "Hello", max_tokens=2, priority=Priority.URGENT))
    sched.add(request(sched, "high", "Hello", max_tokens=2, priority=Priority.HIGH))
    order = first_output_step(sched, {"urgent", "high", "low0", "low1", "low2"})
    assert order == ["urgent", "high", "low0", "low1", "low2"]


def test_aging_lifts_a_long_waiting_low_request(parts) -> None:
    sched = make(parts, max_concurrent=1, max_batch_size=1, aging_seconds=1.0)
    now = time.time()
    # Waited 2.5 s at low: aged two levels, above a fresh normal request.
    sched.add(request(sched, "old-low", "Hello", max_tokens=2, priority=Priority.LOW, arrival=now - 2.5))
    sched.add(request(sched, "new-normal", "Hello", max_tokens=2, priority=Priority.NORMAL, arrival=now))
    assert first_output_step(sched, {"old-low", "new-normal"}) == ["old-low", "new-normal"]


def test_new_request_joins_the_running_batch(parts) -> None:
    sched = make(parts, max_concurrent=4)
    sched.add(request(sched, "a", "Once upon a time", max_tokens=20))
    for _ in range(4):
        sched.step()
    sched.add(request(sched, "b", "The capital of France is", max_tokens=3))
    joined = [o.request_id for o in sched.step()]
    assert {"a", "b"} <= set(joined)  # one forward pass served both
    assert len(sched.running) == 2
    outs = run_all(sched)
    assert outs["b"][-1].finish_reason == "length" and outs["a"][-1].finish_reason == "length"


def test_chunked_prefill_does_not_stall_decoding(parts) -> None:
    sched = make(parts, max_concurrent=4, max_batch_tokens=64)
    sched.add(request(sched, "decoding", "Once upon a time", max_tokens=30))
    sched.step()
    sched.add(request(sched, "long", "word " * 400, max_tokens=2))
    steps_with_token = 0
    for _ in range(6):  # ~400 prompt tokens at <= 63 per step: prefill spans these steps
        outs = sched.step()
        steps_with_token += any(o.request_id == "decoding" for o in outs)
        assert not any(o.request_id == "long" for o in outs)
    assert steps_with_token == 6
    run_all(sched)


def test_preemption_when_the_kv_cache_is_full_keeps_outputs_exact(parts) -> None:
    prompts = ["Once upon a time", "def quicksort(arr):", "The three primary colors are"]
    alone = []
    for i, p in enumerate(prompts):
        s = make(parts)
        s.add(request(s, str(i), p, max_tokens=40))
        alone.append(tokens(run_all(s)[str(i)]))
    tight = make(parts, num_blocks=8)  # 128 tokens of KV for three sequences of ~45
    for i, p in enumerate(prompts):
        tight.add(request(tight, str(i), p, max_tokens=40))
    outs = run_all(tight)
    assert tight.stats.preempted > 0
    assert [tokens(outs[str(i)]) for i in range(3)] == alone
    assert tight.blocks.num_free == tight.blocks.num_blocks


def test_cancel_frees_the_sequence_at_once(parts) -> None:
    sched = make(parts)
    sched.add(request(sched, "a", "Once upon a time", max_tokens=50))
    sched.add(request(sched, "b", "Hello", max_tokens=50))
    for _ in range(3):
        sched.step()
    used = sched.blocks.num_blocks - sched.blocks.num_free
    out = sched.cancel("a")
    assert out is not None and out.finish_reason == "abort"
    assert [i.request.request_id for i in sched.running] == ["b"]
    assert sched.blocks.num_blocks - sched.blocks.num_free < used
    assert sched.snapshot().cancelled == 1 and "a" not in sched.snapshot().active_request_ids
    assert sched.cancel("a") is None  # unknown ids are ignored
    sched.cancel("b")
    assert sched.blocks.num_free == sched.blocks.num_blocks


def test_deadline_ends_a_request_with_timeout(parts) -> None:
    sched = make(parts)
    sched.add(request(sched, "late", "Hello", max_tokens=50, arrival=time.time() - 31, deadline=time.time() - 1))
    [out] = sched.step()
    assert out.finish_reason == "timeout" and "timed out" in (out.error or "")
    assert not sched.has_work()


def test_prompt_too_long_is_refused(parts) -> None:
    sched = make(parts)
    req = request(sched, "big", "Hello")
    req.prompt_ids = list(range(100, 1200))
    out = sched.add(req)
    assert out is not None and out.finish_reason == "error" and "context" in (out.error or "")


def test_prefix_cache_reuses_a_shared_prompt_and_keeps_outputs_exact(parts) -> None:
    system = (
        "You are a careful assistant. You answer questions about programming languages in detail, "
        "with short examples, and you say so when you are not sure."
    )
    prompts = [system + "\nWhat is Rust?", system + "\nWhat is Go?"]
    alone = []
    for i, p in enumerate(prompts):
        s = make(parts, enable_prefix_caching=False)
        s.add(request(s, str(i), p, max_tokens=12))
        alone.append(tokens(run_all(s)[str(i)]))

    sched = make(parts)
    sched.add(request(sched, "0", prompts[0], max_tokens=12))
    first = run_all(sched)["0"]
    assert first[-1].cached_tokens == 0
    sched.add(request(sched, "1", prompts[1], max_tokens=12))
    second = run_all(sched)["1"]
    ids = [sched.tokenizer.encode(p) for p in prompts]
    common = next(i for i, (a, b) in enumerate(zip(*ids, strict=False)) if a != b)
    shared = common // 16 * 16  # full 16-token blocks of the common prefix
    assert shared >= 16 and second[-1].cached_tokens == shared
    assert [tokens(first), tokens(second)] == alone
    stats = sched.snapshot()
    assert stats.prefix_cache_hits == shared and stats.prefix_cache_queries == sum(map(len, ids))
    # The same prompt again: everything but the last block (whose last token must make logits).
    sched.add(request(sched, "again", prompts[1], max_tokens=12))
    again = run_all(sched)["again"]
    n = len(ids[1])
    assert again[-1].cached_tokens == (n - 1) // 16 * 16 and tokens(again) == alone[1]
    assert sched.blocks.num_free == sched.blocks.num_blocks  # cached blocks are free to evict
