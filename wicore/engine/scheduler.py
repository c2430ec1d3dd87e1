"""Priority scheduler with continuous batching, chunked prefill, KV preemption and prefix caching.

The scheduler plans, the model runner executes.  Each engine iteration is
`batch = schedule()`, the runner's forward pass over `batch.work`, then
`update(batch, samples)`:
1. `schedule()` ends requests past their deadline;
2. admits waiting requests, highest effective priority first, while fewer than
   `max_concurrent` are admitted and the KV cache can hold their prompt;
   a request's priority rises one level for every `aging_seconds` it waits,
   so low priority is delayed, never starved; an admitted request starts from
   the longest prefix of its tokens found in the prefix cache (KV blocks other
   requests computed), computing only the rest;
3. builds one batch of at most `max_batch_size` sequences and `max_batch_tokens`
   tokens: decodes first (one token each, so generation never stalls behind a
   long prompt), then prompt chunks in the remaining budget (chunked prefill);
   if the KV cache runs out, the lowest-priority, most recently admitted
   sequence is preempted (its blocks freed, recomputed later);
4. `update()` records what ran (newly full blocks join the prefix cache), appends
   the sampled tokens and turns them into EngineOutputs, ending sequences at a
   stop token, `max_tokens` or the context length; finished sequences free their
   KV at once.
It owns the KV block manager: no other part of the engine allocates or frees blocks.
Stop strings are text, so they are matched outside the engine, which then cancels
the request (`cancel(id, FinishReason.STOP)`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from wicore.config import SchedulerSettings
from wicore.engine.block_manager import BlockManager, chain_hashes
from wicore.engine.messages import SchedulerStats
from wicore.engine.model_runner import PromptScores, Sample
from wicore.engine.request import EngineOutput, EngineRequest, FinishReason, Priority
from wicore.engine.sequence import Sequence


@dataclass
class Batch:
    """One step's plan: how many not-yet-computed tokens of each sequence to run."""

    work: list[tuple[Sequence, int]] = field(default_factory=list)
    finished: list[EngineOutput] = field(default_factory=list)  # requests ended while planning (deadlines)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.work)

    @property
    def is_prefill(self) -> bool:
        """True when some sequence runs more than its newest token (a prompt chunk or a recompute)."""
        return any(seq.is_prefilling for seq, _ in self.work)


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        settings: SchedulerSettings,
        max_model_len: int,
        eos_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.blocks = blocks
        self.settings = settings
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.waiting: dict[Priority, deque[Sequence]] = {p: deque() for p in Priority}
        self.running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self.stats = SchedulerStats(kv_blocks_total=blocks.num_blocks)
        self._wait_time_sum = 0.0
        self._admitted = 0
        self._processing_time_sum = 0.0

    def has_work(self) -> bool:
        return bool(self.running) or any(self.waiting.values())

    # -- requests in and out ------------------------------------------------------------------

    def add(self, request: EngineRequest) -> EngineOutput | None:
        """Queue a request; returns an immediate error output if it can never run."""
        self.stats.total_requests += 1
        if len(request.prompt_ids) >= self.max_model_len or not request.prompt_ids:
            self.stats.failed += 1
            return EngineOutput(
                request.request_id, [], finish_reason=FinishReason.ERROR,
                error=f"prompt of {len(request.prompt_ids)} tokens does not fit the context of {self.max_model_len}",
            )  # fmt: skip
        params = request.params
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_token_ids)
        seq = Sequence(request, stop_ids)
        self._by_id[request.request_id] = seq
        self.waiting[request.priority].append(seq)
        return None

    def cancel(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> EngineOutput | None:
        """End a request early: ABORT when its caller gave up, STOP when its text hit a stop string."""
        seq = self._by_id.get(request_id)
        if seq is None:
            return None
        if reason is FinishReason.ABORT:
            self.stats.cancelled += 1
        return self._finish(seq, reason)

    def abort_all(self, error: str) -> list[EngineOutput]:
        """End every request with an error (after an engine failure)."""
        outputs = []
        for seq in list(self._by_id.values()):
            self.stats.failed += 1
            outputs.append(self._finish(seq, FinishReason.ERROR, error))
        return outputs

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> EngineOutput:
        self.blocks.release(seq.block_table)
        self._by_id.pop(seq.request_id, None)
        if seq in self.running:
            self.running.remove(seq)
            self._processing_time_sum += time.time() - seq.admitted_at
        else:
            self.waiting[seq.request.priority].remove(seq)
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            self.stats.completed += 1
        out = self._output(seq)
        out.finish_reason = reason
        out.error = error
        return out

    def _output(self, seq: Sequence) -> EngineOutput:
        start = seq.sent_tokens
        seq.sent_tokens = len(seq.output_ids)
        first = start == 0 and seq.params.prompt_logprobs is not None
        return EngineOutput(
            prompt_logprobs=[None, *seq.prompt_logprobs] if first else [],
            prompt_top_logprobs=[[], *seq.prompt_top_logprobs] if first else [],
            request_id=seq.request_id,
            token_ids=seq.output_ids[start:],
            logprobs=seq.output_logprobs[start:],
            top_logprobs=seq.output_top_logprobs[start:],
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.num_cached_prompt,
        )

    # -- planning a step ----------------------------------------------------------------------

    def schedule(self) -> Batch:
        now = time.time()
        finished = self._expire(now)
        self._admit(now)
        return Batch(self._build_batch(now), finished)

    def _expire(self, now: float) -> list[EngineOutput]:
        outputs = []
        for seq in list(self._by_id.values()):
            deadline = seq.request.deadline
            if deadline is not None and now > deadline:
                self.stats.failed += 1
                error = f"request timed out after {deadline - seq.request.arrival:g} s"
                outputs.append(self._finish(seq, FinishReason.TIMEOUT, error))
        return outputs

    def _admit(self, now: float) -> None:
        aging = self.settings.aging_seconds
        while len(self.running) < self.settings.max_concurrent:
            queues = [q for q in self.waiting.values() if q]
            if not queues:
                return
            # Highest effective priority; among equals, the earliest arrival.
            best = max(queues, key=lambda q: (q[0].effective_priority(now, aging), -q[0].request.arrival))
            seq = best[0]
            cached = self._reuse_prefix(seq)
            # Room for the whole prompt, so an admitted request is not stuck halfway through prefill.
            if not self.blocks.can_hold(seq.block_table, seq.num_tokens + 1):
                self.blocks.release(seq.block_table)
                seq.preempt()
                return
            best.popleft()
            self.stats.prefix_cache_queries += seq.num_tokens
            self.stats.prefix_cache_hits += cached
            seq.admitted_at = now
            self._wait_time_sum += now - seq.request.arrival
            self._admitted += 1
            self.running.append(seq)

    def _reuse_prefix(self, seq: Sequence) -> int:
        """Give a sequence with no KV the cached blocks of its longest cached prefix; returns the tokens
        it no longer has to compute. At least its last token is always computed: it yields the logits."""
        assert seq.num_computed == 0 and not seq.block_table
        bs = self.blocks.block_size
        # Prompt logprobs need a logits row for every prompt token, so nothing is skipped.
        if not self.blocks.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            return 0
        seq.block_hashes = chain_hashes(seq.token_ids, bs, seq.block_hashes)
        seq.cached_blocks = self.blocks.match_prefix(seq.block_table, seq.block_hashes, (seq.num_tokens - 1) // bs)
        seq.num_computed = bs * seq.cached_blocks
        if not seq.output_ids:
            seq.num_cached_prompt = seq.num_computed
        return seq.num_computed

    def _build_batch(self, now: float) -> list[tuple[Sequence, int]]:
        aging = self.settings.aging_seconds
        order = sorted(self.running, key=lambda s: (-s.effective_priority(now, aging), s.admitted_at))
        decodes = [s for s in order if not s.is_prefilling]
        prefills = [s for s in order if s.is_prefilling]
        work: list[tuple[Sequence, int]] = []
        budget = self.settings.max_batch_tokens
        for seq in decodes + prefills:
            if len(work) >= self.settings.max_batch_size or budget <= 0:
                break
            n = min(seq.num_pending, budget)
            if not self._reserve(seq, n, work, order):
                continue
            work.append((seq, n))
            budget -= n
        return work

    def _reserve(self, seq: Sequence, n: int, work: list[tuple[Sequence, int]], order: list[Sequence]) -> bool:
        """Grow the sequence's KV blocks for n more tokens, preempting others if the cache is full."""
        need = seq.num_computed + n
        while not self.blocks.can_hold(seq.block_table, need):
            scheduled = {id(w) for w, _ in work} | {id(seq)}
            victims = [v for v in reversed(order) if id(v) not in scheduled and v.block_table]
            if not victims:
                return False
            self._preempt(victims[0])
        self.blocks.grow(seq.block_table, need)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        seq.preempt()
        self.running.remove(seq)
        self.waiting[seq.request.priority].appendleft(seq)
        self.stats.preempted += 1

    # -- recording a step ---------------------------------------------------------------------

    def update(
        self, batch: Batch, samples: list[Sample], prompt_scores: dict[int, PromptScores] | None = None
    ) -> list[EngineOutput]:
        """Record that `batch` ran and `samples` (one per sequence that reached its end, in batch
        order) were drawn, and the prompt tokens scored (by index in the batch); returns the outputs of
        the step, those ended while planning first."""
        outputs = list(batch.finished)
        bs = self.blocks.block_size
        drawn = iter(samples)
        for k, (seq, n) in enumerate(batch.work):
            scores = (prompt_scores or {}).get(k)
            if scores is not None:
                seq.prompt_logprobs += scores.logprobs
                seq.prompt_top_logprobs += scores.top_logprobs
            seq.num_computed += n
            if n > 1:
                self.stats.prompt_tokens_total += n
            full = seq.num_computed // bs
            if full > seq.cached_blocks and self.blocks.enable_prefix_caching:  # blocks just filled: share them
                seq.block_hashes = chain_hashes(seq.token_ids[: full * bs], bs, seq.block_hashes)
                self.blocks.register(seq.block_table, seq.block_hashes[:full], seq.cached_blocks)
                seq.cached_blocks = full
            if seq.num_computed == seq.num_tokens:
                outputs.append(self._on_token(seq, next(drawn)))
        return outputs

    def _on_token(self, seq: Sequence, sample: Sample) -> EngineOutput:
        seq.output_ids.append(sample.token)
        seq.output_logprobs.append(sample.logprob)
        if sample.top_logprobs is not None:
            seq.output_top_logprobs.append(sample.top_logprobs)
        self.stats.generation_tokens_total += 1
        if sample.token in seq.stop_ids or sample.grammar_done:
            return self._finish(seq, FinishReason.STOP)
        if len(seq.output_ids) >= seq.params.max_tokens or seq.num_tokens >= self.max_model_len:
            return self._finish(seq, FinishReason.LENGTH)
        return self._output(seq)

    def snapshot(self) -> SchedulerStats:
        s = self.stats
        s.waiting_by_priority = {p.name.lower(): len(q) for p, q in self.waiting.items()}
        s.active = len(self.running)
        s.kv_blocks_free = self.blocks.num_free
        s.avg_wait_time = self._wait_time_sum / self._admitted if self._admitted else 0.0
        finished = s.completed + s.failed + s.cancelled
        s.avg_processing_time = self._processing_time_sum / finished if finished else 0.0
        s.active_request_ids = [seq.request_id for seq in self.running]
        return s
