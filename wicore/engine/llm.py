"""Offline generation: load a GGUF model and generate text for one or many prompts.

`LLM` is a loop over the same EngineCore the server's worker runs (its scheduler,
chunked prefill, prefix cache and preemption), with the output processor in
process: token ids from the core become text here.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from wicore.config import ModelSettings, SchedulerSettings
from wicore.engine.core import BLOCK_SIZE, EngineCore, Timings, prepare
from wicore.engine.detokenizer import Detokenizer
from wicore.engine.request import EngineOutput, EngineRequest, FinishReason, RequestOutput
from wicore.engine.sampling import SamplingParams
from wicore.models import registry
from wicore.models.kv_cache import KVDtype

__all__ = ["LLM", "Completion", "Timings"]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    timings: Timings = field(default_factory=Timings)
    # Per generated token, the `params.logprobs` most likely (token id, logprob), when asked for.
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # With `params.prompt_logprobs`: each prompt token's logprob (None for the first) and top alternatives.
    prompt_logprobs: list[float | None] = field(default_factory=list)
    prompt_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


class LLM:
    def __init__(
        self,
        model: str = registry.DEFAULT_MODEL,
        max_model_len: int = 4096,
        kv_cache_tokens: int = 16384,
        block_size: int = BLOCK_SIZE,
        max_batch_tokens: int = 512,
        enable_prefix_caching: bool = True,
        kv_cache_dtype: KVDtype = "float16",
        max_num_seqs: int = 256,
    ) -> None:
        """`max_num_seqs` bounds the sequences admitted and batched at once; more prompts wait their turn."""
        settings = ModelSettings(
            name=model, max_model_len=max_model_len, kv_cache_tokens=kv_cache_tokens, kv_cache_dtype=kv_cache_dtype
        )
        scheduler = SchedulerSettings(
            max_concurrent=max_num_seqs,
            max_batch_size=max_num_seqs,
            max_batch_tokens=max_batch_tokens,
            enable_prefix_caching=enable_prefix_caching,
        )
        self.tokenizer, self.config, engine = prepare(settings, scheduler, block_size)
        self.core = EngineCore.load(engine)
        self.model_name = model
        self.max_model_len = engine.max_model_len
        self._ids = itertools.count()
        # Outputs of requests whose caller is not the loop stepping the core (an interleaved stream).
        self._inbox: dict[str, deque[RequestOutput]] = {}
        self._detokenizers: dict[str, Detokenizer] = {}

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages), add_special_tokens=False)

    def _request(self, prompt: str | list[int], params: SamplingParams) -> EngineRequest:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("prompt: must not be empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt: {len(ids)} tokens does not fit the context length of {self.max_model_len}")
        return EngineRequest(str(next(self._ids)), ids, params, arrival=time.time())

    def generate(self, prompts: list[str | list[int]], params: SamplingParams) -> list[Completion]:
        """Generate for all prompts together (one batch per step, as far as the scheduler's limits allow)."""
        requests = [self._request(p, params) for p in prompts]
        results: dict[str, list[RequestOutput]] = {r.request_id: [] for r in requests}
        timings = Timings()
        for out in self._run(requests, timings):
            results[out.request_id].append(out)
        completions = []
        for request in requests:
            outs = results[request.request_id]
            completions.append(
                Completion(
                    text="".join(o.text for o in outs),
                    token_ids=[t for o in outs for t in o.token_ids],
                    finish_reason=outs[-1].finish_reason or FinishReason.LENGTH,
                    prompt_tokens=len(request.prompt_ids),
                    timings=timings,
                    top_logprobs=[top for o in outs for top in o.top_logprobs],
                    prompt_logprobs=[lp for o in outs for lp in o.prompt_logprobs],
                    prompt_top_logprobs=[top for o in outs for top in o.prompt_top_logprobs],
                )
            )
        return completions

    def stream(self, prompt: str | list[int], params: SamplingParams, timings: Timings | None = None) -> Iterator[str]:
        """Yield the text of one prompt's completion piece by piece as it is produced."""
        for out in self._run([self._request(prompt, params)], timings or Timings()):
            if out.text:
                yield out.text

    def _run(self, requests: list[EngineRequest], timings: Timings) -> Iterator[RequestOutput]:
        """Step the core until `requests` finish, yielding their outputs with text.  Outputs of other
        requests (another stream of this LLM, paused by its consumer) wait in their inbox."""
        mine = {r.request_id for r in requests}
        for r in requests:
            self._detokenizers[r.request_id] = Detokenizer(self.tokenizer, r.params.stop, r.params.stop_token_ids)
            self._inbox[r.request_id] = deque()
            if (refused := self.core.scheduler.add(r)) is not None:
                self._deliver(refused)
        try:
            while mine:
                for request_id in list(mine):
                    inbox = self._inbox[request_id]
                    while inbox:
                        out = inbox.popleft()
                        if out.finish_reason is not None:
                            mine.discard(request_id)
                        yield out
                if mine:
                    for engine_out in self.core.step(timings):
                        self._deliver(engine_out)
        finally:
            for request_id in {r.request_id for r in requests}:
                self._inbox.pop(request_id, None)
                if self._detokenizers.pop(request_id, None) is not None:
                    self.core.scheduler.cancel(request_id)  # the consumer stopped early

    def _deliver(self, engine_out: EngineOutput) -> None:
        detokenizer = self._detokenizers.get(engine_out.request_id)
        if detokenizer is None:
            return  # a request whose consumer has gone
        out = detokenizer.process(engine_out)
        if out.finish_reason is not None:
            del self._detokenizers[out.request_id]
            if engine_out.finish_reason is None:  # a stop string: the core still runs it
                self.core.scheduler.cancel(out.request_id, FinishReason.STOP)
        self._inbox[out.request_id].append(out)
