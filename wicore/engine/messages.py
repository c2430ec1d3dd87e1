"""What crosses the queues between the HTTP process and the engine worker process.

HTTP -> worker: EngineRequest (a prompt to generate from), EmbedRequest (texts
to embed) and Cancel (either).
Worker -> HTTP: Ready once the model is loaded, a list of RequestOutput and
EmbedOutput after every engine step (new text and tokens of each running
request, finished embeddings), and SchedulerStats snapshots for /status and
/metrics.
All are plain picklable dataclasses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from wicore.engine.sampling import SamplingParams


class Priority(enum.IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    URGENT = 3


@dataclass
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: Priority = Priority.NORMAL
    arrival: float = 0.0  # time.time() when the HTTP process received it
    deadline: float | None = None  # time.time() after which the request is ended as "timeout"


@dataclass
class EmbedRequest:
    request_id: str
    texts: list[str]
    dimensions: int | None = None  # None: the model's full size
    priority: Priority = Priority.NORMAL
    arrival: float = 0.0
    deadline: float | None = None


@dataclass
class Cancel:
    request_id: str


@dataclass
class Ready:
    model: str
    max_model_len: int
    vocab_size: int


@dataclass
class RequestOutput:
    """One request's progress in one engine step."""

    request_id: str
    text: str  # new text since the last output (stop strings already cut)
    token_ids: list[int]  # new tokens since the last output
    logprobs: list[float] = field(default_factory=list)  # one per new token
    # Per new token, the top `params.logprobs` (token id, logprob) alternatives, when asked for.
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # None while running; else "stop", "length", "abort" (cancelled), "timeout" or "error".
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # total so far
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclass
class EmbedOutput:
    request_id: str
    embeddings: list[list[float]] | None  # None when it failed
    prompt_tokens: int = 0
    error: str | None = None


@dataclass
class SchedulerStats:
    running: bool = True
    waiting_by_priority: dict[str, int] = field(default_factory=dict)  # "low" .. "urgent"
    active: int = 0  # admitted sequences (holding KV)
    total_requests: int = 0
    completed: int = 0
    failed: int = 0  # errors and timeouts
    cancelled: int = 0
    preempted: int = 0
    avg_processing_time: float = 0.0  # seconds, admission to finish
    avg_wait_time: float = 0.0  # seconds, arrival to admission
    kv_blocks_total: int = 0
    kv_blocks_free: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache at admission
    prefix_cache_hits: int = 0  # of those, tokens found (not recomputed)
    active_request_ids: list[str] = field(default_factory=list)
