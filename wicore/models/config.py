"""Model hyper-parameters, read from GGUF metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

# Architectures that share the decoder in transformer.py, and their RoPE style:
# GGUF stores llama's q/k weights permuted for pairwise ("normal") rotation,
# while Qwen2 keeps the NEOX half-split layout.
SUPPORTED_ARCHS = {"llama": False, "qwen2": True}


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
