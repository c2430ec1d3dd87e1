"""Sampling parameters of one request (the OpenAI / llama.cpp / vLLM knobs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from wicore.kernels.sampling import RowParams


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _in_range(x: object, lo: float, hi: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and lo <= x <= hi


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token.  Only the first seven fields (plus logit_bias, seed) reach the
    sampling kernel; the rest drive the engine (stopping, logprobs reporting)."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 or -1 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # over prompt + output: logit > 0 divided, < 0 multiplied
    frequency_penalty: float = 0.0  # over output: logit -= count * frequency_penalty
    presence_penalty: float = 0.0  # over output: logit -= presence_penalty if count > 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # how many top logprobs to report per token
    # Report each prompt token's logprob (given the tokens before it) and this many top alternatives;
    # None: none. OpenAI's echo with logprobs; it costs a logits row per prompt token and the prefix cache.
    prompt_logprobs: int | None = None
    # An llguidance grammar the output must follow (engine/grammar.py builds and checks them: JSON
    # schema, regex, Lark); None: unconstrained.
    grammar: str | None = None

    def __post_init__(self) -> None:
        # accept the OpenAI shapes (a single stop string, lists) but store tuples
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.stop_token_ids, list):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

        _check(_in_range(self.temperature, 0.0, 2.0), "temperature", f"must be in [0, 2], got {self.temperature!r}")
        _check(_is_int(self.top_k) and self.top_k >= -1, "top_k", f"must be an int >= -1, got {self.top_k!r}")
        _check(_in_range(self.top_p, 0.0, 1.0) and self.top_p > 0, "top_p", f"must be in (0, 1], got {self.top_p!r}")
        _check(_in_range(self.min_p, 0.0, 1.0), "min_p", f"must be in [0, 1], got {self.min_p!r}")
        _check(
            _in_range(self.repetition_penalty, 0.0, math.inf) and self.repetition_penalty > 0,
            "repetition_penalty",
            f"must be > 0, got {self.repetition_penalty!r}",
        )
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            _check(_in_range(value, -2.0, 2.0), name, f"must be in [-2, 2], got {value!r}")
        _check(isinstance(self.logit_bias, dict), "logit_bias", "must be a dict of token id -> bias")
        for token, bias in self.logit_bias.items():
            _check(_is_int(token) and token >= 0, "logit_bias", f"token ids must be ints >= 0, got {token!r}")
            _check(_in_range(bias, -100.0, 100.0), "logit_bias", f"values must be in [-100, 100], got {bias!r}")
        _check(
            self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**64),
            "seed",
            f"must be None or an int in [0, 2**64), got {self.seed!r}",
        )
        _check(
            _is_int(self.max_tokens) and self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens!r}"
        )
        _check(
            isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
            "stop",
            "must be non-empty strings",
        )
        _check(
            isinstance(self.stop_token_ids, tuple) and all(_is_int(t) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "must be ints >= 0",
        )
        _check(isinstance(self.ignore_eos, bool), "ignore_eos", f"must be a bool, got {self.ignore_eos!r}")
        _check(
            self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= 20),
            "logprobs",
            f"must be None or an int in [0, 20], got {self.logprobs!r}",
        )
        _check(
            self.prompt_logprobs is None or (_is_int(self.prompt_logprobs) and 0 <= self.prompt_logprobs <= 20),
            "prompt_logprobs",
            f"must be None or an int in [0, 20], got {self.prompt_logprobs!r}",
        )
        _check(self.grammar is None or isinstance(self.grammar, str), "grammar", "must be None or a grammar string")

    def kernel_params(self) -> RowParams:
        """This request's row of the sampling kernel's `params` array."""
        return RowParams(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
        )
