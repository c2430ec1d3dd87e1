"""Offline generation: load a GGUF model and generate text for one or many prompts.

The loop here batches every live sequence into each forward pass and splits
long prompts into chunks of at most `max_batch_tokens`; the serving scheduler
reuses the same ModelRunner with its own priorities and limits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from wicore.engine.model_runner import ModelRunner
from wicore.engine.sampling import SamplingParams
from wicore.engine.sequence import FinishReason, Sequence
from wicore.engine.text_stream import TextStream
from wicore.models import registry
from wicore.models.prepared import load_prepared
from wicore.models.transformer import KVCache, KVDtype, Transformer
from wicore.tokenizer import Tokenizer


@dataclass
class Timings:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    timings: Timings = field(default_factory=Timings)
    # Per generated token, the `params.logprobs` most likely (token id, logprob), when asked for.
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class _Live:
    seq: Sequence
    text: TextStream
    chunks: list[str] = field(default_factory=list)


class LLM:
    def __init__(
        self,
        model: str = registry.DEFAULT_MODEL,
        max_model_len: int = 4096,
        kv_cache_tokens: int = 16384,
        block_size: int = 16,
        max_batch_tokens: int = 512,
        enable_prefix_caching: bool = True,
        kv_cache_dtype: KVDtype = "float16",
    ) -> None:
        path = registry.resolve(model)
        self.config, meta, weights = load_prepared(path)
        self.tokenizer = Tokenizer.from_metadata(meta, str(path))
        self.model = Transformer(self.config, weights)
        self.model_name = model
        self.max_model_len = min(max_model_len, self.config.context_length)
        self.max_batch_tokens = max_batch_tokens
        num_blocks = -(-max(kv_cache_tokens, self.max_model_len) // block_size)
        self.runner = ModelRunner(self.model, num_blocks, block_size, enable_prefix_caching, kv_cache_dtype)
        self.kv_cache_dtype = kv_cache_dtype

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages), add_special_tokens=False)

    def _sequence(self, prompt: str | list[int], params: SamplingParams) -> Sequence:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("prompt: must not be empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt: {len(ids)} tokens does not fit the context length of {self.max_model_len}")
        return Sequence(prompt_ids=ids, params=params)

    def generate(self, prompts: list[str | list[int]], params: SamplingParams) -> list[Completion]:
        """Generate for all prompts together (one batch per step)."""
        seqs = [self._sequence(p, params) for p in prompts]
        live = [_Live(seq, TextStream(self.tokenizer, params.stop)) for seq in seqs]
        timings = Timings()
        for item, piece in self._run(live, timings):
            item.chunks.append(piece)
        return [
            Completion(
                text="".join(item.chunks),
                token_ids=item.seq.output_ids,
                finish_reason=item.seq.finish_reason.value if item.seq.finish_reason else "length",
                prompt_tokens=len(item.seq.prompt_ids),
                timings=timings,
                top_logprobs=item.seq.output_top_logprobs,
            )
            for item in live
        ]

    def stream(self, prompt: str | list[int], params: SamplingParams, timings: Timings | None = None) -> Iterator[str]:
        """Yield the text of one prompt's completion piece by piece as it is produced."""
        item = _Live(self._sequence(prompt, params), TextStream(self.tokenizer, params.stop))
        for _, piece in self._run([item], timings or Timings()):
            yield piece

    def _run(self, live: list[_Live], timings: Timings) -> Iterator[tuple[_Live, str]]:
        for item in live:
            self.runner.reuse_prefix(item.seq)
        try:
            while active := [item for item in live if not item.seq.finished]:
                work = self._schedule([item.seq for item in active])
                prefilling = any(seq.is_prefilling for seq, _ in work)
                t0 = time.perf_counter()
                sampled = {seq.seq_id for seq in self.runner.step(work)}
                elapsed = time.perf_counter() - t0
                if prefilling:
                    timings.prompt_tokens += sum(n for seq, n in work)
                    timings.prompt_seconds += elapsed
                else:
                    timings.decode_tokens += len(work)
                    timings.decode_seconds += elapsed
                for item in active:
                    if item.seq.seq_id in sampled:
                        piece = self._on_token(item)
                        if piece:
                            yield item, piece
        finally:
            for item in live:
                if not item.seq.finished:
                    item.seq.finish_reason = FinishReason.ABORT
                self.runner.blocks.release(item.seq.block_table)

    def _schedule(self, seqs: list[Sequence]) -> list[tuple[Sequence, int]]:
        """Decode tokens first, then prompt chunks within the token budget."""
        work = [(seq, 1) for seq in seqs if not seq.is_prefilling]
        budget = self.max_batch_tokens - len(work)
        for seq in seqs:
            if seq.is_prefilling and budget > 0:
                n = min(budget, seq.num_pending)
                work.append((seq, n))
                budget -= n
        for seq, n in work:
            self.runner.blocks.grow(seq.block_table, seq.num_computed + n)
        return work

    def _on_token(self, item: _Live) -> str:
        seq, params = item.seq, item.seq.params
        token = seq.output_ids[-1]
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.tokenizer.stop_token_ids)
        if token in stop_ids:
            seq.finish_reason = FinishReason.STOP
            return item.text.flush()
        piece = item.text.push(token)
        if item.text.stopped:
            seq.finish_reason = FinishReason.STOP
        elif len(seq.output_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = FinishReason.LENGTH
            piece += item.text.flush()
        if seq.finished:
            self.runner.blocks.release(seq.block_table)
        return piece

    @property
    def kv_bytes_per_token(self) -> int:
        return KVCache.bytes_per_token(self.config, self.kv_cache_dtype)
