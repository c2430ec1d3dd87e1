"""What crosses the queues between the HTTP process and the engine worker process.

HTTP -> worker: EngineRequest (prompt token ids to generate from; engine/request.py),
EmbedRequest (texts to embed) and Cancel (either).
Worker -> HTTP: Ready once the model is loaded, a list of EngineOutput and
EmbedOutput after every engine step (new token ids of each running request,
finished embeddings), and SchedulerStats snapshots for /status and /metrics.
Only token ids cross for generation: the HTTP process owns the tokenizer.
All are plain picklable dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wicore.engine.request import FinishReason, Priority


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
    reason: FinishReason = FinishReason.ABORT  # STOP when the request's text reached a stop string


@dataclass
class Ready:
    model: str


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
