"""The server's own routes (`/`, `/health`, `/status`, `/metrics`, and SGLang's `/get_load` for its gateway)
in the shapes of WiCore's API contract.

/health and /status answer with the contract's string figures and Chinese status texts, for the whole
server (every loaded model's scheduler summed); /status also has the same figures as numbers under
`scheduler`, and each loaded model's under `models`.  /metrics is Prometheus text (metrics.py).
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from wicore import __version__
from wicore.engine.messages import SchedulerStats
from wicore.engine.request import Priority
from wicore.server.models import LoadedInfo, ModelState, ServedModels


class RootResponse(BaseModel):
    message: str = "WiCore Mojo 推理引擎"
    version: str


class HealthResponse(BaseModel):
    """Every figure is a string, as the contract has it."""

    status: Literal["healthy", "loading"]
    engine: str = "wicore-mojo"
    version: str
    uptime: str
    scheduler: str
    total_requests: str
    error_count: str
    error_rate: str


class SchedulerSnapshot(BaseModel):
    """The figures of /status's two text blocks, as numbers."""

    running: bool
    total_requests: int
    completed: int
    failed: int
    cancelled: int
    preempted: int
    active: int
    queue_length: int
    waiting_by_priority: dict[str, int]
    success_rate: float  # percent of finished requests that completed
    avg_processing_time: float
    avg_wait_time: float
    kv_blocks_total: int
    kv_blocks_free: int
    kv_cache_usage: float  # fraction of KV blocks in use
    prompt_tokens_total: int
    generation_tokens_total: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens whose KV was reused
    active_request_ids: list[str]

    @classmethod
    def of(cls, stats: SchedulerStats) -> SchedulerSnapshot:
        waiting = {p.name.lower(): int(stats.waiting_by_priority.get(p.name.lower(), 0)) for p in Priority}
        finished = stats.completed + stats.failed + stats.cancelled
        used = stats.kv_blocks_total - stats.kv_blocks_free
        return cls(
            running=stats.running,
            total_requests=stats.total_requests,
            completed=stats.completed,
            failed=stats.failed,
            cancelled=stats.cancelled,
            preempted=stats.preempted,
            active=stats.active,
            queue_length=sum(waiting.values()),
            waiting_by_priority=waiting,
            # Nothing finished yet means nothing failed: 100 %, matching /health's 0 % error rate.
            success_rate=100.0 * stats.completed / finished if finished else 100.0,
            avg_processing_time=stats.avg_processing_time,
            avg_wait_time=stats.avg_wait_time,
            kv_blocks_total=stats.kv_blocks_total,
            kv_blocks_free=stats.kv_blocks_free,
            kv_cache_usage=used / stats.kv_blocks_total if stats.kv_blocks_total else 0.0,
            prompt_tokens_total=stats.prompt_tokens_total,
            generation_tokens_total=stats.generation_tokens_total,
            prefix_cache_queries=stats.prefix_cache_queries,
            prefix_cache_hits=stats.prefix_cache_hits,
            active_request_ids=list(stats.active_request_ids),
        )


def combined(stats: list[SchedulerStats]) -> SchedulerStats:
    """The server's figures from each loaded model's: counts summed, averages weighted by completed
    requests; running while every worker is (with none loaded, the server still serves: it loads)."""
    total = SchedulerStats(running=all(s.running for s in stats))
    for f in fields(SchedulerStats):
        if f.name in ("running", "avg_processing_time", "avg_wait_time"):
            continue
        values = [getattr(s, f.name) for s in stats]
        if f.name == "waiting_by_priority":
            setattr(total, f.name, {k: sum(v.get(k, 0) for v in values) for k in {k for v in values for k in v}})
        else:
            setattr(total, f.name, sum(values, [] if f.name == "active_request_ids" else 0))
    done = sum(s.completed for s in stats)
    if done:
        total.avg_processing_time = sum(s.avg_processing_time * s.completed for s in stats) / done
        total.avg_wait_time = sum(s.avg_wait_time * s.completed for s in stats) / done
    return total


class ModelStatus(BaseModel):
    """One loaded model: its worker, its estimated memory, who holds it and its scheduler."""

    name: str
    state: ModelState
    pid: int | None
    memory_bytes: int  # estimated: prepared weights + KV cache reserved
    context_length: int
    requests: int  # requests holding the model now (it unloads only at 0)
    keep_alive: float  # seconds; negative: forever
    expires_at: float | None  # unix time it unloads if still idle; None: never
    worker_restarts: int
    scheduler: SchedulerSnapshot

    @classmethod
    def of(cls, info: LoadedInfo) -> ModelStatus:
        e = info.engine
        return cls(
            name=info.name, state=info.state, pid=e.pid, memory_bytes=e.memory, context_length=e.max_model_len,
            requests=info.users, keep_alive=info.keep_alive, expires_at=info.expires_at,
            worker_restarts=e.worker_restarts, scheduler=SchedulerSnapshot.of(e.stats),
        )  # fmt: skip


def _yes_no(flag: bool) -> str:
    return "是" if flag else "否"


def scheduler_status_text(s: SchedulerSnapshot) -> str:
    """The contract's multi-line `scheduler_status` text."""
    return (
        "调度器状态:\n"
        f"  运行中: {_yes_no(s.running)}\n"
        f"  总请求数: {s.total_requests}\n"
        f"  已完成: {s.completed}\n"
        f"  失败: {s.failed}\n"
        f"  取消: {s.cancelled}\n"
        f"  活跃请求: {s.active}\n"
        f"  队列长度: {s.queue_length}\n"
        f"  成功率: {s.success_rate:.1f}%\n"
        f"  平均处理时间: {s.avg_processing_time:.3f}s\n"
        f"  平均等待时间: {s.avg_wait_time:.3f}s"
    )


_PRIORITY_LABELS = {"low": "低优先级", "normal": "普通优先级", "high": "高优先级", "urgent": "紧急优先级"}


def queue_summary_text(s: SchedulerSnapshot) -> str:
    """The contract's multi-line `queue_summary` text."""
    lines = [f"  {label}: {s.waiting_by_priority.get(name, 0)} 个请求" for name, label in _PRIORITY_LABELS.items()]
    return "\n".join(["队列状态:", *lines, f"  活跃处理: {s.active} 个请求"])


class StatusResponse(BaseModel):
    server_running: str
    port: str
    uptime: str
    total_requests: str
    error_count: str
    scheduler_status: str
    queue_summary: str
    scheduler: SchedulerSnapshot
    models: list[ModelStatus]  # loaded, most recently used first
    memory_bytes: int  # estimated, all loaded models
    max_memory: int  # model.max_memory; 0: no limit
    max_loaded: int  # model.max_loaded

    @classmethod
    def of(
        cls, stats: SchedulerStats, *, port: int, uptime: float, total_requests: int, error_count: int,
        models: list[ModelStatus] | None = None, max_memory: int = 0, max_loaded: int = 1,
    ) -> StatusResponse:  # fmt: skip
        """`stats`: the whole server's (see combined())."""
        snapshot = SchedulerSnapshot.of(stats)
        models = models or []
        return cls(
            server_running=_yes_no(True),  # answering this request is the proof
            port=str(port),
            uptime=f"{uptime:.1f}s",
            total_requests=str(total_requests),
            error_count=str(error_count),
            scheduler_status=scheduler_status_text(snapshot),
            queue_summary=queue_summary_text(snapshot),
            scheduler=snapshot,
            models=models,
            memory_bytes=sum(m.memory_bytes for m in models),
            max_memory=max_memory,
            max_loaded=max_loaded,
        )


class LoadInfo(BaseModel):
    """One entry of SGLang's `/get_load` (a list, one per data-parallel rank; we have one: the server, every
    loaded model summed), which SGLang's Model Gateway polls under its power_of_two policy."""

    dp_rank: int = 0
    num_reqs: int  # running and waiting
    num_waiting_reqs: int
    num_tokens: int  # tokens held in the KV cache

    @classmethod
    def of(cls, engines: list[tuple[SchedulerStats, int]]) -> LoadInfo:
        """From each loaded engine's (stats, KV block size)."""
        waiting = sum(sum(s.waiting_by_priority.values()) for s, _ in engines)
        return cls(
            num_reqs=sum(s.active for s, _ in engines) + waiting,
            num_waiting_reqs=waiting,
            num_tokens=sum((s.kv_blocks_total - s.kv_blocks_free) * block for s, block in engines),
        )


def router(models: ServedModels) -> APIRouter:
    api = APIRouter()
    counters = models.counters

    @api.get("/")
    async def root() -> RootResponse:
        return RootResponse(version=__version__)

    @api.get("/health", response_model=HealthResponse)
    async def health() -> JSONResponse:
        ready = models.ready
        running = all(info.engine.stats.running for info in models.loaded() if info.state == "loaded")
        body = HealthResponse(
            status="healthy" if ready else "loading",
            version=__version__,
            uptime=f"{time.time() - models.started_at:.1f}",
            scheduler="running" if ready and running else "stopped",
            total_requests=str(counters.total_requests),
            error_count=str(counters.error_count),
            error_rate=f"{100 * counters.error_rate:.1f}%",
        )
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @api.get("/status")
    async def status(request: Request) -> StatusResponse:
        server = request.scope.get("server")
        limits, loaded = models.settings.model, models.loaded()
        return StatusResponse.of(
            combined([info.engine.stats for info in loaded]),
            port=server[1] if server else models.settings.api.port,  # the bound port, right even on port 0
            uptime=time.time() - models.started_at,
            total_requests=counters.total_requests,
            error_count=counters.error_count,
            models=[ModelStatus.of(info) for info in loaded],
            max_memory=int(limits.max_memory),
            max_loaded=limits.max_loaded,
        )

    @api.get("/get_load")
    async def load() -> list[LoadInfo]:
        engines = [i.engine for i in models.loaded()]
        # an embedding model's engine holds no KV cache (no engine_config) and queues no generations
        return [LoadInfo.of([(e.stats, e.engine_config.block_size) for e in engines if e.engine_config is not None])]

    @api.get("/metrics")
    async def prometheus() -> Response:
        data, content_type = models.metrics.render()
        return Response(data, media_type=content_type)

    return api
