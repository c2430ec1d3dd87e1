"""The engine: model, KV cache, scheduler and runner, built in one place and stepped in one loop.

The serving worker (`engine/worker.py`) and the offline `LLM` (`engine/llm.py`)
both drive an EngineCore, so benchmarks measure what the server runs.  The core
takes token ids and gives token ids: the tokenizer, chat template, detokenizer and
stop strings belong to whoever talks to it (`prepare()` loads what they need and
resolves the engine's configuration once, there).

    batch = scheduler.schedule()         plan: admit, preempt, pick tokens to run
    samples = runner.execute(batch.work) compute: one forward pass, sampling
    outputs = scheduler.update(...)      record: append tokens, finish, free KV
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from wicore.config import ModelSettings, SchedulerSettings
from wicore.engine.block_manager import BlockManager
from wicore.engine.grammar import GrammarGuide
from wicore.engine.model_runner import ModelRunner
from wicore.engine.request import EngineOutput
from wicore.engine.scheduler import Batch, Scheduler
from wicore.models import registry
from wicore.models.config import ModelConfig
from wicore.models.kv_cache import KVCache, KVDtype
from wicore.models.prepared import load_prepared, metadata, prepared_bytes
from wicore.models.transformer import Transformer
from wicore.tokenizer import Tokenizer

BLOCK_SIZE = 16  # tokens per KV block
# A worker's own memory besides weights and KV cache (Python, numpy, the Mojo runtime, buffers): measured
# as the Anonymous line of /proc/<pid>/smaps_rollup of an idle worker after a short generation, 48-53 MB.
WORKER_RUNTIME_BYTES = 64 << 20


@dataclass(frozen=True)
class EngineConfig:
    """Everything an EngineCore is built from; picklable, so the HTTP process can send it to the worker."""

    model_path: Path  # the GGUF file, resolved where the config was prepared
    max_model_len: int  # tokens a sequence may hold: prompt and output
    num_blocks: int  # KV cache size, in blocks of block_size tokens
    scheduler: SchedulerSettings
    eos_token_ids: frozenset[int] = frozenset()  # end a sequence unless its request sets ignore_eos
    block_size: int = BLOCK_SIZE
    kv_cache_dtype: KVDtype = "float16"


def prepare(
    model: ModelSettings, scheduler: SchedulerSettings, block_size: int = BLOCK_SIZE
) -> tuple[Tokenizer, ModelConfig, EngineConfig]:
    """The tokenizer and model config the engine's caller needs, and the engine's config.

    Reads only the model's metadata (the weights load where the engine runs).  The one place
    where the context length is capped and the KV cache sized."""
    path = registry.resolve(model.name)
    tokenizer = Tokenizer.from_gguf(path)
    config = ModelConfig.from_metadata(metadata(path, vocabulary=False))
    max_model_len = min(model.max_model_len, config.context_length)
    # Room for at least one sequence of the full context.
    num_blocks = -(-max(model.kv_cache_tokens, max_model_len) // block_size)
    engine = EngineConfig(
        model_path=path,
        max_model_len=max_model_len,
        num_blocks=num_blocks,
        scheduler=scheduler,
        eos_token_ids=tokenizer.stop_token_ids,
        block_size=block_size,
        kv_cache_dtype=model.kv_cache_dtype,
    )
    return tokenizer, config, engine


def memory_estimate(engine: EngineConfig, model: ModelConfig) -> int:
    """Bytes a worker serving `engine` takes at most: its prepared weights (mapped, and every page read on
    each forward pass, so all resident; before the first preparation the GGUF file's size stands in, a few
    percent more), the whole KV cache it reserves (whose pages become resident as slots fill) and the
    worker's runtime."""
    weights = prepared_bytes(engine.model_path) or engine.model_path.stat().st_size
    kv = KVCache.nbytes(model, engine.num_blocks, engine.block_size, engine.kv_cache_dtype)
    return weights + kv + WORKER_RUNTIME_BYTES


@dataclass
class Timings:
    """Forward-pass time of the steps that ran prompt tokens and of those that only decoded."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    def record(self, batch: Batch, seconds: float) -> None:
        # A step that runs any prompt tokens counts as prefill: its decodes ride along almost free.
        if batch.is_prefill:
            self.prompt_tokens += batch.num_tokens
            self.prompt_seconds += seconds
        else:
            self.decode_tokens += len(batch.work)
            self.decode_seconds += seconds

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


class EngineCore:
    def __init__(self, config: EngineConfig, model: Transformer) -> None:
        self.config = config
        kv = KVCache.allocate(model.config, config.num_blocks, config.block_size, config.kv_cache_dtype)
        guide = GrammarGuide(config.model_path, config.eos_token_ids)
        self.runner = ModelRunner(model, kv, guide)
        blocks = BlockManager(config.num_blocks, config.block_size, config.scheduler.enable_prefix_caching)
        self.scheduler = Scheduler(blocks, config.scheduler, config.max_model_len, config.eos_token_ids)

    @classmethod
    def load(cls, config: EngineConfig) -> EngineCore:
        model_config, weights = load_prepared(config.model_path)
        return cls(config, Transformer(model_config, weights))

    def step(self, timings: Timings | None = None) -> list[EngineOutput]:
        """One engine iteration; returns the outputs of every request that got a token or ended."""
        batch = self.scheduler.schedule()
        if not batch.work:
            return batch.finished
        start = time.perf_counter()
        step = self.runner.execute(batch.work)
        if timings is not None:
            timings.record(batch, time.perf_counter() - start)
        return self.scheduler.update(batch, step.samples, step.prompt_scores)
