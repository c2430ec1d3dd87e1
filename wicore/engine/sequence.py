"""One request's token state as it moves through the engine."""

from __future__ import annotations

import enum
import itertools
import random
from dataclasses import dataclass, field

from wicore.engine.sampling import SamplingParams

_ids = itertools.count()


class FinishReason(str, enum.Enum):
    STOP = "stop"  # a stop token or stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # when params.logprobs
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached_prompt: int = 0  # prompt tokens whose K/V came from the prefix cache
    block_hashes: list[bytes] = field(default_factory=list)  # prefix-cache hashes of full blocks, as far as known
    cached_blocks: int = 0  # leading blocks of block_table findable in the prefix cache
    finish_reason: FinishReason | None = None
    rng_seed: int = -1  # the request's seed, or a random one: fixed for the sequence's life

    def __post_init__(self) -> None:
        if self.rng_seed < 0:
            self.rng_seed = self.params.seed if self.params.seed is not None else random.getrandbits(63)

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

    def preempt(self) -> None:
        """Drop the cached state; the caller releases the blocks. Tokens are recomputed on resume."""
        self.num_computed = 0
        self.cached_blocks = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
