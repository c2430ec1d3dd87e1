"""Single-stream speed: prefill of a 512-token prompt (pp512) and 128 decoded tokens (tg128).

WiCore and, when `llama-cpp-python` is installed (`make bench-peers`), llama.cpp
run the same GGUF on the same token ids with the same thread count, each in
its own child process (so peak RSS is each engine's own), in the same run.
Reported: median tokens/s over --runs repetitions, peak RSS, and the ratio
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

TEXT = (
    "The history of computing is a story of abstraction layered upon abstraction. "
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    "Engineers measure twice and cut once; they profile before they optimise. "
)


def prompt_ids(model: str, n: int) -> list[int]:
    import gguf

    from wicore.models import registry
    from wicore.tokenizer import Tokenizer

    path = registry.resolve(model)
    tok = Tokenizer.from_gguf(path, reader=gguf.GGUFReader(path))
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(TEXT, add_special_tokens=False)
    return ids[:n]


def run_wicore(model: str, ids: list[int], gen: int, runs: int) -> dict:
    from wicore.engine.llm import LLM, Timings
    from wicore.engine.sampling import SamplingParams

    llm = LLM(model, max_model_len=len(ids) + gen + 16, max_batch_tokens=len(ids))
    params = SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True)
    pp, tg = [], []
    for i in range(runs + 1):  # the first run warms caches and is dropped
        t = Timings()
        for _ in llm.stream(ids, params, t):
            pass
        if i:
            pp.append(t.prompt_tps)
            tg.append(t.decode_tps)
    return {"pp": pp, "tg": tg}


def run_llama_cpp(model: str, ids: list[int], gen: int, runs: int, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    from wicore.models import registry

    llm = Llama(
        model_path=str(registry.resolve(model)),
        n_ctx=len(ids) + gen + 16,
        n_batch=len(ids) + gen + 16,  # llama-cpp-python keeps n_batch rows of logits
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    pp, tg = [], []
    for i in range(runs + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode = 0.0
        for _ in range(gen):
            t2 = time.perf_counter()
            llm.eval([tok])
            decode += time.perf_counter() - t2
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if i:
            pp.append(len(ids) / (t1 - t0))
            tg.append(gen / decode)
    return {"pp": pp, "tg": tg}


def child(args: argparse.Namespace) -> None:
    ids = json.loads(sys.stdin.read())
    if args.engine == "wicore":
        result = run_wicore(args.model, ids, args.gen, args.runs)
    else:
        result = run_llama_cpp(args.model, ids, args.gen, args.runs, args.threads)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def spawn(engine: str, args: argparse.Namespace, ids: list[int]) -> dict | None:
    cmd = [sys.executable, __file__, "--child", engine, "--model", args.model, "--runs", str(args.runs),
           "--gen", str(args.gen), "--threads", str(args.threads)]  # fmt: skip
    proc = subprocess.run(cmd, input=json.dumps(ids), capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{engine} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (pp)")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens (tg)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    ap.add_argument("--child", choices=["wicore", "llama.cpp"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.engine = args.child
        return child(args)

    ids = prompt_ids(args.model, args.prompt)
    results = {"wicore": spawn("wicore", args, ids)}
    if not args.no_peer:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama-cpp-python is not installed (make bench-peers); measuring WiCore alone", file=sys.stderr)
        else:
            results["llama.cpp"] = spawn("llama.cpp", args, ids)

    print(f"model {args.model}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"median of {args.runs} runs")  # fmt: skip
    print(f"| engine | pp{args.prompt} tok/s | tg{args.gen} tok/s | peak RSS MB |")
    print("|---|---|---|---|")
    med = {}
    for name, r in results.items():
        if r is None:
            continue
        med[name] = (statistics.median(r["pp"]), statistics.median(r["tg"]))
        print(f"| {name} | {med[name][0]:.1f} | {med[name][1]:.1f} | {r['peak_rss_mb']:.0f} |")
    if "wicore" in med and "llama.cpp" in med:
        w, p = med["wicore"], med["llama.cpp"]
        print(f"| ratio wicore/llama.cpp | {w[0] / p[0]:.2f}x | {w[1] / p[1]:.2f}x | |")


if __name__ == "__main__":
    main()
