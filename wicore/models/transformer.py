"""The decoder forward pass shared by llama, qwen2 and gemma3, read top to bottom.

One call runs any mix of sequences: prompt chunks (prefill) and single tokens
(decode) are laid end to end as T tokens; each token knows its sequence (a row
of the block tables), its position, and the KV-cache slot it writes.  Logits
are computed only for the rows the caller asks for (the last token of each
sequence that samples next).

Gemma 3 adds to the llama block: scaled token embeddings, an RMSNorm on each
query and key head, RMSNorms on the attention and MLP outputs before they join
the residual stream, a GELU-gated MLP, and local layers that attend within a
sliding window with their own RoPE base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wicore.kernels.attention import paged_attention
from wicore.kernels.layers import add_rmsnorm, gelu_tanh_mul, rmsnorm, rope, rope_table, silu_mul
from wicore.kernels.matmul import matmul
from wicore.models.config import ModelConfig
from wicore.models.kv_cache import KVCache
from wicore.models.weights import ModelWeights


@dataclass
class ForwardBatch:
    tokens: np.ndarray  # int32 [T]
    positions: np.ndarray  # int32 [T]
    token_seq: np.ndarray  # int32 [T]: row of block_tables
    slots: np.ndarray  # int64 [T]: KV-cache slot each token's K/V is written to
    block_tables: np.ndarray  # int32 [B, max_blocks]
    logits_rows: np.ndarray  # int64 [L]: tokens whose next-token logits are wanted


class Transformer:
    def __init__(self, config: ModelConfig, weights: ModelWeights) -> None:
        self.config = config
        # Each layer's RoPE base (Gemma's local layers have their own).
        self.rope_thetas = [
            config.rope_theta_local if config.is_local(i) else config.rope_theta for i in range(config.n_layers)
        ]
        self.weights = weights

    def forward(self, batch: ForwardBatch, kv: KVCache) -> np.ndarray:
        """Run the tokens through every layer; return float32 logits [L, vocab]."""
        c, w = self.config, self.weights
        n_tok = len(batch.tokens)
        q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        scale = 1.0 / math.sqrt(c.head_dim)

        x = w.token_embd.rows(batch.tokens)  # the residual stream [T, dim]
        if c.embed_scale != 1.0:
            x *= np.float32(c.embed_scale)
        h = np.empty_like(x)  # normalised input of the next block
        rmsnorm(x, w.layers[0].attn_norm, c.rms_eps, h)
        glu = gelu_tanh_mul if c.ffn_act == "gelu_tanh" else silu_mul
        # cos/sin per position, once per RoPE base (Gemma's local layers have their own).
        tables = {theta: rope_table(batch.positions, theta, c.head_dim) for theta in set(self.rope_thetas)}
        for i, layer in enumerate(w.layers):
            local = c.is_local(i)
            # Attention: project, (normalise heads,) rotate, store K/V, attend over the cache.
            qkv = matmul(h, layer.wqkv, bias=layer.bqkv)
            q = np.ascontiguousarray(qkv[:, :q_dim]).reshape(n_tok, c.n_heads, c.head_dim)
            k = np.ascontiguousarray(qkv[:, q_dim : q_dim + kv_dim]).reshape(n_tok, c.n_kv_heads, c.head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:
                for heads, norm in ((q, layer.q_norm), (k, layer.k_norm)):
                    rows = heads.reshape(-1, c.head_dim)
                    rmsnorm(rows, norm, c.rms_eps, rows)
            table = tables[self.rope_thetas[i]]
            rope(q, table, c.rope_neox)
            rope(k, table, c.rope_neox)
            kv.k[i][batch.slots] = k
            kv.v[i][batch.slots] = qkv[:, q_dim + kv_dim :].reshape(n_tok, c.n_kv_heads, c.head_dim)
            attn = np.empty_like(q)
            paged_attention(
                q, kv.k[i], kv.v[i], batch.block_tables, batch.token_seq, batch.positions, attn, kv.block_size, scale,
                c.sliding_window if local else 0,
            )  # fmt: skip
            # Each step's buffers are dropped as soon as they are dead, so that the MLP's larger ones
            # (gate|up, 8 MB at 512 tokens of Gemma 3 270M) reuse their memory: a long prefill's peak.
            del qkv, q, k
            attn_out = matmul(attn.reshape(n_tok, q_dim), layer.wo)
            del attn
            if layer.post_attn_norm is not None:
                rmsnorm(attn_out, layer.post_attn_norm, c.rms_eps, attn_out)
            add_rmsnorm(x, attn_out, layer.ffn_norm, c.rms_eps, h)
            del attn_out

            # Gated MLP (SiLU, or GELU for Gemma).
            gate_up = matmul(h, layer.w_gate_up)
            act = np.empty((n_tok, c.ffn_dim), dtype=np.float32)
            glu(gate_up, act)
            del gate_up
            mlp_out = matmul(act, layer.w_down)
            del act
            if layer.post_ffn_norm is not None:
                rmsnorm(mlp_out, layer.post_ffn_norm, c.rms_eps, mlp_out)
            next_norm = w.layers[i + 1].attn_norm if i + 1 < c.n_layers else w.output_norm
            add_rmsnorm(x, mlp_out, next_norm, c.rms_eps, h)

        return matmul(np.ascontiguousarray(h[batch.logits_rows]), w.output)
