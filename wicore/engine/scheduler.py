"""Priority scheduler with continuous batching, chunked prefill and KV preemption.

Each call to `step()` is one engine iteration:
1. end requests past their deadline;
2. admit waiting requests, highest effective priority first, while fewer than
   `max_concurrent` are admitted and the KV cache can hold their prompt;
   a request's priority rises one level for every `aging_seconds` it waits,
   so low priority is delayed, never starved;
3. build one batch of at most `max_batch_size` sequences and `max_batch_tokens`
   tokens: decodes first (one token each, so generation never stalls behind a
   long prompt), then prompt chunks in the remaining budget (chunked prefill);
   if the KV cache runs out, the lowest-priority, most recently admitted
   sequence is preempted (its blocks freed, recomputed later);
   an admitted request starts from the longest prefix of its tokens found in
   the prefix cache (KV blocks other requests computed), computing only the rest;
4. run it, and turn sampled tokens into RequestOutputs (text, stop strings,
   lengths); finished sequences free their KV at once.
New requests and cancellations are applied between steps by the worker, so a
request joins the running batch at the next step and a cancelled one is gone
within one step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from wicore.config import SchedulerSettings
from wicore.engine.block_manager import BlockManager
from wicore.engine.messages import EngineRequest, Priority, RequestOutput, SchedulerStats
from wicore.engine.model_runner import ModelRunner
from wicore.engine.sequence import FinishReason, Sequence
from wicore.engine.text_stream import TextStream
from wicore.tokenizer import Tokenizer


@dataclass(eq=False)  # identity semantics: lists of these are searched by `in`
class _Active:
    request: EngineRequest
    seq: Sequence
    text: TextStream
    admitted_at: float = 0.0
    sent_tokens: int = 0  # output tokens already reported
    stop_ids: frozenset[int] = field(default_factory=frozenset)

    def effective_priority(self, now: float, aging: float) -> int:
        waited = max(0.0, now - self.request.arrival)
        return min(int(Priority.URGENT), int(self.request.priority) + int(waited // aging))


class Scheduler:
    def __init__(
        self, runner: ModelRunner, tokenizer: Tokenizer, settings: SchedulerSettings, max_model_len: int
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.settings = settings
        self.max_model_len = max_model_len
        self.waiting: dict[Priority, deque[_Active]] = {p: deque() for p in Priority}
        self.running: list[_Active] = []
        self._by_id: dict[str, _Active] = {}
        self.stats = SchedulerStats(kv_blocks_total=runner.blocks.num_blocks)
        self._wait_time_sum = 0.0
        self._admitted = 0
        self._processing_time_sum = 0.0

    @property
    def blocks(self) -> BlockManager:
        return self.runner.blocks

    def has_work(self) -> bool:
        return bool(self.running) or any(self.waiting.values())

    # -- requests in and out ------------------------------------------------------------------

    def add(self, request: EngineRequest) -> RequestOutput | None:
        """Queue a request; returns an immediate error output if it can never run."""
        self.stats.total_requests += 1
        if len(request.prompt_ids) >= self.max_model_len or not request.prompt_ids:
            self.stats.failed += 1
            return RequestOutput(
                request.request_id, "", [], finish_reason="error",
                error=f"prompt of {len(request.prompt_ids)} tokens does not fit the context of {self.max_model_len}",
            )  # fmt: skip
        seq = Sequence(prompt_ids=list(request.prompt_ids), params=request.params)
        stop_ids = frozenset(request.params.stop_token_ids) | (
            frozenset() if request.params.ignore_eos else self.tokenizer.stop_token_ids
        )
        item = _Active(request, seq, TextStream(self.tokenizer, request.params.stop), stop_ids=stop_ids)
        self._by_id[request.request_id] = item
        self.waiting[request.priority].append(item)
        return None

    def cancel(self, request_id: str) -> RequestOutput | None:
        item = self._by_id.get(request_id)
        if item is None:
            return None
        self.stats.cancelled += 1
        return self._finish(item, FinishReason.ABORT)

    def abort_all(self, error: str) -> list[RequestOutput]:
        """End every request with an error (after an engine failure)."""
        outputs = []
        for item in list(self._by_id.values()):
            self.stats.failed += 1
            outputs.append(self._finish(item, "error", error))
        return outputs

    def _finish(self, item: _Active, reason: FinishReason | str, error: str | None = None) -> RequestOutput:
        seq = item.seq
        seq.finish_reason = reason if isinstance(reason, FinishReason) else FinishReason.ABORT
        self.blocks.release(seq.block_table)
        self._by_id.pop(item.request.request_id, None)
        if item in self.running:
            self.running.remove(item)
            self._processing_time_sum += time.time() - item.admitted_at
        else:
            self.waiting[item.request.priority].remove(item)
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            self.stats.completed += 1
        out = self._output(item)
        out.finish_reason = reason.value if isinstance(reason, FinishReason) else reason
        out.error = error
        return out

    def _output(self, item: _Active, text: str = "") -> RequestOutput:
        seq, start = item.seq, item.sent_tokens
        item.sent_tokens = len(seq.output_ids)
        return RequestOutput(
            request_id=item.request.request_id,
            text=text,
            token_ids=seq.output_ids[start:],
            logprobs=seq.output_logprobs[start:],
            top_logprobs=seq.output_top_logprobs[start:],
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.num_cached_prompt,
        )

    # -- one engine iteration -----------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        now = time.time()
        outputs = self._expire(now)
        self._admit(now)
        work = self._build_batch(now)
        if not work:
            return outputs
        sampled = self.runner.step([(item.seq, n) for item, n in work])
        done = {id(seq) for seq in sampled}
        for item, n in work:
            if n > 1:
                self.stats.prompt_tokens_total += n
            if id(item.seq) in done:
                self.stats.generation_tokens_total += 1
                outputs.append(self._on_token(item))
        return outputs

    def _expire(self, now: float) -> list[RequestOutput]:
        late = [i for i in self._by_id.values() if i.request.deadline is not None and now > i.request.deadline]
        outputs = []
        for item in late:
            self.stats.failed += 1
            timeout = item.request.deadline - item.request.arrival  # type: ignore[operator]
            outputs.append(self._finish(item, "timeout", f"request timed out after {timeout:g} s"))
        return outputs

    def _admit(self, now: float) -> None:
        aging = self.settings.aging_seconds
        while len(self.running) < self.settings.max_concurrent:
            queues = [q for q in self.waiting.values() if q]
            if not queues:
                return
            # Highest effective priority; among equals, the earliest arrival.
            best = max(queues, key=lambda q: (q[0].effective_priority(now, aging), -q[0].request.arrival))
            item = best[0]
            seq = item.seq
            cached = self.runner.reuse_prefix(seq)
            # Room for the whole prompt, so an admitted request is not stuck halfway through prefill.
            if not self.blocks.can_hold(seq.block_table, seq.num_tokens + 1):
                self.blocks.release(seq.block_table)
                seq.preempt()
                return
            best.popleft()
            self.stats.prefix_cache_queries += seq.num_tokens
            self.stats.prefix_cache_hits += cached
            item.admitted_at = now
            self._wait_time_sum += now - item.request.arrival
            self._admitted += 1
            self.running.append(item)

    def _build_batch(self, now: float) -> list[tuple[_Active, int]]:
        aging = self.settings.aging_seconds
        order = sorted(self.running, key=lambda i: (-i.effective_priority(now, aging), i.admitted_at))
        decodes = [i for i in order if not i.seq.is_prefilling]
        prefills = [i for i in order if i.seq.is_prefilling]
        work: list[tuple[_Active, int]] = []
        budget = self.settings.max_batch_tokens
        for item in decodes + prefills:
            if len(work) >= self.settings.max_batch_size or budget <= 0:
                break
            n = min(item.seq.num_pending, budget)
            if not self._reserve(item, n, work, order):
                continue
            work.append((item, n))
            budget -= n
        return work

    def _reserve(self, item: _Active, n: int, work: list[tuple[_Active, int]], order: list[_Active]) -> bool:
        """Grow the sequence's KV blocks for n more tokens, preempting others if the cache is full."""
        need = item.seq.num_computed + n
        while not self.blocks.can_hold(item.seq.block_table, need):
            scheduled = {id(w) for w, _ in work} | {id(item)}
            victims = [v for v in reversed(order) if id(v) not in scheduled and v.seq.block_table]
            if not victims:
                return False
            self._preempt(victims[0])
        self.blocks.grow(item.seq.block_table, need)
        return True

    def _preempt(self, item: _Active) -> None:
        self.blocks.release(item.seq.block_table)
        item.seq.preempt()
        self.running.remove(item)
        self.waiting[item.request.priority].appendleft(item)
        self.stats.preempted += 1

    def _on_token(self, item: _Active) -> RequestOutput:
        seq, params = item.seq, item.seq.params
        token = seq.output_ids[-1]
        if token in item.stop_ids:
            return self._finish_with_text(item, FinishReason.STOP, item.text.flush())
        text = item.text.push(token)
        if item.text.stopped:
            return self._finish_with_text(item, FinishReason.STOP, text)
        if len(seq.output_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return self._finish_with_text(item, FinishReason.LENGTH, text + item.text.flush())
        return self._output(item, text)

    def _finish_with_text(self, item: _Active, reason: FinishReason, text: str) -> RequestOutput:
        out = self._finish(item, reason)
        out.text = text
        return out

    def snapshot(self) -> SchedulerStats:
        s = self.stats
        s.waiting_by_priority = {p.name.lower(): len(q) for p, q in self.waiting.items()}
        s.active = len(self.running)
        s.kv_blocks_free = self.blocks.num_free
        s.avg_wait_time = self._wait_time_sum / self._admitted if self._admitted else 0.0
        finished = s.completed + s.failed + s.cancelled
        s.avg_processing_time = self._processing_time_sum / finished if finished else 0.0
        s.active_request_ids = [i.request.request_id for i in self.running]
        return s
