"""MAX's library kernels (the `max` wheel's Mojo packages) against WiCore's own, in one process.

1. `quantization.qmatmul_k.matmul_Q4_K` / `matmul_Q6_K` vs WiCore's `matmul` (mojo_kernels/matmul.mojo)
   on the real ffn_down matrices of a GGUF model (qwen2.5-coder-0.5b: 12 Q4_K and 12 Q6_K, each
   896 x 4864): M=1 (decode GEMV; --copies copies of the 12 matrices in turn, 118 / 172 MB, streamed
   from memory as in a decode step; GB/s of the file's weight bytes) and M=512 (prefill, GOPS =
   2MNK / s).  Each side packs the file's blocks into its own layout once, outside the timing; both
   quantise x on every call.
2. `linalg.matmul` float32 vs WiCore's `matmul_dense` on the BERT encoder's shapes (MiniLM: M=128
   tokens, hidden 384, FFN 1536), GFLOP/s; MAX with w as stored ([N, K], transpose_b) and with w
   transposed to [K, N] beforehand.

Outputs are checked against a float64 numpy reference (dequantised weights) before timing.  The
contenders run interleaved (A B A B ..., --rounds rounds, each a timed loop of ~--sample seconds)
and the table shows medians (and the best round), the ratio as the median of the per-round
ratios.  MAX's module (benchmarks/max_kernels.mojo) is built by wicore/kernels/build.py for the
kernels' target (~1-2 minutes the first time).

    python benchmarks/bench_max_kernels.py [--model qwen2.5-coder-0.5b-instruct] [--rounds 31] [--one-core] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader

from wicore.kernels import build
from wicore.kernels.matmul import matmul
from wicore.models import registry
from wicore.models.quant import DenseWeight, QuantWeight, repack

BENCH_DIR = Path(__file__).resolve().parent
MAX_FORMATS = {QT.Q4_K: 0, QT.Q6_K: 1}  # max_kernels.mojo's format codes
MAX_BLOCK_N = 32  # MAX packs 2 x (float32 lanes) weight rows together; 32 in an AVX-512 build


def max_kernels() -> ModuleType:
    return build.import_extension("max_kernels", build.build("max_kernels", source_dir=BENCH_DIR))


@dataclass
class QuantMatrix:
    name: str
    qtype: QT
    raw: np.ndarray  # the file's blocks, uint8 [N, row bytes]
    ours: QuantWeight
    packed: np.ndarray  # MAX's pack_b layout of raw, same size

    @property
    def shape(self) -> tuple[int, int]:
        return self.ours.shape


def copy(w: QuantMatrix) -> QuantMatrix:
    """The same matrix at other addresses (both layouts)."""
    ours = QuantWeight(w.ours.fmt, w.ours.shape, {k: v.copy() for k, v in w.ours.planes.items()})
    return QuantMatrix(w.name, w.qtype, w.raw, ours, w.packed.copy())


def load_matrices(model: str, qtype: QT, suffix: str, mk: ModuleType) -> list[QuantMatrix]:
    reader = GGUFReader(registry.resolve(model))
    found = []
    for t in reader.tensors:
        if t.tensor_type != qtype or not t.name.endswith(suffix):
            continue
        k, n = (int(d) for d in t.shape)
        raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(n, -1)
        ours = repack(raw, qtype, (n, k))
        assert isinstance(ours, QuantWeight)
        packed = np.zeros_like(raw)
        if n % MAX_BLOCK_N:
            raise SystemExit(f"{t.name}: N={n} is not a multiple of MAX's {MAX_BLOCK_N}-row blocks")
        mk.pack_b(raw, packed, np.array([MAX_FORMATS[qtype], n, raw.shape[1]], dtype=np.int64))
        found.append(QuantMatrix(t.name, qtype, raw, ours, packed))
    if not found:
        raise SystemExit(f"{model}: no {qtype.name} tensor named *{suffix}")
    return found


def max_qmatmul(mk: ModuleType, x: np.ndarray, w: QuantMatrix, out: np.ndarray) -> np.ndarray:
    n, k = w.shape
    dims = np.array([MAX_FORMATS[w.qtype], x.shape[0], n, k, w.packed.shape[1]], dtype=np.int64)
    mk.matmul_k(x, w.packed, out, dims)
    return out


def max_dense(mk: ModuleType, x: np.ndarray, w: np.ndarray, out: np.ndarray, transpose_b: bool) -> np.ndarray:
    n, k = w.shape if transpose_b else w.shape[::-1]
    mk.matmul_f32(x, w, out, np.array([x.shape[0], n, k, int(transpose_b)], dtype=np.int64))
    return out


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@dataclass
class Timing:
    median: float  # seconds per call
    best: float
    ratio: float  # the last contender's speed relative to this one: median over rounds of t / t_last


def interleaved(fns: list[Callable[[], object]], rounds: int, sample_s: float, calls: int = 1) -> list[Timing]:
    """Time the fns in turn (A B C A B C ...) for `rounds` rounds, a loop of ~sample_s each.

    Each fn makes `calls` calls; times are per call.  The ratio pairs the contenders within a
    round (they ran within ~0.1 s of each other), so it is less exposed than the times to the
    load that other processes put on the machine."""
    reps = []
    for fn in fns:
        fn()  # warm up: page faults, the thread pools, the caches
        t = time.perf_counter()
        fn()
        reps.append(max(1, int(sample_s / max(time.perf_counter() - t, 1e-7))))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            for _ in range(reps[i]):
                fn()
            times[i].append((time.perf_counter() - t) / reps[i] / calls)
    return [
        Timing(statistics.median(t), min(t), statistics.median(a / b for a, b in zip(t, times[-1], strict=True)))
        for t in times
    ]


def row(kernel: str, shape: str, work: float, t_max: Timing, t_ours: Timing, isa: str) -> tuple[str, ...]:
    """A table row: `work` (bytes or operations) per second / 1e9, median and best of the rounds."""

    def rate(t: Timing) -> str:
        return f"{work / t.median / 1e9:.1f} (best {work / t.best / 1e9:.1f})"

    return kernel, shape, rate(t_max), rate(t_ours), f"{t_max.ratio:.2f}", isa


class Bench:
    """The table being filled: rows, and the correctness checks that came before the timings."""

    def __init__(self, mk: ModuleType, rounds: int, sample_s: float) -> None:
        self.mk, self.rounds, self.sample_s = mk, rounds, sample_s
        self.rng = np.random.default_rng(0)
        self.rows: list[tuple[str, ...]] = []
        self.checks: list[str] = []

    def check(self, label: str, errors: dict[str, float], limit: float) -> None:
        self.checks.append(f"{label}: relative error " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        if max(errors.values()) > limit:
            raise SystemExit("output mismatch:\n" + "\n".join(self.checks))

    def quantised(self, model: str, qtype: QT, prefill: int, copies: int) -> None:
        mk, isa = self.mk, build.TARGET.isa
        mats = load_matrices(model, qtype, "ffn_down.weight", mk)
        n, k = mats[0].shape
        # Correctness first: both against x @ dequantised W (float64), at M=1 and at M=prefill
        # (MAX takes another path for M=1), on the first matrix.
        w0 = mats[0]
        deq = w0.ours.dequantize().astype(np.float64)
        for m in (1, prefill):
            x = self.rng.standard_normal((m, k), dtype=np.float32)
            ref = x.astype(np.float64) @ deq.T
            got_max = max_qmatmul(mk, x, w0, np.empty((m, n), np.float32))
            errors = {"MAX": rel_error(got_max, ref), "WiCore": rel_error(matmul(x, w0.ours), ref)}
            self.check(f"{qtype.name} {w0.name} M={m}", errors, 3e-2)

        # Decode: the matrices in turn, one GEMV each, `copies` copies of them so that they stream
        # from memory as a decode step's weights do, not from the 32 MB L3.
        x1 = self.rng.standard_normal((1, k), dtype=np.float32)
        o1 = np.empty((1, n), np.float32)
        decode = [copy(w) for w in mats for _ in range(copies)]

        def max_decode() -> None:
            for w in decode:
                max_qmatmul(mk, x1, w, o1)

        def ours_decode() -> None:
            for w in decode:
                matmul(x1, w.ours, o1)

        t_max, t_ours = interleaved([max_decode, ours_decode], self.rounds, self.sample_s, calls=len(decode))
        mb = len(decode) * w0.raw.nbytes / 1e6
        shape = f"M=1 N={n} K={k} ({len(decode)} matrices in turn, {mb:.0f} MB)"
        self.rows.append(row(f"{qtype.name} GEMV, GB/s of weights", shape, w0.raw.nbytes, t_max, t_ours, isa))

        # Prefill: one matrix, M rows.
        m = prefill
        xm = self.rng.standard_normal((m, k), dtype=np.float32)
        om = np.empty((m, n), np.float32)
        t_max, t_ours = interleaved(
            [lambda: max_qmatmul(mk, xm, w0, om), lambda: matmul(xm, w0.ours, om)], self.rounds, self.sample_s
        )
        self.rows.append(row(f"{qtype.name} GEMM, GOPS", f"M={m} N={n} K={k}", 2 * m * n * k, t_max, t_ours, isa))

    def dense(self, m: int, n: int, k: int) -> None:
        """out[M, N] = x[M, K] @ w[N, K]^T in float32."""
        mk = self.mk
        x = self.rng.standard_normal((m, k), dtype=np.float32)
        w = self.rng.standard_normal((n, k), dtype=np.float32)
        wt = np.ascontiguousarray(w.T)  # [K, N]: MAX's native B layout, transposed once
        dense = DenseWeight(w)
        ref = x.astype(np.float64) @ w.astype(np.float64).T
        o_a, o_b, o_c = (np.empty((m, n), np.float32) for _ in range(3))
        errors = {
            "MAX transpose_b": rel_error(max_dense(mk, x, w, o_a, True), ref),
            "MAX [K, N]": rel_error(max_dense(mk, x, wt, o_b, False), ref),
            "WiCore": rel_error(matmul(x, dense, o_c), ref),
        }
        self.check(f"f32 M={m} N={n} K={k}", errors, 1e-5)
        t_tb, t_kn, t_ours = interleaved(
            [
                lambda: max_dense(mk, x, w, o_a, True),
                lambda: max_dense(mk, x, wt, o_b, False),
                lambda: matmul(x, dense, o_c),
            ],
            self.rounds,
            self.sample_s,
        )
        for label, t_max in (("w [N, K], transpose_b", t_tb), ("w as [K, N]", t_kn)):
            kernel = f"f32 linalg.matmul ({label}), GFLOP/s"
            self.rows.append(row(kernel, f"M={m} N={n} K={k}", 2 * m * n * k, t_max, t_ours, build.TARGET.isa))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--sample", type=float, default=0.04, help="seconds per timed loop")
    p.add_argument("--prefill", type=int, default=512, help="M of the prefill matmuls")
    p.add_argument("--copies", type=int, default=4, help="copies of the matrices the GEMVs go through")
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    p.add_argument(
        "--one-core",
        action="store_true",
        help="pin the process to one core and run both sides on one thread: the kernels alone, without"
        " their thread pools (MAX's runtime sizes its pool by the affinity mask)",
    )
    args = p.parse_args()
    if args.one_core:  # before either module starts its threads
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        os.environ["WICORE_NUM_THREADS"] = "1"

    bench = Bench(max_kernels(), args.rounds, args.sample)
    for qtype in (QT.Q4_K, QT.Q6_K):
        bench.quantised(args.model, qtype, args.prefill, args.copies)
    # The BERT encoder's shapes (MiniLM): 128 tokens, hidden 384, FFN 1536.
    for m, n, k in ((128, 1536, 384), (128, 384, 384), (128, 384, 1536)):
        bench.dense(m, n, k)

    threads = os.environ.get("WICORE_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    cores = sorted(os.sched_getaffinity(0))
    lines = [
        f"{args.model}, {build.TARGET}, cores {cores}, {threads} WiCore thread(s), MAX: the runtime's pool,",
        f"{args.rounds} interleaved rounds (~{args.sample * 1e3:.0f} ms loops): median (best) rate. Ratio WiCore/MAX:",
        "speed, the median over rounds of t_MAX / t_WiCore within a round; > 1 means WiCore is faster.",
        "",
        "| kernel | shape | MAX | WiCore | ratio WiCore/MAX | ISA |",
        "|---|---|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in bench.rows),
        "",
        "Correctness (relative L2 error vs float64 numpy on the dequantised weights):",
        *(f"- {c}" for c in bench.checks),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
