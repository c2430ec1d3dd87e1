"""A request while the engine runs it: its tokens, its KV blocks and its place in the schedule."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wicore.engine.request import EngineRequest, Priority
from wicore.engine.sampling import SamplingParams

if TYPE_CHECKING:  # the annotation only: llguidance loads with the first grammar (engine/grammar.py)
    import llguidance


@dataclass(eq=False)  # identity semantics: lists of these are searched by `in`
class Sequence:
    request: EngineRequest
    stop_ids: frozenset[int] = frozenset()  # tokens that end it: the request's own, plus eos unless ignore_eos
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # when params.logprobs
    # With params.prompt_logprobs: the scores of prompt tokens 1, 2, ... as far as computed.
    prompt_logprobs: list[float] = field(default_factory=list)
    prompt_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached_prompt: int = 0  # prompt tokens whose K/V came from the prefix cache
    block_hashes: list[bytes] = field(default_factory=list)  # prefix-cache hashes of full blocks, as far as known
    cached_blocks: int = 0  # leading blocks of block_table findable in the prefix cache
    rng_seed: int = -1  # the request's seed, or a random one: fixed for the sequence's life
    admitted_at: float = 0.0  # time.time() when it last got KV blocks
    sent_tokens: int = 0  # output tokens already reported in an EngineOutput
    # The grammar's state when params.grammar is set (engine/grammar.py): it has consumed every output
    # token, and keeps its state through preemption (recomputing tokens consumes nothing).
    matcher: llguidance.LLMatcher | None = None

    def __post_init__(self) -> None:
        if self.rng_seed < 0:
            seed = self.request.params.seed
            self.rng_seed = seed if seed is not None else random.getrandbits(63)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_ids(self) -> list[int]:
        return self.request.prompt_ids

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet run through the model: 1 when decoding, more while (re)filling the cache."""
        return self.num_tokens - self.num_computed

    @property
    def is_prefilling(self) -> bool:
        """True while more than the newest token waits: a prompt, or a recompute after preemption."""
        return self.num_pending > 1

    def effective_priority(self, now: float, aging: float) -> int:
        """The request's priority, raised one level for every `aging` seconds it has waited."""
        waited = max(0.0, now - self.request.arrival)
        return min(int(Priority.URGENT), int(self.request.priority) + int(waited // aging))

    def preempt(self) -> None:
        """Drop the cached state; the caller releases the blocks. Tokens are recomputed on resume."""
        self.num_computed = 0
        self.cached_blocks = 0
