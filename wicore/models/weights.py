"""Read a GGUF file's tensors into the kernel layouts, fusing q|k|v and gate|up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wicore.kernels.weights import Weight, concat_rows
from wicore.models.config import ModelConfig
from wicore.models.quant import repack

if TYPE_CHECKING:
    import gguf


@dataclass
class LayerWeights:
    attn_norm: np.ndarray
    wqkv: Weight  # rows: n_heads*hd query, then n_kv*hd key, then n_kv*hd value
    bqkv: np.ndarray | None
    wo: Weight
    ffn_norm: np.ndarray
    w_gate_up: Weight  # rows: ffn gate, then ffn up
    w_down: Weight
    # Gemma 3 only: RMSNorm of each query/key head, and of the attention and MLP outputs.
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    post_attn_norm: np.ndarray | None = None
    post_ffn_norm: np.ndarray | None = None


@dataclass
class ModelWeights:
    token_embd: Weight
    layers: list[LayerWeights]
    output_norm: np.ndarray
    output: Weight  # the token embedding when the model ties them


class _Tensors:
    def __init__(self, reader: gguf.GGUFReader) -> None:
        self._by_name = {t.name: t for t in reader.tensors}

    def has(self, name: str) -> bool:
        return name in self._by_name

    def matrix(self, name: str) -> Weight:
        t = self._by_name[name]
        k, n = (int(d) for d in t.shape)  # GGUF lists the fastest dimension first
        return repack(t.data, t.tensor_type, (n, k))

    def vector(self, name: str) -> np.ndarray:
        t = self._by_name[name]
        if t.tensor_type.name not in ("F32", "F16"):
            raise ValueError(f"{name}: expected an F32/F16 vector, got {t.tensor_type.name}")
        # A copy, so nothing keeps the file's memory map alive once loading is done.
        return np.array(t.data, dtype=np.float32).reshape(-1)


def load_weights(reader: gguf.GGUFReader, config: ModelConfig) -> ModelWeights:
    t = _Tensors(reader)

    def optional(name: str) -> np.ndarray | None:
        return t.vector(name) if t.has(name) else None

    layers = []
    for i in range(config.n_layers):
        p = f"blk.{i}."
        biases = [p + f"attn_{x}.bias" for x in "qkv"]
        layers.append(
            LayerWeights(
                attn_norm=t.vector(p + "attn_norm.weight"),
                wqkv=concat_rows([t.matrix(p + f"attn_{x}.weight") for x in "qkv"]),
                bqkv=np.concatenate([t.vector(b) for b in biases]) if all(t.has(b) for b in biases) else None,
                wo=t.matrix(p + "attn_output.weight"),
                ffn_norm=t.vector(p + "ffn_norm.weight"),
                w_gate_up=concat_rows([t.matrix(p + "ffn_gate.weight"), t.matrix(p + "ffn_up.weight")]),
                w_down=t.matrix(p + "ffn_down.weight"),
                q_norm=optional(p + "attn_q_norm.weight"),
                k_norm=optional(p + "attn_k_norm.weight"),
                post_attn_norm=optional(p + "post_attention_norm.weight"),
                post_ffn_norm=optional(p + "post_ffw_norm.weight"),
            )
        )
    token_embd = t.matrix("token_embd.weight")
    return ModelWeights(
        token_embd=token_embd,
        layers=layers,
        output_norm=t.vector("output_norm.weight"),
        output=t.matrix("output.weight") if t.has("output.weight") else token_embd,
    )
