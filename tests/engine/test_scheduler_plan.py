"""The scheduler's plans with a fake runner (no model, no kernels), in the style of vLLM's
test_scheduler.py: priorities, aging, limits, chunked prefill, preemption when blocks run out,
cancellation, deadlines, stop tokens, lengths and the prefix cache."""

from __future__ import annotations

import time

from wicore.config import SchedulerSettings
from wicore.engine.block_manager import BlockManager
from wicore.engine.model_runner import Sample
from wicore.engine.request import EngineOutput, EngineRequest, FinishReason, Priority
from wicore.engine.sampling import SamplingParams
from wicore.engine.scheduler import Batch, Scheduler
from wicore.engine.sequence import Sequence

EOS = 7
FAKE_LOGPROB = -0.25


def fake_token(seq: Sequence) -> int:
    """What the fake model says next: the first prompt token plus the count generated so far."""
    return seq.prompt_ids[0] + len(seq.output_ids)


def fake_execute(work: list[tuple[Sequence, int]]) -> list[Sample]:
    """The runner's contract: one Sample per sequence whose tokens all ran, in work order."""
    return [Sample(fake_token(seq), FAKE_LOGPROB, None) for seq, n in work if seq.num_computed + n == seq.num_tokens]


def make(num_blocks: int = 64, block_size: int = 4, max_model_len: int = 256, **settings) -> Scheduler:
    settings.setdefault("max_batch_tokens", 16)
    blocks = BlockManager(num_blocks, block_size, settings.get("enable_prefix_caching", True))
    return Scheduler(blocks, SchedulerSettings(**settings), max_model_len, frozenset({EOS}))


def request(
    rid: str, prompt: list[int], max_tokens: int = 4, priority: Priority = Priority.NORMAL, **kw
) -> EngineRequest:
    params = SamplingParams(
        temperature=0.0,
        max_tokens=max_tokens,
        ignore_eos=kw.pop("ignore_eos", True),
        stop_token_ids=kw.pop("stop_token_ids", ()),
    )
    return EngineRequest(rid, prompt, params, priority, arrival=kw.pop("arrival", time.time()), **kw)


def step(sched: Scheduler) -> tuple[Batch, list[EngineOutput]]:
    batch = sched.schedule()
    return batch, sched.update(batch, fake_execute(batch.work))


def planned(batch: Batch) -> dict[str, int]:
    return {seq.request_id: n for seq, n in batch.work}


def run_all(sched: Scheduler, limit: int = 500) -> dict[str, list[EngineOutput]]:
    outs: dict[str, list[EngineOutput]] = {}
    for _ in range(limit):
        if not sched.has_work():
            break
        for out in step(sched)[1]:
            outs.setdefault(out.request_id, []).append(out)
    assert not sched.has_work()
    return outs


def tokens(outs: list[EngineOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def test_highest_priority_is_admitted_first_then_first_come_first_served() -> None:
    sched = make(max_concurrent=1, aging_seconds=1000)
    now = time.time()
    sched.add(request("low", [10, 11], priority=Priority.LOW, arrival=now - 3))
    sched.add(request("normal-early", [30, 31], arrival=now - 2))
    sched.add(request("normal-late", [20, 21], arrival=now - 1))
    sched.add(request("urgent", [40, 41], priority=Priority.URGENT, arrival=now))
    order = []
    for _ in range(50):
        batch, _ = step(sched)
        order += [rid for rid in planned(batch) if rid not in order]
    assert order == ["urgent", "normal-early", "normal-late", "low"]


def test_aging_lifts_a_long_waiting_low_request() -> None:
    sched = make(max_concurrent=1, aging_seconds=1.0)
    now = time.time()
    sched.add(request("new-normal", [10, 11], arrival=now))
    sched.add(request("old-low", [20, 21], priority=Priority.LOW, arrival=now - 2.5))  # aged to high
    batch, _ = step(sched)
    assert list(planned(batch)) == ["old-low"]
    assert sched.snapshot().waiting_by_priority == {"low": 0, "normal": 1, "high": 0, "urgent": 0}


def test_limits_on_admitted_sequences_and_batch_size() -> None:
    sched = make(max_concurrent=3, max_batch_size=2)
    for i in range(4):
        sched.add(request(str(i), [10 * i + 1, 2], max_tokens=8))
    batch, first = step(sched)
    assert len(sched.running) == 3 and len(batch.work) == 2  # the fourth waits, one admitted is left out
    assert sched.snapshot().waiting_by_priority["normal"] == 1
    outs = run_all(sched)
    for out in first:
        outs[out.request_id].insert(0, out)
    assert [tokens(outs[str(i)]) for i in range(4)] == [[10 * i + 1 + k for k in range(8)] for i in range(4)]


def test_chunked_prefill_runs_decodes_first_within_the_token_budget() -> None:
    sched = make(max_batch_tokens=16)
    sched.add(request("decoding", [100, 1, 2], max_tokens=20))
    step(sched)
    sched.add(request("long", [200] + list(range(1, 60)), max_tokens=2))  # 60 prompt tokens
    plans = [list(planned(step(sched)[0]).items()) for _ in range(5)]
    # The decode's one token first, then 15 prompt tokens a step; then both decode.
    assert plans == [[("decoding", 1), ("long", 15)]] * 4 + [[("decoding", 1), ("long", 1)]]


def test_preemption_frees_the_newest_lowest_priority_sequence_and_recomputes_it() -> None:
    # 6 blocks of 4 tokens: two sequences of 6 prompt + 10 output tokens (4 blocks each) cannot both fit.
    # No prefix cache: a preempted sequence then recomputes all its tokens.
    sched = make(num_blocks=6, max_batch_tokens=32, enable_prefix_caching=False)
    sched.add(request("high", [100, 1, 2, 3, 4, 5], max_tokens=10, priority=Priority.HIGH))
    sched.add(request("normal", [200, 1, 2, 3, 4, 5], max_tokens=10))
    outs: dict[str, list[EngineOutput]] = {}
    recomputed = []
    for _ in range(100):
        if not sched.has_work():
            break
        batch, step_outs = step(sched)
        recomputed += [rid for seq, n in batch.work if n > 1 and (rid := seq.request_id) in outs]
        for out in step_outs:
            outs.setdefault(out.request_id, []).append(out)
    assert sched.stats.preempted >= 1
    assert recomputed and set(recomputed) == {"normal"}  # the high-priority sequence was never evicted
    assert tokens(outs["high"]) == [100 + k for k in range(10)]
    assert tokens(outs["normal"]) == [200 + k for k in range(10)]  # recomputed, not restarted
    assert outs["normal"][-1].finish_reason == FinishReason.LENGTH
    assert sched.blocks.num_free == sched.blocks.num_blocks


def test_a_request_waits_while_the_kv_cache_cannot_hold_its_prompt() -> None:
    sched = make(num_blocks=4, max_batch_tokens=32)
    sched.add(request("first", [100] + [1] * 10, max_tokens=4))  # 3 blocks, then a 4th while decoding
    step(sched)
    sched.add(request("second", [200] + [1] * 10, max_tokens=4))
    batch, _ = step(sched)
    assert list(planned(batch)) == ["first"] and [s.request_id for s in sched.running] == ["first"]
    outs = run_all(sched)
    assert outs["second"][-1].finish_reason == FinishReason.LENGTH


def test_cancel_frees_the_blocks_and_counts_by_reason() -> None:
    sched = make(max_concurrent=2)
    sched.add(request("a", [10, 1, 2, 3, 4, 5], max_tokens=50))
    sched.add(request("b", [20, 1], max_tokens=50))
    sched.add(request("queued", [30, 1], max_tokens=50, priority=Priority.LOW))
    step(sched)
    used = sched.blocks.num_blocks - sched.blocks.num_free
    out = sched.cancel("a")
    assert out is not None and out.finish_reason == FinishReason.ABORT and out.token_ids == []
    assert sched.blocks.num_blocks - sched.blocks.num_free < used
    assert sched.cancel("a") is None  # unknown ids are ignored
    stopped = sched.cancel("b", FinishReason.STOP)  # a stop string found outside the engine
    assert stopped is not None and stopped.finish_reason == FinishReason.STOP
    sched.cancel("queued")
    stats = sched.snapshot()
    assert (stats.cancelled, stats.completed, stats.active) == (2, 1, 0)
    assert not sched.has_work() and sched.blocks.num_free == sched.blocks.num_blocks


def test_stop_token_length_and_context_end_a_sequence() -> None:
    sched = make(max_model_len=12)
    sched.add(request("eos", [5, 1], max_tokens=10, ignore_eos=False))  # 5, 6, then EOS
    sched.add(request("ignore-eos", [5, 1], max_tokens=4))
    sched.add(request("own-stop", [50, 1], max_tokens=10, stop_token_ids=(52,)))
    sched.add(request("context", [60] + [1] * 8, max_tokens=10))  # 9 prompt tokens, room for 3 more
    outs = run_all(sched)
    assert tokens(outs["eos"]) == [5, 6, EOS] and outs["eos"][-1].finish_reason == FinishReason.STOP
    assert tokens(outs["ignore-eos"]) == [5, 6, 7, 8] and outs["ignore-eos"][-1].finish_reason == "length"
    assert tokens(outs["own-stop"]) == [50, 51, 52] and outs["own-stop"][-1].finish_reason == FinishReason.STOP
    assert tokens(outs["context"]) == [60, 61, 62] and outs["context"][-1].finish_reason == FinishReason.LENGTH
    last = outs["eos"][-1]
    assert (last.prompt_tokens, last.completion_tokens, last.logprobs) == (2, 3, [FAKE_LOGPROB])


def test_deadline_and_refused_prompts() -> None:
    sched = make(max_model_len=8)
    now = time.time()
    sched.add(request("late", [10, 1], arrival=now - 31, deadline=now - 1))
    [out] = step(sched)[1]
    assert out.finish_reason == FinishReason.TIMEOUT and "timed out after 30 s" in (out.error or "")
    for prompt in ([], list(range(8))):
        refused = sched.add(request("bad", prompt))
        assert refused is not None and refused.finish_reason == FinishReason.ERROR
        assert "context" in (refused.error or "")
    assert not sched.has_work() and sched.snapshot().failed == 3


def test_prefix_cache_serves_a_repeated_prompt_but_its_last_token() -> None:
    prompt = [100] + list(range(1, 10))  # 10 tokens: two full blocks of 4
    sched = make()
    sched.add(request("first", prompt))
    first = run_all(sched)["first"]
    sched.add(request("again", prompt))
    again = run_all(sched)["again"]
    assert first[-1].cached_tokens == 0 and again[-1].cached_tokens == 8
    assert tokens(again) == tokens(first)
    stats = sched.snapshot()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (20, 8)
    no_cache = make(enable_prefix_caching=False)
    no_cache.add(request("first", prompt))
    run_all(no_cache)
    no_cache.add(request("again", prompt))
    assert run_all(no_cache)["again"][-1].cached_tokens == 0
