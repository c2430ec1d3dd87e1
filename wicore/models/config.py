"""Model hyper-parameters, read from GGUF metadata."""

from __future__ import annotations

from dataclasses import dataclass

import gguf

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
    def from_gguf(cls, reader: gguf.GGUFReader) -> ModelConfig:
        def num(key: str, default: float | None = None) -> float:
            f = reader.get_field(key)
            if f is None:
                if default is None:
                    raise ValueError(f"GGUF metadata lacks {key}")
                return default
            return float(f.contents())

        arch_field = reader.get_field("general.architecture")
        arch = str(arch_field.contents()) if arch_field is not None else ""
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported architecture {arch!r}; WiCore runs {', '.join(SUPPORTED_ARCHS)}")
        dim = int(num(f"{arch}.embedding_length"))
        n_heads = int(num(f"{arch}.attention.head_count"))
        tokens = reader.get_field("tokenizer.ggml.tokens")
        return cls(
            arch=arch,
            n_layers=int(num(f"{arch}.block_count")),
            dim=dim,
            n_heads=n_heads,
            n_kv_heads=int(num(f"{arch}.attention.head_count_kv", n_heads)),
            head_dim=int(num(f"{arch}.attention.key_length", dim // n_heads)),
            ffn_dim=int(num(f"{arch}.feed_forward_length")),
            vocab_size=int(num(f"{arch}.vocab_size", len(tokens.data) if tokens is not None else 0)),
            context_length=int(num(f"{arch}.context_length", 2048)),
            rope_theta=num(f"{arch}.rope.freq_base", 10000.0),
            rope_neox=SUPPORTED_ARCHS[arch],
            rms_eps=num(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        )
