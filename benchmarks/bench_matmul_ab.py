"""A/B of two or more builds of the matmul kernel module on one core, interleaved in one process.

Each argument is a built `matmul.so` (e.g. from `WICORE_BUILD_DIR/<hash>/`); the first is the
reference.  On qwen2.5-coder-0.5b's real matrices (SUFFIX), per format: the largest difference of
each build's output from the first's (relative to its largest value: 0 means bit-identical), then
the decode GEMV (M=1, --copies copies of up to 12 matrices in turn, streamed from memory; GB/s of
the file's bytes) and the M=--prefill GEMM (GOPS), the builds taking turns (A B A B ...) for
--rounds rounds: median rate, and the median over rounds of t_first / t_build (> 1: faster than
the first).  No thread pool: one thread, pinned to one core.

    python benchmarks/bench_matmul_ab.py OLD.so NEW.so [--formats Q4_K,Q6_K] [--rounds 21]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader

from wicore.kernels import build
from wicore.models import registry
from wicore.models.quant import QuantWeight, repack

# The tensors timed per format (qwen's Q4_K / Q6_K ffn_down, Q5_0 ffn_gate); any tensor of it otherwise.
SUFFIX = {"Q4_K": "ffn_down.weight", "Q6_K": "ffn_down.weight", "Q8_0": "ffn_down.weight", "Q5_0": "ffn_gate.weight"}


def matrices(reader: GGUFReader, qtype: QT, suffix: str, limit: int = 12) -> list[tuple[QuantWeight, int]]:
    found = []
    for t in reader.tensors:
        if t.tensor_type == qtype and t.name.endswith(suffix):
            k, n = (int(d) for d in t.shape)
            raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(n, -1)
            w = repack(raw, qtype, (n, k))
            assert isinstance(w, QuantWeight)
            found.append((w, raw.nbytes))
            if len(found) == limit:
                break
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("builds", nargs="+", type=Path)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--formats", default="Q4_K,Q6_K,Q5_0", help="qwen's only Q8_0 matrix is the 152k-row embedding")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--prefill", type=int, default=512)
    args = p.parse_args()
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    mods = [build.import_extension("matmul", path) for path in args.builds]
    reader = GGUFReader(registry.resolve(args.model))
    rng = np.random.default_rng(0)

    def call(mod, x: np.ndarray, w: QuantWeight, o: np.ndarray) -> None:
        mod.matmul(x, w.descriptor, o, o, (x.shape[0], 0, w.shape[0], 0, 0))

    for name in args.formats.split(","):
        mats = matrices(reader, QT[name], SUFFIX[name]) or matrices(reader, QT[name], "weight")
        if not mats:
            raise SystemExit(f"{args.model}: no {name} tensor")
        w0, nbytes = mats[0]
        n, k = w0.shape
        for m in (1, 5, 64):
            x = rng.standard_normal((m, k), dtype=np.float32)
            outs = []
            for mod in mods:
                o = np.zeros((m, n), np.float32)
                call(mod, x, w0, o)
                outs.append(o)
            diffs = [float(np.abs(o - outs[0]).max() / np.abs(outs[0]).max()) for o in outs[1:]]
            print(f"{name} {n}x{k} M={m}: max difference from the first build {', '.join(f'{d:.1e}' for d in diffs)}")
        decode = [
            QuantWeight(w.fmt, w.shape, {p: a.copy() for p, a in w.planes.items()}) for w, _ in mats
        ] * args.copies
        x1 = rng.standard_normal((1, k), dtype=np.float32)
        o1 = np.empty((1, n), np.float32)
        xm = rng.standard_normal((args.prefill, k), dtype=np.float32)
        om = np.empty((args.prefill, n), np.float32)
        cases = [
            ("GEMV GB/s", lambda mod, x=x1, ws=decode, o=o1: [call(mod, x, w, o) for w in ws], nbytes * len(decode)),
            (f"GEMM M={args.prefill} GOPS", lambda mod, x=xm, w=w0, o=om: call(mod, x, w, o), 2 * args.prefill * n * k),
        ]
        for label, fn, work in cases:
            reps = []
            for mod in mods:
                fn(mod)
                t = time.perf_counter()
                fn(mod)
                reps.append(max(1, int(0.05 / (time.perf_counter() - t))))
            times: list[list[float]] = [[] for _ in mods]
            for _ in range(args.rounds):
                for i, mod in enumerate(mods):
                    t = time.perf_counter()
                    for _ in range(reps[i]):
                        fn(mod)
                    times[i].append((time.perf_counter() - t) / reps[i])
            cells = []
            for ts in times:
                ratio = statistics.median(a / b for a, b in zip(times[0], ts, strict=True))
                cells.append(f"{work / statistics.median(ts) / 1e9:.1f} (x{ratio:.2f})")
            print(f"{name} {label} N={n} K={k}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
