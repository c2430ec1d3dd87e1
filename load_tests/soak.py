"""`make soak`: a server under 16 locust users for 10 minutes (load_tests/soak_locustfile.py: every surface,
streamed and not, generations and embeddings), then its figures: requests, failures, p50/p99 latency,
the resident memory of the HTTP process and of the engine worker at start / middle / end, and the
worker's growth beyond what its KV cache may take (the cache's pages are mapped as slots are first
used, so up to its configured size is expected; anything past it would be a leak). Target: < 5 %.

    python -m load_tests.soak [--duration 600] [--users 16]

"start" is measured after one request of each kind, so the embedding model (loaded on first use) and
the first compilations are not counted as growth.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tests.live_server import Server, serve
from wicore.config import Settings
from wicore.engine.core import prepare

MB = 2**20
SAMPLE_SECONDS = 5.0
GROWTH_TARGET = 0.05
WARM_UP = (
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["Hi", "there"]}),
)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def kv_cache_bytes(settings: Settings) -> int:
    """The KV cache's size when every slot is used, as the engine allocates it."""
    _, config, engine = prepare(settings.model, settings.scheduler)
    slots = engine.num_blocks * engine.block_size
    return 2 * config.n_layers * slots * config.n_kv_heads * config.head_dim * np.dtype(engine.kv_cache_dtype).itemsize


class Sampler(threading.Thread):
    """(seconds since start, HTTP process RSS, worker RSS) every SAMPLE_SECONDS until stopped."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def sample(self) -> tuple[float, int, int]:
        row = (time.monotonic() - self.start_time, rss(self.server.proc.pid), rss(self.server.worker_pid()))
        self.samples.append(row)
        return row

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            self.sample()


def aggregated(stats_csv: Path) -> dict[str, str]:
    with stats_csv.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["Name"] == "Aggregated":
            return row
    raise RuntimeError(f"no Aggregated row in {stats_csv}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.soak")
    parser.add_argument("--duration", type=int, default=600, help="seconds of load")
    parser.add_argument("--users", type=int, default=16)
    args = parser.parse_args()
    config = {"api": {"rate_limit_per_minute": 0}}  # every locust user shares one address
    kv_bytes = kv_cache_bytes(Settings(**config))
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), config) as server:
        for path, body in WARM_UP:
            httpx.post(server.url + path, json=body, timeout=120).raise_for_status()
        sampler = Sampler(server)
        start = sampler.sample()
        sampler.start()
        prefix = Path(tmp) / "soak"
        locust = subprocess.run(
            [sys.executable, "-m", "locust", "-f", "load_tests/soak_locustfile.py", "--headless",
             "-u", str(args.users), "-r", str(max(1, args.users // 4)), "-t", f"{args.duration}s",
             "--host", server.url, "--csv", str(prefix), "--stop-timeout", "30", "--only-summary"],
            check=False,
        )  # fmt: skip
        sampler.stop.set()
        sampler.join()
        end = sampler.sample()
        middle = min(sampler.samples, key=lambda s: abs(s[0] - end[0] / 2))
        stats = aggregated(prefix.with_name("soak_stats.csv"))
    requests, failures = int(stats["Request Count"]), int(stats["Failure Count"])
    growth = end[2] - start[2]
    beyond = max(0, growth - kv_bytes)
    print(f"\nsoak: {args.users} users, {args.duration} s")
    print(f"requests: {requests}, failures: {failures}, p50: {stats['50%']} ms, p99: {stats['99%']} ms")
    print(f"{'RSS (MB)':<10} {'start':>8} {'middle':>8} {'end':>8}")
    for label, col in (("HTTP", 1), ("worker", 2)):
        print(f"{label:<10} {start[col] / MB:8.0f} {middle[col] / MB:8.0f} {end[col] / MB:8.0f}")
    print(
        f"worker growth: {growth / MB:.0f} MB; KV cache configured: {kv_bytes / MB:.0f} MB; beyond it: "
        f"{beyond / MB:.0f} MB = {beyond / start[2]:.1%} of the worker at start (target < {GROWTH_TARGET:.0%})"
    )
    ok = locust.returncode == 0 and failures == 0 and beyond / start[2] < GROWTH_TARGET
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
