"""Embedding throughput: sentences/s for calls of 1, 16 and 64 sentences (all-MiniLM-L6-v2).

WiCore and, when sentence-transformers and torch are installed, sentence-transformers on
torch (float32, CPU) embed the same 64 sentences (8 to ~60 tokens) with the same thread
count, each in its own child process, in the same run.  One timed repetition embeds all
64 sentences in calls of B; the engines take turns, so drifting load on a shared machine
hits both alike.  Reported: median sentences/s over --runs and the ratio WiCore / torch.

    python benchmarks/bench_embed.py [--runs 7] [--threads 2] [--batches 1 16 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

MODEL = "all-minilm-l6-v2"
SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome and everyone in the cinema loved it.",
    "Stock markets fell sharply today after the central bank raised interest rates again.",
    "机器学习是人工智能的核心技术之一。",
    "def add(a, b):\n    return a + b",
    "How do I reset my password if I no longer have access to the email address on my account?",
    "The cat sat on the mat.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a "
    "by-product, and it takes place mainly in the chloroplasts of plant leaves.",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days' ORDER BY name;",
    "Please summarise the attached quarterly report in three bullet points.",
    "深度学习是一种基于神经网络的机器学习方法。",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Vector databases store embeddings and answer nearest-neighbour queries quickly, which makes them a "
    "common building block of retrieval-augmented generation systems.",
    "It rained all weekend.",
    "for i in range(10): print(i * i)",
    "Large language models are trained on huge text corpora to predict the next token.",
]
TEXTS = [f"{s} ({i})" for i in range(4) for s in SENTENCES]  # 64 distinct sentences


def wicore_runner(threads: int) -> Callable[[list[str], int], None]:
    os.environ["WICORE_NUM_THREADS"] = str(threads)
    from wicore.models.embedding import EmbeddingModel

    model = EmbeddingModel.load(MODEL)

    def embed(texts: list[str], batch: int) -> None:
        for i in range(0, len(texts), batch):
            model.embed(texts[i : i + batch])

    return embed


def torch_runner(threads: int) -> Callable[[list[str], int], None]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    from wicore.models import registry

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(registry.resolve_embedding(MODEL)), device="cpu")

    def embed(texts: list[str], batch: int) -> None:
        for i in range(0, len(texts), batch):
            chunk = texts[i : i + batch]
            model.encode(chunk, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)

    return embed


RUNNERS = {"wicore": wicore_runner, "sentence-transformers": torch_runner}


def child(engine: str, threads: int) -> None:
    """Load once, then one timed repetition per `run B` line on stdin."""
    embed = RUNNERS[engine](threads)
    embed(TEXTS, 16)  # warm-up: kernels, caches, thread pools
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd != "run":
            break
        t0 = time.perf_counter()
        embed(TEXTS, int(arg))
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


class Child:
    def __init__(self, engine: str, threads: int) -> None:
        self.engine = engine
        cmd = [sys.executable, __file__, "--child", engine, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._read() != "ready":
            raise RuntimeError(f"{engine} did not start")
        self.rates: dict[int, list[float]] = {}

    def _read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def run(self, batch: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {batch}\n")
        self.proc.stdin.flush()
        seconds = json.loads(self._read())["seconds"]
        self.rates.setdefault(batch, []).append(len(TEXTS) / seconds)

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--no-peer", action="store_true", help="skip sentence-transformers")
    ap.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.threads)

    engines = ["wicore"]
    if not args.no_peer:
        try:
            import sentence_transformers  # noqa: F401
            import torch  # noqa: F401

            engines.append("sentence-transformers")
        except ImportError:
            print("sentence-transformers / torch are not installed; measuring WiCore alone", file=sys.stderr)
    children = [Child(name, args.threads) for name in engines]
    for _ in range(args.runs):
        for batch in args.batches:
            for c in children:
                c.run(batch)
    for c in children:
        c.finish()

    print(f"{MODEL}, {len(TEXTS)} sentences, {args.threads} threads, {platform.machine()}, "
          f"{os.cpu_count()} cores, median of {args.runs} alternating runs")  # fmt: skip
    print("| engine | " + " | ".join(f"batch {b} sent/s" for b in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    med = {c.engine: [statistics.median(c.rates[b]) for b in args.batches] for c in children}
    for name, rates in med.items():
        print(f"| {name} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")
    if len(med) == 2:
        ratios = [w / t for w, t in zip(med["wicore"], med["sentence-transformers"], strict=True)]
        print("| ratio wicore/torch | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


if __name__ == "__main__":
    main()
