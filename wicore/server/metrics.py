"""Prometheus metrics under vLLM's names with the `wicore:` prefix, so vLLM dashboards work with a rename.

The three load gauges that gateways and Kubernetes' inference extension (the endpoint picker) read are
exported a second time under `vllm:` itself (`vllm:num_requests_waiting`, `vllm:num_requests_running`,
`vllm:kv_cache_usage_perc`, 0-1), so those read WiCore replicas as they read vLLM's.

Latencies and token counts are measured here, in the HTTP process, as each request's outputs arrive;
queue and KV figures come from each loaded model's worker's latest SchedulerStats at scrape time. Every
series has a `model_name` label; a sum over it is the server's figure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wicore.engine.messages import SchedulerStats
from wicore.engine.request import RequestOutput

PREFIX = "wicore:"
GATEWAY_PREFIX = "vllm:"  # the names load-aware routers look for
# vLLM's buckets, so percentiles line up with its dashboards.
# fmt: off
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
# fmt: on
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class SequenceTimer:
    """Timing of one engine sequence, fed with its outputs as they arrive (times from time.time())."""

    def __init__(self, arrival: float) -> None:
        self.arrival = arrival
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.gaps: list[float] = []
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0

    def on_output(self, out: RequestOutput, now: float) -> None:
        self.prompt_tokens = out.prompt_tokens or self.prompt_tokens
        self.cached_tokens = out.cached_tokens or self.cached_tokens
        self.completion_tokens = out.completion_tokens or self.completion_tokens
        if not out.token_ids:
            return
        if self.first_token is None:
            self.first_token = now
        else:
            self.gaps.append(now - self.last_token)  # type: ignore[operator]
        self.last_token = now

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    def decode_tokens_per_s(self) -> float | None:
        """Generation speed after the first token (which includes queueing and prefill)."""
        if self.first_token is None or self.last_token is None or self.completion_tokens < 2:
            return None
        span = self.last_token - self.first_token
        return (self.completion_tokens - 1) / span if span > 0 else None


@dataclass(frozen=True)
class EngineFigures:
    """What /metrics reads of one loaded model's engine at scrape time."""

    model_name: str
    stats: SchedulerStats
    worker_restarts: int
    memory: int  # estimated bytes


class _SchedulerCollector(Collector):
    def __init__(self, engines: Callable[[], list[EngineFigures]]) -> None:
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        engines = self._engines()
        labels = ["model_name"]

        def family(kind: type[GaugeMetricFamily | CounterMetricFamily], name: str, doc: str,
                   value: Callable[[EngineFigures], float], prefix: str = PREFIX) -> Metric:  # fmt: skip
            f = kind(prefix + name, doc, labels=labels)
            for e in engines:
                f.add_metric([e.model_name], value(e))
            return f

        def kv_usage(e: EngineFigures) -> float:
            s = e.stats
            return (s.kv_blocks_total - s.kv_blocks_free) / s.kv_blocks_total if s.kv_blocks_total else 0.0

        for prefix in (PREFIX, GATEWAY_PREFIX):
            yield family(GaugeMetricFamily, "num_requests_running", "Requests admitted by the scheduler (holding KV "
                         "cache).", lambda e: e.stats.active, prefix)  # fmt: skip
            yield family(GaugeMetricFamily, "num_requests_waiting", "Requests queued for admission.",
                         lambda e: sum(e.stats.waiting_by_priority.values()), prefix)  # fmt: skip
            yield family(GaugeMetricFamily, "kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).",
                         kv_usage, prefix)  # fmt: skip
        yield family(GaugeMetricFamily, "model_memory_bytes", "Estimated memory of the model's engine worker "
                     "(prepared weights + KV cache reserved).", lambda e: e.memory)  # fmt: skip
        loaded = GaugeMetricFamily(PREFIX + "models_loaded", "Models with an engine worker.")
        loaded.add_metric([], len(engines))
        yield loaded
        for name, doc, value in (
            ("num_preemptions", "Sequences preempted for KV cache space.", lambda e: e.stats.preempted),
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             lambda e: e.stats.prefix_cache_queries),
            ("prefix_cache_hits", "Prompt tokens whose KV was found in the prefix cache.",
             lambda e: e.stats.prefix_cache_hits),
            ("worker_restarts", "Engine workers that died and were started again.", lambda e: e.worker_restarts),
        ):  # fmt: skip
            yield family(CounterMetricFamily, name, doc + " Per engine: starts from 0 when a model loads again.",
                         value)  # fmt: skip


class Metrics:
    """The server's registry (one per app, so several apps in one process do not collide)."""

    def __init__(self, engines: Callable[[], list[EngineFigures]]) -> None:
        disable_created_metrics()  # the `_created` series double the output and no dashboard reads them
        self.registry = CollectorRegistry()
        reg, labels = self.registry, ["model_name"]
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds", "Time to first token.", labels, registry=reg, buckets=TTFT_BUCKETS
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds", "Time between outputs.", labels, registry=reg, buckets=ITL_BUCKETS
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds", "Arrival to last output.", labels, registry=reg, buckets=E2E_BUCKETS
        )
        self.request_prompt_tokens = Histogram(
            PREFIX + "request_prompt_tokens", "Prompt tokens per request.", labels, registry=reg, buckets=TOKEN_BUCKETS
        )
        self.request_generation_tokens = Histogram(
            PREFIX + "request_generation_tokens",
            "Generated tokens per request.",
            labels,
            registry=reg,
            buckets=TOKEN_BUCKETS,
        )
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed.", labels, registry=reg)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", labels, registry=reg)
        self.request_success = Counter(
            PREFIX + "request_success",
            "Finished sequences by finish reason (stop, length, abort, timeout, error).",
            ["model_name", "finished_reason"],
            registry=reg,
        )
        reg.register(_SchedulerCollector(engines))

    def observe(self, m: str, timer: SequenceTimer, finish_reason: str, now: float) -> None:
        """Record one finished engine sequence of the model `m`."""
        if timer.ttft is not None:
            self.ttft.labels(m).observe(timer.ttft)
        for gap in timer.gaps:
            self.itl.labels(m).observe(gap)
        self.e2e.labels(m).observe(now - timer.arrival)
        self.request_prompt_tokens.labels(m).observe(timer.prompt_tokens)
        self.request_generation_tokens.labels(m).observe(timer.completion_tokens)
        self.prompt_tokens.labels(m).inc(timer.prompt_tokens)
        self.generation_tokens.labels(m).inc(timer.completion_tokens)
        self.request_success.labels(m, finish_reason).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
