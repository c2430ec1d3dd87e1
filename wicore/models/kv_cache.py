"""The paged KV cache's storage, and the element types it may hold (the settings name them too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # only for annotations: keeps this module light for wicore.config, which imports KVDtype
    from wicore.models.config import ModelConfig

KVDtype = Literal["float16", "float32"]


@dataclass
class KVCache:
    """Per-layer K and V, [num_slots, n_kv_heads, head_dim], slot = block * block_size + offset.

    float16 by default (llama.cpp's default too): half the memory and half the attention reads of
    float32; attention widens each row to float32 in registers."""

    k: list[np.ndarray]
    v: list[np.ndarray]
    block_size: int

    @staticmethod
    def nbytes(config: ModelConfig, num_blocks: int, block_size: int, dtype: KVDtype = "float16") -> int:
        """Bytes allocate() reserves: K and V of every layer for every slot."""
        per_slot = config.n_kv_heads * config.head_dim * np.dtype(dtype).itemsize
        return 2 * config.n_layers * num_blocks * block_size * per_slot

    @classmethod
    def allocate(cls, config: ModelConfig, num_blocks: int, block_size: int, dtype: KVDtype = "float16") -> KVCache:
        shape = (num_blocks * block_size, config.n_kv_heads, config.head_dim)
        # np.zeros maps untouched pages lazily, so memory grows only as slots are used.
        return cls(
            k=[np.zeros(shape, dtype) for _ in range(config.n_layers)],
            v=[np.zeros(shape, dtype) for _ in range(config.n_layers)],
            block_size=block_size,
        )
