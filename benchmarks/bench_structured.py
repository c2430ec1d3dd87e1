"""Decode speed of schema-constrained requests against unconstrained ones, through the server.

Starts `wicore serve` (or uses `--url`) and, at each concurrency level, sends the same numbered chat
prompts twice, streamed at temperature 1: once free (`ignore_eos`), once with a `response_format`
JSON schema no output can complete within `--max-tokens` (an array of at least 1000 small objects),
so both generate exactly `--max-tokens` tokens and do equal work (each its own numbered prompts, the
order alternating by level). Timed at the client as
bench_serving.py times it; reported per level: output tokens/s and mean TPOT of each, and the ratio
constrained / free (the target is >= 0.9: masks are computed while the forward pass runs).

    python benchmarks/bench_structured.py [--concurrency 1,16] [--num-prompts N] [--max-tokens 64]
        [--url URL] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import httpx
from bench_serving import LevelResult, level_result, one_request, prompts_for, wicore_server

SCHEMA = {
    "type": "array",
    "minItems": 1000,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    },
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}


def body(prompt: str, max_tokens: int, constrained: bool) -> dict[str, Any]:
    b: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt + " Answer as a JSON list of people."}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if constrained:
        b["response_format"] = FORMAT
    return b


async def level(
    client: httpx.AsyncClient,
    url: str,
    concurrency: int,
    prompts: list[str],
    args: argparse.Namespace,
    constrained: bool,
) -> LevelResult:
    gate = asyncio.Semaphore(concurrency)

    async def limited(prompt: str) -> Any:
        async with gate:
            return await one_request(client, url, body(prompt, args.max_tokens, constrained))

    start = time.perf_counter()
    results = await asyncio.gather(*(limited(p) for p in prompts))
    return level_result(concurrency, list(results), time.perf_counter() - start)


async def run(base: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    url = f"{base}/v1/chat/completions"
    rows = []
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        for constrained in (False, True):  # warm-up: the first constrained request builds the worker's vocabulary
            warm = await one_request(client, url, body("Hello.", 4, constrained))
            if not warm.ok:
                raise RuntimeError(f"warm-up failed: {warm.error}")
        sent = 0
        for i, concurrency in enumerate(args.concurrency):
            num = args.num_prompts or max(4, concurrency)
            results: dict[bool, LevelResult] = {}
            # Who goes first alternates, and each run has its own numbered prompts: neither gains from
            # the other's prefix-cache entries or always runs on a machine the other has warmed.
            for constrained in (i % 2 == 1, i % 2 == 0):
                prompts = prompts_for(num, 0, sent)
                sent += num
                results[constrained] = await level(client, url, concurrency, prompts, args, constrained)
            free, guided = results[False], results[True]
            for name, r in (("free", free), ("constrained", guided)):
                if r.failed:
                    raise RuntimeError(f"{name} at concurrency {concurrency}: {r.errors}")
            row = {
                "concurrency": concurrency,
                "free_tok_s": free.output_throughput,
                "constrained_tok_s": guided.output_throughput,
                "free_tpot_ms": free.latency_ms["tpot"]["mean"],
                "constrained_tpot_ms": guided.latency_ms["tpot"]["mean"],
                "ratio": guided.output_throughput / free.output_throughput,
            }
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: start one on a free loopback port)")
    p.add_argument("--model", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per level (default: max(4, level))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    server = None if args.url else wicore_server(args)
    try:
        rows = asyncio.run(run(args.url.rstrip("/") if args.url else server.url, args))  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.stop()
    print("| concurrency | free tok/s | constrained tok/s | free TPOT ms | constrained TPOT ms | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['free_tok_s']:.1f} | {r['constrained_tok_s']:.1f} | {r['free_tpot_ms']:.1f} "
            f"| {r['constrained_tpot_ms']:.1f} | {r['ratio']:.2f} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
