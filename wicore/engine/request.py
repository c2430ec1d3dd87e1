"""A generation request and its outputs, as the engine sees them: token ids in, token ids out.

`EngineRequest` goes into the engine; `EngineOutput` comes out after every step that
gave the request a token (or ended it).  Text exists only outside the engine: the
output processor (`engine/detokenizer.py`, run by the engine client and by `LLM`)
turns each `EngineOutput` into a `RequestOutput`, which adds the new text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from wicore.engine.sampling import SamplingParams


class Priority(enum.IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    URGENT = 3


# How the APIs spell a priority; `Priority[name.upper()]` turns one into the engine's.
PriorityName = Literal["low", "normal", "high", "urgent"]


class FinishReason(enum.StrEnum):
    """Why a request ended.  A StrEnum, so it compares equal to (and renders as) its API spelling."""

    STOP = "stop"  # a stop token or stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # cancelled
    TIMEOUT = "timeout"  # past its deadline
    ERROR = "error"  # refused, or the engine failed


@dataclass
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: Priority = Priority.NORMAL
    arrival: float = 0.0  # time.time() when the HTTP process received it
    deadline: float | None = None  # time.time() after which the request is ended as "timeout"


@dataclass
class EngineOutput:
    """One request's progress in one engine step: its new tokens (none when it only ended)."""

    request_id: str
    token_ids: list[int]  # new tokens since the last output
    logprobs: list[float] = field(default_factory=list)  # one per new token
    # Per new token, the top `params.logprobs` (token id, logprob) alternatives, when asked for.
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: FinishReason | None = None  # None while running
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # total so far
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # With params.prompt_logprobs, in a request's first output only: each prompt token's logprob given
    # the tokens before it (None for the first, which has none) and its top alternatives.
    prompt_logprobs: list[float | None] = field(default_factory=list)
    prompt_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class RequestOutput(EngineOutput):
    """An EngineOutput with its text: what the engine client and `LLM` hand to their callers."""

    text: str = ""  # new text since the last output (stop strings already cut)
