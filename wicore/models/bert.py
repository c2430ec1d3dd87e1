"""The BERT encoder forward pass (sentence-transformers models such as all-MiniLM-L6-v2), top to bottom.

A batch is B sequences right-padded to S tokens.  Every token row runs through the
matmuls (sorting a workload by length keeps the padding small); attention reads each
sequence's length as its key padding mask, so padding never changes a real token.

    x = LayerNorm(word[ids] + position[0..S) + token_type[0])
    per layer (post-norm):
        x = LayerNorm(x + Wo · attention(Wqkv · x))
        x = LayerNorm(x + W2 · gelu(W1 · x))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from wicore.kernels.encoder import add_layer_norm, attention, gelu, layer_norm
from wicore.kernels.matmul import matmul
from wicore.kernels.weights import DenseWeight


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        c = json.loads(path.read_text())
        if c.get("model_type") != "bert" or c.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: not a BERT model with erf GELU (model_type={c.get('model_type')!r})")
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        return cls(
            vocab_size=c["vocab_size"],
            hidden=c["hidden_size"],
            layers=c["num_hidden_layers"],
            heads=c["num_attention_heads"],
            intermediate=c["intermediate_size"],
            max_positions=c["max_position_embeddings"],
            eps=c["layer_norm_eps"],
        )


@dataclass
class BertLayer:
    qkv: DenseWeight  # [3E, E]: query, key, value stacked, so one matmul projects all three
    qkv_bias: np.ndarray
    attn_out: DenseWeight  # [E, E]
    attn_out_bias: np.ndarray
    attn_norm: tuple[np.ndarray, np.ndarray]  # weight, bias
    ffn_in: DenseWeight  # [F, E]
    ffn_in_bias: np.ndarray
    ffn_out: DenseWeight  # [E, F]
    ffn_out_bias: np.ndarray
    ffn_norm: tuple[np.ndarray, np.ndarray]


class BertEncoder:
    def __init__(self, config: BertConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = config

        def get(name: str) -> np.ndarray:
            return np.ascontiguousarray(tensors[name], dtype=np.float32)

        def norm(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            return get(f"{prefix}.LayerNorm.weight"), get(f"{prefix}.LayerNorm.bias")

        self.word = get("embeddings.word_embeddings.weight")
        # Every token has token type 0 (single sentences): fold it into the position table.
        self.position = get("embeddings.position_embeddings.weight") + get("embeddings.token_type_embeddings.weight")[0]
        self.embed_norm = norm("embeddings")
        self.layers: list[BertLayer] = []
        for i in range(config.layers):
            p = f"encoder.layer.{i}"
            attn = f"{p}.attention.self"
            self.layers.append(
                BertLayer(
                    qkv=DenseWeight(np.concatenate([get(f"{attn}.{n}.weight") for n in ("query", "key", "value")])),
                    qkv_bias=np.concatenate([get(f"{attn}.{n}.bias") for n in ("query", "key", "value")]),
                    attn_out=DenseWeight(get(f"{p}.attention.output.dense.weight")),
                    attn_out_bias=get(f"{p}.attention.output.dense.bias"),
                    attn_norm=norm(f"{p}.attention.output"),
                    ffn_in=DenseWeight(get(f"{p}.intermediate.dense.weight")),
                    ffn_in_bias=get(f"{p}.intermediate.dense.bias"),
                    ffn_out=DenseWeight(get(f"{p}.output.dense.weight")),
                    ffn_out_bias=get(f"{p}.output.dense.bias"),
                    ffn_norm=norm(f"{p}.output"),
                )
            )

    @classmethod
    def load(cls, folder: Path) -> BertEncoder:
        """A Hugging Face BERT folder: config.json and float32 model.safetensors."""
        config = BertConfig.from_json(folder / "config.json")
        return cls(config, load_file(str(folder / "model.safetensors")))

    def forward(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Token states float32 [B, S, E] for token ids int32 [B, S] right-padded to S, lengths int32 [B].

        Rows of padded positions hold values that mean nothing: pool with `lengths`.
        """
        c = self.config
        b, s = ids.shape
        if s > c.max_positions:
            raise ValueError(f"sequences of {s} tokens exceed the model's {c.max_positions} positions")
        t, e = b * s, c.hidden
        x = self.word[ids.reshape(-1)]  # [T, E], a fresh array
        x.reshape(b, s, e)[:] += self.position[:s]
        layer_norm(x, *self.embed_norm, c.eps, x)

        qkv = np.empty((t, 3 * e), np.float32)
        context = np.empty((t, e), np.float32)
        delta = np.empty((t, e), np.float32)
        hidden = np.empty((t, c.intermediate), np.float32)
        for layer in self.layers:
            matmul(x, layer.qkv, qkv, layer.qkv_bias)
            attention(qkv.reshape(b, s, 3, c.heads, c.head_dim), lengths, context.reshape(b, s, c.heads, c.head_dim))
            matmul(context, layer.attn_out, delta, layer.attn_out_bias)
            add_layer_norm(x, delta, *layer.attn_norm, c.eps, x)

            matmul(x, layer.ffn_in, hidden, layer.ffn_in_bias)
            gelu(hidden, hidden)
            matmul(hidden, layer.ffn_out, delta, layer.ffn_out_bias)
            add_layer_norm(x, delta, *layer.ffn_norm, c.eps, x)
        return x.reshape(b, s, e)
