"""Serving speed through HTTP streaming, measured as vLLM's `bench serve` measures it.

Starts `wicore serve` itself on a free loopback port (or uses `--url`), then for each concurrency
level sends `--num-prompts` streamed chat completions (`temperature: 0`, `max_tokens`,
`stream_options.include_usage`), at most `concurrency` in flight, arriving all at once
(`--request-rate inf`) or as a Poisson process. Timed at the client, per vLLM:

- TTFT: request sent -> first chunk carrying content.  E2EL: request sent -> last chunk.
- TPOT per request: (E2EL - TTFT) / (output_tokens - 1), requests with more than one token.
- ITL: every gap between consecutive content chunks, pooled over all requests.
- Output throughput: total output tokens / wall duration of the level; request throughput:
  completed requests / duration.

Output tokens come from each response's final usage chunk, never from counting chunks (a chunk
may carry several tokens, or none while a multi-byte character is incomplete). Prompts are a fixed
list of requests for long answers, shuffled by `--seed` and numbered so none repeats; by default generation stops at EOS
as any OpenAI client's would, so the mean output tokens per request is reported beside the
throughput. `--ignore-eos` sends the vLLM extension field that WiCore also accepts, making every
request generate exactly `--max-tokens`.

The server this script starts gets a rate limit of 0 (off) and a request timeout of 600 s,
so neither skews the measurement; pass `--url` to measure a server configured otherwise.

`--peer` also starts llama.cpp's `llama-server` (built for this host by `make bench-peers`) on the
same GGUF, `--peer-parallel` slots (16, as WiCore's batch), the same thread count, and sends it
the same levels, prompts and token counts through the same client: each level runs on one server
and then the other, the first to go alternating from level to level so drifting machine load hits
both alike. The server not being measured is paused (SIGSTOP on its process group, SIGCONT before
its turn): an idle server still wakes up (WiCore's engine sends scheduler stats every 0.1 s, ~9 %
of a core here), which on a 2-core machine would tax the other's measurement. Both get
`ignore_eos` (llama-server honours it too), so every request generates exactly `--max-tokens` on
both and throughputs compare equal work. Printed at the end: output throughput per level side by
side and the ratio WiCore / llama.cpp.

    python benchmarks/bench_serving.py [--concurrency 1,4,16,32] [--num-prompts N]
        [--max-tokens 64] [--request-rate inf] [--seed 0] [--json FILE] [--url URL]
        [--peer [--peer-parallel 16] [--threads N] [--no-wicore]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from wicore.kernels import build

# Questions whose answers run long: with the bundled model, greedy, each runs past 64 tokens (some
# phrasings got echoed back as a short question instead, and were replaced).
PROMPTS: tuple[str, ...] = (
    "Explain in detail how a hash table works, including collision handling and resizing.",
    "Write a Python class implementing an LRU cache with get and put, and explain each method.",
    "Describe the history of the printing press and its effects on European society.",
    "Explain step by step how TCP establishes, uses and closes a connection.",
    "Write a detailed guide to making sourdough bread at home, from starter to baking.",
    "Compare quicksort, mergesort and heapsort: how each works, their complexity and trade-offs.",
    "Explain how a web browser turns a URL into pixels on the screen, step by step.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe how vaccines train the immune system, with examples of different vaccine types.",
    "Write a Rust function that parses a CSV line with quoted fields, and explain the edge cases.",
    "Explain the causes and consequences of the French Revolution in several paragraphs.",
    "Describe how a transformer language model turns a prompt into the next token.",
    "Write a bash script that backs up a directory with rotation, and explain every line.",
    "Explain how public-key cryptography lets two strangers agree on a secret over the internet.",
    "Give a detailed plan for learning to play the guitar in six months, week by week.",
    "Explain garbage collection: reference counting, mark and sweep, and generational collectors.",
    "Write a SQL schema for a library system and example queries for common tasks, with comments.",
    "Describe the water cycle and how climate change is altering it, region by region.",
    "Explain how Git stores commits, trees and blobs, and what a rebase does to them.",
    "Write a tutorial on binary search trees in Python, with insertion, search and deletion.",
    "Describe the life cycle of a star from nebula to its possible end states.",
    "Explain how a compiler goes from source code to machine code, stage by stage.",
    "Write a letter to a new employee explaining the team's code review practices in detail.",
    "Explain how an operating system schedules processes, with the common algorithms.",
)

DEFAULT_CONCURRENCY = "1,4,16,32"
# Where `make bench-peers` builds llama.cpp.
LLAMA_CPP_BIN = Path(__file__).resolve().parent.parent / ".peers" / "llama.cpp" / "build" / "bin"
WICORE, PEER = "wicore", "llama.cpp"
PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0  # seconds
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the server took from its prefix cache
    output_tokens: int = 0
    error: str = ""


@dataclass
class LevelResult:
    concurrency: int
    num_prompts: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    mean_output_tokens: float
    mean_prompt_tokens: float
    mean_cached_tokens: float
    # metric name -> {"mean": ms, "p50": ms, ...}
    latency_ms: dict[str, dict[str, float]]
    errors: list[str]


def summarize(values: list[float]) -> dict[str, float]:
    """Mean and percentiles in milliseconds (NaN when there is nothing to summarize)."""
    if not values:
        return {"mean": math.nan} | {f"p{p}": math.nan for p in PERCENTILES}
    arr = np.asarray(values) * 1000.0
    return {"mean": float(arr.mean())} | {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}


def level_result(concurrency: int, results: list[RequestResult], duration: float) -> LevelResult:
    ok = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.e2el - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return LevelResult(
        concurrency=concurrency,
        num_prompts=len(results),
        completed=len(ok),
        failed=len(results) - len(ok),
        duration_s=duration,
        request_throughput=len(ok) / duration,
        output_throughput=output_tokens / duration,
        mean_output_tokens=output_tokens / len(ok) if ok else math.nan,
        mean_prompt_tokens=sum(r.prompt_tokens for r in ok) / len(ok) if ok else math.nan,
        mean_cached_tokens=sum(r.cached_tokens for r in ok) / len(ok) if ok else math.nan,
        latency_ms={
            "ttft": summarize([r.ttft for r in ok]),
            "tpot": summarize(tpot),
            "itl": summarize([gap for r in ok for gap in r.itl]),
            "e2el": summarize([r.e2el for r in ok]),
        },
        errors=sorted({r.error for r in results if not r.ok}),
    )


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestResult:
    """Stream one chat completion, timing every content chunk as it arrives."""
    result = RequestResult(ok=False)
    start = time.perf_counter()
    last = prev_content = start
    saw_done = False
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                result.error = f"HTTP {response.status_code}: {text[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and SSE comments
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    saw_done = True
                    break
                now = time.perf_counter()
                last = now
                chunk = json.loads(payload)
                if "error" in chunk:
                    result.error = f"stream error: {chunk['error'].get('message', chunk['error'])}"
                    return result
                choices = chunk.get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - prev_content)
                    prev_content = now
                if usage := chunk.get("usage"):
                    result.output_tokens = int(usage["completion_tokens"])
                    result.prompt_tokens = int(usage["prompt_tokens"])
                    result.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    if not saw_done:
        result.error = "stream ended without data: [DONE]"
    elif result.ttft == 0.0:
        result.error = "no content chunk"
    elif result.output_tokens == 0:
        result.error = "no usage chunk"
    else:
        result.ok = True
        result.e2el = last - start
    return result


def request_body(prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.model_name:
        body["model"] = args.model_name
    if args.ignore_eos:
        body["ignore_eos"] = True
    return body


def prompts_for(num: int, seed: int, first: int) -> list[str]:
    """The same deterministic prompt sequence for every level, so levels differ only in concurrency.

    Each request is numbered (`first`, `first` + 1, ... across the whole run) at the start of its
    message, so no request repeats an earlier one: the server's prefix cache can only reuse what real
    traffic shares, the chat template's system prompt, and a later level gains nothing from an earlier."""
    order = list(PROMPTS)
    random.Random(seed).shuffle(order)
    return [f"Request {first + i}: {order[i % len(order)]}" for i in range(num)]


async def run_level(
    client: httpx.AsyncClient, url: str, concurrency: int, first: int, args: argparse.Namespace
) -> LevelResult:
    num = args.num_prompts or max(8, 2 * concurrency)
    prompts = prompts_for(num, args.seed, first)
    arrivals = random.Random(args.seed + 1)  # Poisson gaps, reproducible
    gate = asyncio.Semaphore(concurrency)

    async def limited(prompt: str) -> RequestResult:
        async with gate:
            return await one_request(client, url, request_body(prompt, args))

    start = time.perf_counter()
    tasks: list[asyncio.Task[RequestResult]] = []
    for prompt in prompts:
        tasks.append(asyncio.create_task(limited(prompt)))
        if math.isfinite(args.request_rate):
            await asyncio.sleep(arrivals.expovariate(args.request_rate))
    results = await asyncio.gather(*tasks)
    return level_result(concurrency, list(results), time.perf_counter() - start)


async def run_all(
    targets: dict[str, str], args: argparse.Namespace, started: dict[str, Server] | None = None
) -> dict[str, list[LevelResult]]:
    """Every level on every server (name -> base URL), the same prompts for each at a level.

    The servers this script `started` (by name) are paused while another one is measured."""
    started = started or {}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    biggest = max(args.concurrency)
    limits = httpx.Limits(max_connections=biggest + 4, max_keepalive_connections=biggest + 4)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    urls = {name: f"{base}/v1/chat/completions" for name, base in targets.items()}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        for name, url in urls.items():
            # Warm-up, as vLLM does: checks the route works and pays any first-request costs.
            warm = await one_request(client, url, request_body(PROMPTS[0], args) | {"max_tokens": 4})
            if not warm.ok:
                raise RuntimeError(f"{name}: warm-up request failed: {warm.error}")
        levels: dict[str, list[LevelResult]] = {name: [] for name in urls}
        sent = 0
        for i, concurrency in enumerate(args.concurrency):
            # Whoever goes first at a level alternates, so neither always runs on a machine the
            # other has just warmed (or heated).
            order = list(urls) if i % 2 == 0 else list(reversed(urls))
            for name in order:
                for other, server in started.items():
                    server.pause(other != name)
                result = await run_level(client, urls[name], concurrency, sent, args)
                print(
                    f"{name} concurrency {concurrency}: {result.completed}/{result.num_prompts} ok in "
                    f"{result.duration_s:.1f} s, {result.output_throughput:.1f} output tokens/s",
                    file=sys.stderr,
                    flush=True,
                )
                levels[name].append(result)
            sent += result.num_prompts  # both servers got the same numbered prompts at this level
        return levels


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server child process on a free loopback port, its output in a log file, healthy once
    `GET /health` answers 200 (both WiCore and llama-server answer 503 while loading)."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str], startup_timeout: float) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-bench-serve-", suffix=".log")[1])
        with self.log.open("wb") as log:
            # Its own process group, so pause() reaches every process of it (WiCore's engine worker).
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.paused = False
        self._wait_healthy(startup_timeout)

    def pause(self, paused: bool) -> None:
        """Stop (or continue) the whole server, so that it takes no CPU while another is measured."""
        if paused != self.paused and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)
            self.paused = paused

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{self.name} server not healthy after {timeout:.0f} s:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the server's main process (both shut down cleanly on it), SIGKILL if that hangs.

        Not to its whole group: WiCore's HTTP process then sees its engine worker die and starts a
        new one, which outlives it."""
        self.pause(False)  # a stopped process would not act on SIGTERM
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.unlink(missing_ok=True)


def wicore_server(args: argparse.Namespace) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "wicore.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if args.model:
        cmd += ["--model", args.model]
    if args.config:
        cmd += ["--config", args.config]
    # A benchmark client is one IP sending hundreds of requests: the default 100/min limit would 429 it.
    env = os.environ | {
        "WICORE_API__RATE_LIMIT_PER_MINUTE": "0",
        "WICORE_SCHEDULER__REQUEST_TIMEOUT": "600",
        "WICORE_NUM_THREADS": str(args.threads),
    }
    return Server(WICORE, cmd, port, env, args.startup_timeout)


def amx_cpu() -> bool:
    """Whether this CPU has AMX (Intel Sapphire Rapids and later)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def llama_server(args: argparse.Namespace) -> Server:
    from wicore.models import registry

    exe = args.llama_cpp_bin / "llama-server"
    if not exe.is_file():
        raise SystemExit(f"{exe} is missing: `make bench-peers` builds it")
    port = free_port()
    # -c is the KV cache of all slots together, split evenly: each slot holds one request's prompt
    # (the chat template's system prompt and a numbered question, well under 512 tokens) and answer.
    ctx = args.peer_parallel * (512 + args.max_tokens)
    cmd = [str(exe), "-m", str(registry.resolve(args.model or registry.DEFAULT_MODEL)), "--host", "127.0.0.1",
           "--port", str(port), "-t", str(args.threads), "-np", str(args.peer_parallel), "-c", str(ctx)]  # fmt: skip
    if amx_cpu():
        # llama.cpp's AMX matmul (ggml_backend_amx_mul_mat) segfaults on such CPUs; it is one of the
        # "extra" weight buffer types, as the repacked layouts are, and --no-repack turns them off.
        cmd.append("--no-repack")
    return Server(PEER, cmd, port, dict(os.environ), args.startup_timeout)


def finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as None, which strict JSON parsers accept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def cell(stats: dict[str, float]) -> str:
    return " / ".join(f"{stats[k]:.0f}" for k in ("mean", *(f"p{p}" for p in PERCENTILES)))


def markdown_table(levels: list[LevelResult]) -> str:
    stats = "mean / p50 / p90 / p99"
    head = (
        "| concurrency | ok / sent | duration s | req/s | output tok/s | mean out tok | mean prompt tok (cached) "
        f"| TTFT ms {stats} | TPOT ms {stats} | ITL ms {stats} | E2EL ms {stats} |"
    )
    rows = [head, "|" + "---|" * 11]
    for lv in levels:
        lat = lv.latency_ms
        rows.append(
            f"| {lv.concurrency} | {lv.completed} / {lv.num_prompts} | {lv.duration_s:.1f} "
            f"| {lv.request_throughput:.2f} | {lv.output_throughput:.1f} | {lv.mean_output_tokens:.1f} "
            f"| {lv.mean_prompt_tokens:.1f} ({lv.mean_cached_tokens:.1f}) "
            f"| {cell(lat['ttft'])} | {cell(lat['tpot'])} | {cell(lat['itl'])} | {cell(lat['e2el'])} |"
        )
    return "\n".join(rows)


def scaling_ratio(levels: list[LevelResult], high: int = 16, low: int = 1) -> float | None:
    by_c = {lv.concurrency: lv.output_throughput for lv in levels}
    if high in by_c and low in by_c and by_c[low] > 0:
        return by_c[high] / by_c[low]
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one on a free loopback port)")
    p.add_argument("--model", default=None, help="model the started server loads (default: the server's)")
    p.add_argument("--model-name", default=None, help="`model` field sent in requests (default: omitted)")
    p.add_argument("--config", default=None, help="config file for the started server")
    p.add_argument("--concurrency", default=DEFAULT_CONCURRENCY, help="comma-separated levels")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per level (default: max(8, 2 x level))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--request-rate", type=float, default=math.inf, help="Poisson arrivals/s (default: inf)")
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-tokens (vLLM extension)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for the server to become healthy")
    p.add_argument("--api-key", default=os.environ.get("WICORE_API_KEY"), help="Bearer key (env WICORE_API_KEY)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--peer", action="store_true", help="also measure llama.cpp's llama-server (implies --ignore-eos)")
    p.add_argument("--peer-parallel", type=int, default=16, help="llama-server slots (-np)")
    p.add_argument("--no-wicore", action="store_true", help="with --peer: measure llama-server alone")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads of the servers started here")
    p.add_argument("--llama-cpp-bin", type=Path, default=LLAMA_CPP_BIN, help="folder holding llama-server")
    args = p.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        p.error(f"--concurrency: expected comma-separated integers, got {args.concurrency!r}")
    if any(c < 1 for c in args.concurrency) or (args.num_prompts is not None and args.num_prompts < 1):
        p.error("--concurrency and --num-prompts must be positive")
    if not args.request_rate > 0:
        p.error("--request-rate must be positive (inf: all at once)")
    if args.no_wicore and not args.peer:
        p.error("--no-wicore leaves nothing to measure without --peer")
    if args.peer and not args.ignore_eos:
        # Greedy on both, yet their numerics differ, so one may stop at EOS where the other goes on;
        # equal token counts make the throughputs compare equal work.
        args.ignore_eos = True
        print("--peer: sending ignore_eos, so every request generates --max-tokens on both", file=sys.stderr)
    return args


def comparison_table(ours: list[LevelResult], peer: list[LevelResult]) -> str:
    rows = [
        f"| concurrency | {WICORE} output tok/s | {PEER} output tok/s | ratio {WICORE}/{PEER} "
        f"| mean out tok {WICORE} / {PEER} | mean prompt tok {WICORE} / {PEER} |",
        "|" + "---|" * 6,
    ]
    for w, p in zip(ours, peer, strict=True):
        ratio = w.output_throughput / p.output_throughput if p.output_throughput > 0 else math.nan
        rows.append(
            f"| {w.concurrency} | {w.output_throughput:.1f} | {p.output_throughput:.1f} | {ratio:.2f}x "
            f"| {w.mean_output_tokens:.1f} / {p.mean_output_tokens:.1f} "
            f"| {w.mean_prompt_tokens:.1f} / {p.mean_prompt_tokens:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers: list[Server] = []
    targets: dict[str, str] = {}
    try:
        if not args.no_wicore:
            if args.url:
                targets[WICORE] = args.url.rstrip("/")
            else:
                servers.append(wicore_server(args))
                targets[WICORE] = servers[-1].url
        if args.peer:
            servers.append(llama_server(args))
            targets[PEER] = servers[-1].url
        started = {server.name: server for server in servers}
        results = asyncio.run(run_all(targets, args, started))
    finally:
        for server in servers:
            server.stop()
    ratios: dict[str, float | None] = {}
    for name, levels in results.items():
        if len(results) > 1:
            print(f"\n{name}")
        print(markdown_table(levels))
        ratios[name] = scaling_ratio(levels)
    if (ratio := ratios.get(WICORE)) is not None:
        verdict = "meets" if ratio >= 3.0 else "misses"
        print(f"\noutput throughput, concurrency 16 / 1: {ratio:.2f}x ({verdict} the >= 3x target)")
    if (ratio := ratios.get(PEER)) is not None:
        print(f"{PEER} output throughput, concurrency 16 / 1: {ratio:.2f}x")
    if WICORE in results and PEER in results:
        print(f"\n{comparison_table(results[WICORE], results[PEER])}")
        print(f"WiCore kernels: {build.TARGET}")
    for name, levels in results.items():
        for lv in levels:
            for error in lv.errors:
                print(f"{name} concurrency {lv.concurrency} error: {error}", file=sys.stderr)
    if args.json:
        report: dict[str, Any] = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "api_key"},
        }
        if WICORE in results:
            report |= {"levels": [asdict(lv) for lv in results[WICORE]], "ratio_c16_c1": ratios[WICORE]}
        if PEER in results:
            report["peer"] = {"levels": [asdict(lv) for lv in results[PEER]], "ratio_c16_c1": ratios[PEER]}
        Path(args.json).write_text(json.dumps(finite(report), indent=2) + "\n", encoding="utf-8")
    return 0 if all(lv.failed == 0 for levels in results.values() for lv in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
