"""Memory read bandwidth of this machine: the roofline that decode speed is measured against.

Decode reads every weight once per token, so tokens/s <= read bandwidth / bytes of weights read.
Each of --procs processes sums its own 256 MiB array (numpy, one thread each) --reps times; the
best rate per process is summed. Also prints the decode bytes per token of the bundled models.

    python benchmarks/bench_bandwidth.py [--procs 1,2] [--reps 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np

from wicore.kernels.weights import Weight
from wicore.models import registry
from wicore.models.prepared import load_prepared


def read_rate(reps: int) -> float:
    a = np.ones(1 << 25, dtype=np.uint64)  # 256 MiB
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def decode_bytes(model: str) -> int:
    """Bytes of weights one decoded token reads: every layer matrix and the output matrix."""
    _, w = load_prepared(registry.resolve(model))
    mats: list[Weight] = [w.output]
    for layer in w.layers:
        mats += [layer.wqkv, layer.wo, layer.w_gate_up, layer.w_down]
    return sum(m.nbytes for m in mats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="1,2", help="comma-separated process counts")
    p.add_argument("--reps", type=int, default=8)
    args = p.parse_args()
    for n in (int(v) for v in args.procs.split(",")):
        with mp.get_context("spawn").Pool(n) as pool:
            rates = pool.map(read_rate, [args.reps] * n)
        print(f"{n} reader(s): {sum(rates):.1f} GB/s ({', '.join(f'{r:.1f}' for r in rates)})")
    for model in ("qwen2.5-coder-0.5b-instruct", "gemma-3-270m"):
        print(f"{model}: {decode_bytes(model) / 1e6:.0f} MB of weights read per decoded token")


if __name__ == "__main__":
    main()
