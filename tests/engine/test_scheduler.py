"""The scheduler on the real model, in process: priorities, aging, continuous batching, chunked
prefill, preemption, cancellation and deadlines."""

from __future__ import annotations

import time

from tests.helpers import model_path
from wicore.config import SchedulerSettings
from wicore.engine.core import EngineConfig, EngineCore
from wicore.engine.request import EngineOutput, EngineRequest, Priority
from wicore.engine.sampling import SamplingParams
from wicore.models.transformer import Transformer
from wicore.tokenizer import Tokenizer

MODEL = "qwen2.5-coder-0.5b-instruct"  # the `qwen` fixture's
Parts = tuple[Transformer, Tokenizer]  # the `qwen` fixture


def make(parts: Parts, num_blocks: int = 256, **settings) -> EngineCore:
    model, tokenizer = parts
    config = EngineConfig(model_path(MODEL), 1024, num_blocks, SchedulerSettings(**settings), tokenizer.stop_token_ids)
    return EngineCore(config, model)


def request(parts: Parts, rid: str, text: str, max_tokens: int = 8, priority=Priority.NORMAL, **kw) -> EngineRequest:
    ids = parts[1].encode(text)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return EngineRequest(
        rid, ids, params, priority, arrival=kw.get("arrival", time.time()), deadline=kw.get("deadline")
    )


def run_all(core: EngineCore, limit: int = 500) -> dict[str, list[EngineOutput]]:
    outs: dict[str, list[EngineOutput]] = {}
    for _ in range(limit):
        if not core.scheduler.has_work():
            break
        for out in core.step():
            outs.setdefault(out.request_id, []).append(out)
    assert not core.scheduler.has_work()
    return outs


def tokens(outs: list[EngineOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def first_output_step(core: EngineCore, ids: set[str], limit: int = 500) -> list[str]:
    """Step until done; return request ids in the order their first token appeared."""
    order: list[str] = []
    for _ in range(limit):
        if not core.scheduler.has_work():
            break
        for out in core.step():
            if out.request_id in ids and out.request_id not in order:
                order.append(out.request_id)
    return order


def test_urgent_request_queued_after_low_ones_starts_first(qwen: Parts) -> None:
    core = make(qwen, max_concurrent=1, max_batch_size=1, aging_seconds=1000)
    sched = core.scheduler
    sched.add(request(qwen, "running", "Once upon a time", max_tokens=6))
    core.step()  # the batch is now full
    for i in range(3):
        sched.add(request(qwen, f"low{i}", "Hello", max_tokens=2, priority=Priority.LOW))
    sched.add(request(qwen, "urgent", "Hello", max_tokens=2, priority=Priority.URGENT))
    sched.add(request(qwen, "high", "Hello", max_tokens=2, priority=Priority.HIGH))
    order = first_output_step(core, {"urgent", "high", "low0", "low1", "low2"})
    assert order == ["urgent", "high", "low0", "low1", "low2"]


def test_aging_lifts_a_long_waiting_low_request(qwen: Parts) -> None:
    core = make(qwen, max_concurrent=1, max_batch_size=1, aging_seconds=1.0)
    sched = core.scheduler
    now = time.time()
    # Waited 2.5 s at low: aged two levels, above a fresh normal request.
    sched.add(request(qwen, "old-low", "Hello", max_tokens=2, priority=Priority.LOW, arrival=now - 2.5))
    sched.add(request(qwen, "new-normal", "Hello", max_tokens=2, priority=Priority.NORMAL, arrival=now))
    assert first_output_step(core, {"old-low", "new-normal"}) == ["old-low", "new-normal"]


def test_new_request_joins_the_running_batch(qwen: Parts) -> None:
    core = make(qwen, max_concurrent=4)
    sched = core.scheduler
    sched.add(request(qwen, "a", "Once upon a time", max_tokens=20))
    for _ in range(4):
        core.step()
    sched.add(request(qwen, "b", "The capital of France is", max_tokens=3))
    joined = [o.request_id for o in core.step()]
    assert {"a", "b"} <= set(joined)  # one forward pass served both
    assert len(sched.running) == 2
    outs = run_all(core)
    assert outs["b"][-1].finish_reason == "length" and outs["a"][-1].finish_reason == "length"


def test_chunked_prefill_does_not_stall_decoding(qwen: Parts) -> None:
    core = make(qwen, max_concurrent=4, max_batch_tokens=64)
    sched = core.scheduler
    sched.add(request(qwen, "decoding", "Once upon a time", max_tokens=30))
    core.step()
    sched.add(request(qwen, "long", "word " * 400, max_tokens=2))
    steps_with_token = 0
    for _ in range(6):  # ~400 prompt tokens at <= 63 per step: prefill spans these steps
        outs = core.step()
        steps_with_token += any(o.request_id == "decoding" for o in outs)
        assert not any(o.request_id == "long" for o in outs)
    assert steps_with_token == 6
    run_all(core)


def test_preemption_when_the_kv_cache_is_full_keeps_outputs_exact(qwen: Parts) -> None:
    prompts = ["Once upon a time", "def quicksort(arr):", "The three primary colors are"]
    alone = []
    for i, p in enumerate(prompts):
        s = make(qwen)
        s.scheduler.add(request(qwen, str(i), p, max_tokens=40))
        alone.append(tokens(run_all(s)[str(i)]))
    tight = make(qwen, num_blocks=8)  # 128 tokens of KV for three sequences of ~45
    for i, p in enumerate(prompts):
        tight.scheduler.add(request(qwen, str(i), p, max_tokens=40))
    outs = run_all(tight)
    assert tight.scheduler.stats.preempted > 0
    assert [tokens(outs[str(i)]) for i in range(3)] == alone
    assert tight.scheduler.blocks.num_free == tight.scheduler.blocks.num_blocks


def test_cancel_frees_the_sequence_at_once(qwen: Parts) -> None:
    core = make(qwen)
    sched = core.scheduler
    sched.add(request(qwen, "a", "Once upon a time", max_tokens=50))
    sched.add(request(qwen, "b", "Hello", max_tokens=50))
    for _ in range(3):
        core.step()
    used = sched.blocks.num_blocks - sched.blocks.num_free
    out = sched.cancel("a")
    assert out is not None and out.finish_reason == "abort"
    assert [i.request.request_id for i in sched.running] == ["b"]
    assert sched.blocks.num_blocks - sched.blocks.num_free < used
    assert sched.snapshot().cancelled == 1 and "a" not in sched.snapshot().active_request_ids
    assert sched.cancel("a") is None  # unknown ids are ignored
    sched.cancel("b")
    assert sched.blocks.num_free == sched.blocks.num_blocks


def test_deadline_ends_a_request_with_timeout(qwen: Parts) -> None:
    core = make(qwen)
    sched = core.scheduler
    sched.add(request(qwen, "late", "Hello", max_tokens=50, arrival=time.time() - 31, deadline=time.time() - 1))
    [out] = core.step()
    assert out.finish_reason == "timeout" and "timed out" in (out.error or "")
    assert not sched.has_work()


def test_prompt_too_long_is_refused(qwen: Parts) -> None:
    core = make(qwen)
    sched = core.scheduler
    req = request(qwen, "big", "Hello")
    req.prompt_ids = list(range(100, 1200))
    out = sched.add(req)
    assert out is not None and out.finish_reason == "error" and "context" in (out.error or "")


def test_prefix_cache_reuses_a_shared_prompt_and_keeps_outputs_exact(qwen: Parts) -> None:
    system = (
        "You are a careful assistant. You answer questions about programming languages in detail, "
        "with short examples, and you say so when you are not sure."
    )
    prompts = [system + "\nWhat is Rust?", system + "\nWhat is Go?"]
    alone = []
    for i, p in enumerate(prompts):
        s = make(qwen, enable_prefix_caching=False)
        s.scheduler.add(request(qwen, str(i), p, max_tokens=12))
        alone.append(tokens(run_all(s)[str(i)]))

    core = make(qwen)
    sched = core.scheduler
    sched.add(request(qwen, "0", prompts[0], max_tokens=12))
    first = run_all(core)["0"]
    assert first[-1].cached_tokens == 0
    sched.add(request(qwen, "1", prompts[1], max_tokens=12))
    second = run_all(core)["1"]
    ids = [qwen[1].encode(p) for p in prompts]
    common = next(i for i, (a, b) in enumerate(zip(*ids, strict=False)) if a != b)
    shared = common // 16 * 16  # full 16-token blocks of the common prefix
    assert shared >= 16 and second[-1].cached_tokens == shared
    assert [tokens(first), tokens(second)] == alone
    stats = sched.snapshot()
    assert stats.prefix_cache_hits == shared and stats.prefix_cache_queries == sum(map(len, ids))
    # The same prompt again: everything but the last block (whose last token must make logits).
    sched.add(request(qwen, "again", prompts[1], max_tokens=12))
    again = run_all(core)["again"]
    n = len(ids[1])
    assert again[-1].cached_tokens == (n - 1) // 16 * 16 and tokens(again) == alone[1]
    assert sched.blocks.num_free == sched.blocks.num_blocks  # cached blocks are free to evict
