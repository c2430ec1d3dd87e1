"""GGUF weight blocks read into the matmul kernel's layout (wicore/kernels/weights.py).

Each GGUF block holds its scale(s) and the packed integers of 32 or 256 weights; `repack`
splits them into the planes of a QuantWeight, keeping every bit and every scale of the file.
F32 and F16 tensors are kept dense, as they are in the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from wicore.kernels.weights import QK_K, DenseWeight, QuantWeight, Weight, pack_planes, to_tiles

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType as QT

# GGUF type (its name: this module loads on every start, `gguf` only when a file is prepared) -> the
# kernel's format name
GGUF_FORMATS = {"Q8_0": "q8_0", "Q5_0": "q5_0", "Q6_K": "q6_k", "Q4_K": "q4_k"}


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).reshape(b.shape[0], -1)


def repack(raw: np.ndarray, qtype: QT, shape: tuple[int, int]) -> Weight:
    """Turn a GGUF tensor's raw data (rows of blocks) into the kernel's layout.

    `shape` is (N, K): N output rows, K weights per row.
    """
    n, k = shape
    if qtype.name == "F32":
        return DenseWeight(np.ascontiguousarray(raw.reshape(n, k), dtype=np.float32))
    if qtype.name == "F16":
        return DenseWeight(np.ascontiguousarray(raw.reshape(n, k).view(np.float16)))
    if qtype.name not in GGUF_FORMATS:
        raise ValueError(f"unsupported tensor type {qtype.name}")
    fmt = GGUF_FORMATS[qtype.name]
    b = raw.reshape(-1).view(np.uint8).reshape(n, -1)
    if fmt == "q8_0":
        blocks = b.reshape(n, k // 32, 34)
        planes = pack_planes(np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(n, k), n, fmt)
        planes["d"] = to_tiles(_f16(blocks[:, :, :2]), n)
    elif fmt == "q5_0":
        blocks = b.reshape(n, k // 32, 22)
        qh = np.ascontiguousarray(blocks[:, :, 2:6]).view(np.uint32)  # [n, k/32, 1]
        fifth = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        qs = blocks[:, :, 6:]
        u = (np.concatenate([qs & 0x0F, qs >> 4], axis=2) | (fifth << 4)).reshape(n, k)
        planes = pack_planes(u, n, fmt)
        planes["d"] = to_tiles(_f16(blocks[:, :, :2]), n)
    elif fmt == "q6_k":
        blocks = b.reshape(n, k // QK_K, 210)
        ql = blocks[:, :, :128].reshape(n, -1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
        ql = (ql & 0x0F).reshape(n, -1, 2, 4, 32)
        qh = blocks[:, :, 128:192].reshape(n, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)
        planes = pack_planes((ql | ((qh & 3) << 4)).reshape(n, k), n, fmt)
        planes["sc"] = to_tiles(np.ascontiguousarray(blocks[:, :, 192:208].reshape(n, -1)).view(np.int8), n)
        planes["d"] = to_tiles(_f16(blocks[:, :, 208:210]), n)
    else:
        blocks = b.reshape(n, k // QK_K, 144)
        s = blocks[:, :, 4:16].reshape(n, -1, 3, 4)
        sd, sm, smd = s[:, :, 0], s[:, :, 1], s[:, :, 2]
        sc = np.concatenate([sd & 0x3F, (smd & 0x0F) | ((sd >> 2) & 0x30)], axis=2)
        mn = np.concatenate([sm & 0x3F, (smd >> 4) | ((sm >> 2) & 0x30)], axis=2)
        qs = blocks[:, :, 16:].reshape(n, -1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
        planes = pack_planes((qs & 0x0F).reshape(n, k), n, fmt)
        planes["sc"] = to_tiles(sc.reshape(n, -1), n)
        planes["mn"] = to_tiles(mn.reshape(n, -1), n)
        planes["d"] = to_tiles(_f16(blocks[:, :, 0:4]).reshape(n, -1, 2), n)
    return QuantWeight(fmt, (n, k), planes)
