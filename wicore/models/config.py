"""Model hyper-parameters, read from GGUF metadata."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gguf

import numpy as np

# Architectures that share the decoder in transformer.py, and their RoPE style:
# GGUF stores llama's q/k weights permuted for pairwise ("normal") rotation,
# while Qwen2 and Gemma 3 keep the NEOX half-split layout.
SUPPORTED_ARCHS = {"llama": False, "qwen2": True, "gemma3": True}
# Gemma 3 constants GGUF does not carry (llama.cpp hard-codes them too): every 6th layer attends
# globally, the others within the sliding window and with RoPE base 10000.
GEMMA3_SWA_PATTERN = 6
GEMMA3_LOCAL_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rope_neox: bool
    rms_eps: float
    # Gemma 3's differences from the llama/qwen2 block (the defaults are those of llama/qwen2):
    ffn_act: str = "silu"  # or "gelu_tanh"
    embed_scale: float = 1.0  # token embeddings are multiplied by this
    sliding_window: int = 0  # local layers attend to this many latest positions (0: none)
    swa_pattern: int = 0  # every swa_pattern-th layer is global, the others local
    rope_theta_local: float = 0.0  # RoPE base of local layers

    def is_local(self, layer: int) -> bool:
        return self.sliding_window > 0 and (layer + 1) % self.swa_pattern != 0

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> ModelConfig:
        """From GGUF key/value metadata (see prepared.read_metadata)."""

        def num(key: str, default: float | None = None) -> float:
            if key not in meta:
                if default is None:
                    raise ValueError(f"GGUF metadata lacks {key}")
                return default
            return float(meta[key])

        arch = str(meta.get("general.architecture", ""))
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported architecture {arch!r}; WiCore runs {', '.join(SUPPORTED_ARCHS)}")
        dim = int(num(f"{arch}.embedding_length"))
        n_heads = int(num(f"{arch}.attention.head_count"))
        gemma: dict[str, Any] = {}
        if arch == "gemma3":
            gemma = dict(
                ffn_act="gelu_tanh",
                embed_scale=math.sqrt(dim),
                sliding_window=int(num("gemma3.attention.sliding_window")),
                swa_pattern=GEMMA3_SWA_PATTERN,
                rope_theta_local=GEMMA3_LOCAL_ROPE_THETA,
            )
        return cls(
            arch=arch,
            n_layers=int(num(f"{arch}.block_count")),
            dim=dim,
            n_heads=n_heads,
            n_kv_heads=int(num(f"{arch}.attention.head_count_kv", n_heads)),
            head_dim=int(num(f"{arch}.attention.key_length", dim // n_heads)),
            ffn_dim=int(num(f"{arch}.feed_forward_length")),
            vocab_size=int(num(f"{arch}.vocab_size", len(meta.get("tokenizer.ggml.tokens", ())))),
            context_length=int(num(f"{arch}.context_length", 2048)),
            rope_theta=num(f"{arch}.rope.freq_base", 10000.0),
            rope_neox=SUPPORTED_ARCHS[arch],
            rms_eps=num(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
            **gemma,
        )


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every key/value field of the file as plain Python values (JSON-serialisable)."""
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        meta[key] = value.tolist() if isinstance(value, np.ndarray) else value
    return meta
