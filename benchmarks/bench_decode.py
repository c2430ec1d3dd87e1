"""Single-stream speed: prefill of a 512-token prompt (pp512) and 128 decoded tokens (tg128).

WiCore and llama.cpp (`llama-bench`, built for this host by `make bench-peers`) run the same GGUF
with the same thread count in the same run, each in its own process, so peak RSS is each engine's
own. WiCore stays loaded in a child process; llama.cpp is its own benchmark tool, one fresh
`llama-bench -r 1` per measurement (with its own warm-up run). The two take turns, one timed
repetition each, so drifting load on a shared machine hits both alike. Reported: median tokens/s
over --runs, peak RSS, and the ratio WiCore / llama.cpp.

Both time the same work: pp is a cold 512-token prompt (WiCore's prefix cache is off, llama-bench
clears its KV cache), tg is 128 tokens decoded after that prompt (`llama-bench -d 512`, as WiCore
decodes after its prompt; llama-bench's default tg128 starts from an empty cache, which is cheaper).
As llama-bench does, tokenisation and sampling are not timed for llama.cpp (it feeds random token
ids); WiCore's decode time includes its (greedy) sampling.

    python benchmarks/bench_decode.py [--model NAME] [--runs 5] [--threads 2] [--llama-cpp-bin DIR]
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
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from wicore.kernels import build

# Where `make bench-peers` builds llama.cpp.
LLAMA_CPP_BIN = Path(__file__).resolve().parent.parent / ".peers" / "llama.cpp" / "build" / "bin"

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


RUNNERS = {"wicore": wicore_runner}


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


def amx_cpu() -> bool:
    """Whether this CPU has AMX (Intel Sapphire Rapids and later)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


class Engine(Protocol):
    """One side of the comparison: a timed repetition per run(), peak RSS in MB from finish()."""

    engine: str
    pp: list[float]
    tg: list[float]

    def run(self) -> None: ...

    def finish(self) -> float: ...


class LlamaBench:
    """llama.cpp measured by its own `llama-bench`, one fresh process per measurement.

    A process per repetition (rather than `-r N` in one) lets llama.cpp take turns with WiCore;
    llama-bench's warm-up run in every process keeps each timed repetition warm, as WiCore's is."""

    engine = "llama.cpp"

    def __init__(self, exe: Path, gguf: Path, prompt: int, gen: int, threads: int) -> None:
        self.prompt = prompt
        self.gen = gen
        self.base = [str(exe), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json"]
        if amx_cpu():
            # llama.cpp's AMX matmul (ggml_backend_amx_mul_mat) segfaults on such CPUs. It is one of
            # the "extra" weight buffer types, as the repacked layouts are; --repack 0 turns them off.
            self.base += ["--repack", "0"]
            print("AMX CPU: llama-bench runs with --repack 0 (its AMX path crashes)", file=sys.stderr)
        self.pp: list[float] = []
        self.tg: list[float] = []
        self.peak_rss_mb = 0.0
        self.build = ""

    def _tokens_per_s(self, *test: str) -> float:
        """Tokens/s of one llama-bench process running one test; notes that process's peak RSS."""
        # stderr to a file: llama-bench logs a lot there, and an unread pipe would fill and stall it.
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen([*self.base, *test], stdout=subprocess.PIPE, stderr=log)
            assert proc.stdout is not None
            out = proc.stdout.read()
            # wait4, not wait: the resource usage of this one child. RUSAGE_CHILDREN would be the
            # largest of all children so far, WiCore's child among them.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                log.seek(0)
                tail = log.read().decode("utf-8", "replace")[-2000:]
                raise RuntimeError(f"llama-bench {' '.join(test)} exited with {proc.returncode}:\n{tail}")
        self.peak_rss_mb = max(self.peak_rss_mb, usage.ru_maxrss / 1024)  # KiB on Linux
        (result,) = json.loads(out)
        self.build = f"{result['build_commit']} ({result['build_number']})"
        return float(result["samples_ts"][0])

    def run(self) -> None:
        self.pp.append(self._tokens_per_s("-p", str(self.prompt), "-n", "0"))
        self.tg.append(self._tokens_per_s("-p", "0", "-n", str(self.gen), "-d", str(self.prompt)))

    def finish(self) -> float:
        return self.peak_rss_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (pp)")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens (tg)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    ap.add_argument("--no-wicore", action="store_true", help="skip WiCore (llama.cpp alone)")
    ap.add_argument("--llama-cpp-bin", type=Path, default=LLAMA_CPP_BIN, help="folder holding llama-bench")
    ap.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.model, args.gen, args.threads)

    from wicore.models import registry

    engines: list[Engine] = []
    if not args.no_wicore:
        engines.append(Child("wicore", args, prompt_ids(args.model, args.prompt)))
    if not args.no_peer:
        exe = args.llama_cpp_bin / "llama-bench"
        if exe.is_file():
            engines.append(LlamaBench(exe, registry.resolve(args.model), args.prompt, args.gen, args.threads))
        else:
            print(f"{exe} is missing (make bench-peers builds it): no llama.cpp figures", file=sys.stderr)
    if not engines:
        ap.error("nothing to measure")
    # The engines take turns, one repetition each, so drifting machine load hits them alike;
    # each runs alone while timed.
    for _ in range(args.runs):
        for e in engines:
            e.run()
    rss = {e.engine: e.finish() for e in engines}

    print(f"model {args.model}, {args.threads} threads, {platform.machine()}, {os.cpu_count()} cores, "
          f"median of {args.runs} alternating runs")  # fmt: skip
    print(f"WiCore kernels: {build.TARGET}")
    for e in engines:
        if isinstance(e, LlamaBench):
            print(f"llama.cpp build {e.build}: llama-bench, tg{args.gen} after the {args.prompt}-token prompt (-d)")
    print(f"| engine | pp{args.prompt} tok/s | tg{args.gen} tok/s | peak RSS MB |")
    print("|---|---|---|---|")
    med = {e.engine: (statistics.median(e.pp), statistics.median(e.tg)) for e in engines}
    for name, (pp, tg) in med.items():
        print(f"| {name} | {pp:.1f} | {tg:.1f} | {rss[name]:.0f} |")
    if len(med) == 2:
        w, p = med["wicore"], med["llama.cpp"]
        ratios = f"{w[0] / p[0]:.2f}x | {w[1] / p[1]:.2f}x | {rss['wicore'] / rss['llama.cpp']:.2f}x"
        print(f"| ratio wicore/llama.cpp | {ratios} |")


if __name__ == "__main__":
    main()
