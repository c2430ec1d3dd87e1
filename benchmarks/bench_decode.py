"""Single-stream speed: prefill of a 512-token prompt (pp512) and 128 decoded tokens (tg128).

WiCore and, when `llama-cpp-python` is installed (`make bench-peers`), llama.cpp
run the same GGUF on the same token ids with the same thread count, each in
its own child process (so peak RSS is each engine's own), in the same run.
The two stay loaded and take turns, one timed repetition each, so drifting load on a
shared machine hits both alike. Reported: median tokens/s over --runs, peak RSS, and the ratio
WiCore / llama.cpp.  As llama-bench does, tokenisation and sampling are not
timed for llama.cpp; WiCore's decode time includes its (greedy) sampling.

    python benchmarks/bench_decode.py [--model NAME] [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

TEXT = (
    "The history of computing is a story of abstraction layered upon abstraction. "
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    "Engineers measure twice and cut once; they profile before they optimise. "
)


def prompt_ids(model: str, n: int) -> list[int]:

    from wicore.models import registry
    from wicore.tokenizer import Tokenizer

    path = registry.resolve(model)
    tok = Tokenizer.from_gguf(path)
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(TEXT, add_special_tokens=False)
    return ids[:n]


def wicore_runner(model: str, ids: list[int], gen: int, threads: int) -> Callable[[], tuple[float, float]]:
    os.environ["WICORE_NUM_THREADS"] = str(threads)
    from wicore.engine.llm import LLM, Timings
    from wicore.engine.sampling import SamplingParams

    # No prefix cache: every repetition prefills the whole prompt, as llama.cpp's (reset) does below.
    llm = LLM(model, max_model_len=len(ids) + gen + 16, max_batch_tokens=len(ids), enable_prefix_caching=False)
    params = SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True)

    def once() -> tuple[float, float]:
        t = Timings()
        for _ in llm.stream(ids, params, t):
            pass
        return t.prompt_tps, t.decode_tps

    return once


def llama_cpp_runner(model: str, ids: list[int], gen: int, threads: int) -> Callable[[], tuple[float, float]]:
    import numpy as np
    from llama_cpp import Llama

    from wicore.models import registry

    n_ctx = len(ids) + gen + 16
    # n_batch = n_ctx: llama-cpp-python keeps n_batch rows of logits.
    llm = Llama(
        model_path=str(registry.resolve(model)), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
        n_threads_batch=threads, verbose=False,
    )  # fmt: skip

    def once() -> tuple[float, float]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - t0
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode = 0.0
        for _ in range(gen):
            t0 = time.perf_counter()
            llm.eval([tok])
            decode += time.perf_counter() - t0
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return len(ids) / prefill, gen / decode

    return once


RUNNERS = {"wicore": wicore_runner, "llama.cpp": llama_cpp_runner}


def child(engine: str, model: str, gen: int, threads: int) -> None:
    """Load once, then one timed repetition per `run` line on stdin; `quit` reports peak RSS."""
    ids = json.loads(sys.stdin.readline())
    once = RUNNERS[engine](model, ids, gen, threads)
    once()  # warm-up: caches, lazily mapped pages, thread pools
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        pp, tg = once()
        print(json.dumps({"pp": pp, "tg": tg}), flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


class Child:
    def __init__(self, engine: str, args: argparse.Namespace, ids: list[int]) -> None:
        self.engine = engine
        cmd = [sys.executable, __file__, "--child", engine, "--model", args.model, "--gen", str(args.gen),
               "--threads", str(args.threads)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._send(json.dumps(ids))
        if self._read() != "ready":
            raise RuntimeError(f"{engine} did not start")
        self.pp: list[float] = []
        self.tg: list[float] = []

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def run(self) -> None:
        self._send("run")
        r = json.loads(self._read())
        self.pp.append(r["pp"])
        self.tg.append(r["tg"])

    def finish(self) -> float:
        self._send("quit")
        rss = json.loads(self._read())["peak_rss_mb"]
        self.proc.wait()
        return rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (pp)")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens (tg)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    ap.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.model, args.gen, args.threads)

    ids = prompt_ids(args.model, args.prompt)
    engines = ["wicore"]
    if not args.no_peer:
        try:
            import llama_cpp  # noqa: F401

            engines.append("llama.cpp")
        except ImportError:
            print("llama-cpp-python is not installed (make bench-peers); measuring WiCore alone", file=sys.stderr)
    # Both engines stay loaded and take turns, so drifting machine load hits them alike;
    # each runs alone while timed.
    children = [Child(name, args, ids) for name in engines]
    for _ in range(args.runs):
        for c in children:
            c.run()
    rss = {c.engine: c.finish() for c in children}

    print(f"model {args.model}, {args.threads} threads, {platform.machine()}, {os.cpu_count()} cores, "
          f"median of {args.runs} alternating runs")  # fmt: skip
    print(f"| engine | pp{args.prompt} tok/s | tg{args.gen} tok/s | peak RSS MB |")
    print("|---|---|---|---|")
    med = {c.engine: (statistics.median(c.pp), statistics.median(c.tg)) for c in children}
    for name, (pp, tg) in med.items():
        print(f"| {name} | {pp:.1f} | {tg:.1f} | {rss[name]:.0f} |")
    if len(med) == 2:
        w, p = med["wicore"], med["llama.cpp"]
        print(f"| ratio wicore/llama.cpp | {w[0] / p[0]:.2f}x | {w[1] / p[1]:.2f}x | |")


if __name__ == "__main__":
    main()
