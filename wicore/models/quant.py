"""Load-time repack of GGUF weight blocks into the layout the matmul kernel reads.

Every quantised format these models use is a grid of small integers times a
per-group scale (and, for Q4_K, minus a per-group offset).  We unpack that into
one layout, lossless for each source format:

    value[n, k] = q[n, k] * scale[n, k // G] + min[n, k // G]

with `q` int8 `[N, K]`, `scale`/`min` float32 `[N, K // G]`.  Q8_0 and Q5_0 use
G=32 with no min, Q4_K G=32 with min, Q6_K G=16 with no min.  One layout means
one well-tuned kernel instead of four, and tensors of different source formats
can be concatenated (q, k and v; gate and up) into one matmul.  The cost is
memory: ~1.1-1.25 bytes per weight instead of 0.56-1.06.

F32 and F16 tensors are kept dense, as they are in the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT

from wicore.kernels._arrays import require

QK_K = 256


@dataclass
class QuantWeight:
    """int8 grid with per-group scales (and optional mins); logical shape [N, K]."""

    q: np.ndarray  # int8 [N, K]
    scale: np.ndarray  # float32 [N, K // group]
    min: np.ndarray | None  # float32 [N, K // group] or None
    group: int

    def __post_init__(self) -> None:
        # The matmul kernel reads these arrays raw: check them once here, not per call.
        n, k = self.q.shape
        if self.group not in (16, 32) or k % self.group:
            raise ValueError(f"quantised weight: K={k} is not a multiple of a supported group ({self.group})")
        require(self.q, np.int8, "q", (n, k))
        require(self.scale, np.float32, "scale", (n, k // self.group))
        if self.min is not None:
            require(self.min, np.float32, "min", (n, k // self.group))

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        n, k = self.q.shape
        w = self.q.reshape(n, k // self.group, self.group).astype(np.float32) * self.scale[:, :, None]
        if self.min is not None:
            w += self.min[:, :, None]
        return w.reshape(n, k)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Dequantised rows (embedding lookup) without touching the rest."""
        sub = QuantWeight(self.q[ids], self.scale[ids], None if self.min is None else self.min[ids], self.group)
        return sub.dequantize()


@dataclass
class DenseWeight:
    """F32 or F16 matrix [N, K], as stored in the file."""

    w: np.ndarray

    def __post_init__(self) -> None:
        if self.w.ndim != 2 or self.w.dtype not in (np.float32, np.float16) or not self.w.flags.c_contiguous:
            raise ValueError(f"dense weight: need a C-contiguous 2-D float32/float16 array, got {self.w.dtype}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        return self.w.astype(np.float32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.w[ids].astype(np.float32)


Weight = QuantWeight | DenseWeight


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _q8_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
    return blocks[:, 2:].view(np.int8), _f16(blocks[:, :2])[:, 0], None


def _q5_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
    n = blocks.shape[0]
    d = _f16(blocks[:, :2])[:, 0]
    qh = np.ascontiguousarray(blocks[:, 2:6]).view(np.uint32)
    qs = blocks[:, 6:22]
    hi = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)  # [n, 32]
    lo = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # [n, 32]
    q = (lo | (hi << 4)).astype(np.int8) - np.int8(16)
    return q.reshape(n, 32), d, None


def _q4_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = blocks.shape[0]
    d = _f16(blocks[:, 0:2])
    dmin = _f16(blocks[:, 2:4])
    s = blocks[:, 4:16].reshape(n, 3, 4)
    sd, sm, smd = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([sd & 0x3F, (smd & 0x0F) | ((sd >> 2) & 0x30)], axis=1)
    mn = np.concatenate([sm & 0x3F, (smd >> 4) | ((sm >> 2) & 0x30)], axis=1)
    qs = blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 0x0F).astype(np.int8).reshape(n * 8, 32)
    return q, (d * sc.astype(np.float32)).reshape(-1), (-(dmin * mn.astype(np.float32))).reshape(-1)


def _q6_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
    n = blocks.shape[0]
    ql = blocks[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    ql = (ql & 0x0F).reshape(n, 2, 4, 32)
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    qh = qh & 0x03
    q = (ql | (qh << 4)).astype(np.int8) - np.int8(32)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(blocks[:, 208:210])
    return q.reshape(n * 16, 16), (d * sc).reshape(-1), None


# format -> (group size, bytes per 256 weights... per block, weights per block, unpacker)
_UNPACK = {
    QT.Q8_0: (32, 34, 32, _q8_0),
    QT.Q5_0: (32, 22, 32, _q5_0),
    QT.Q4_K: (32, 144, QK_K, _q4_k),
    QT.Q6_K: (16, 210, QK_K, _q6_k),
}


def repack(raw: np.ndarray, qtype: QT, shape: tuple[int, int]) -> Weight:
    """Turn a GGUF tensor's raw data (rows of blocks) into the kernel's layout.

    `shape` is (N, K): N output rows, K weights per row.
    """
    n, k = shape
    if qtype == QT.F32:
        return DenseWeight(np.ascontiguousarray(raw.reshape(n, k), dtype=np.float32))
    if qtype == QT.F16:
        return DenseWeight(np.ascontiguousarray(raw.reshape(n, k).view(np.float16)))
    if qtype not in _UNPACK:
        raise ValueError(f"unsupported tensor type {qtype.name}")
    group, block_bytes, block_weights, unpack = _UNPACK[qtype]
    blocks = raw.reshape(-1).view(np.uint8).reshape(n * k // block_weights, block_bytes)
    q, scale, mn = unpack(blocks)
    return QuantWeight(
        q=np.ascontiguousarray(q.reshape(n, k)),
        scale=np.ascontiguousarray(scale.reshape(n, k // group), dtype=np.float32),
        min=None if mn is None else np.ascontiguousarray(mn.reshape(n, k // group), dtype=np.float32),
        group=group,
    )


def _widen(w: QuantWeight, group: int, with_min: bool) -> QuantWeight:
    """The same values with a smaller group and/or an explicit zero min (exact)."""
    rep = w.group // group
    scale = np.repeat(w.scale, rep, axis=1) if rep > 1 else w.scale
    mn = w.min
    if mn is not None and rep > 1:
        mn = np.repeat(mn, rep, axis=1)
    if with_min and mn is None:
        mn = np.zeros_like(scale)
    return QuantWeight(w.q, scale, mn, group)


def concat_rows(weights: list[Weight]) -> Weight:
    """Stack matrices with the same K into one, e.g. q|k|v, so they run as one matmul.

    Quantised parts of different formats are first brought to a common layout
    (the smallest group, a min if any part has one), which is exact.
    """
    if all(isinstance(w, QuantWeight) for w in weights):
        quant = [w for w in weights if isinstance(w, QuantWeight)]
        group = min(w.group for w in quant)
        with_min = any(w.min is not None for w in quant)
        parts = [_widen(w, group, with_min) for w in quant]
        return QuantWeight(
            q=np.concatenate([w.q for w in parts]),
            scale=np.concatenate([w.scale for w in parts]),
            min=np.concatenate([w.min for w in parts if w.min is not None]) if with_min else None,
            group=group,
        )
    if all(isinstance(w, DenseWeight) for w in weights):
        dense = [w for w in weights if isinstance(w, DenseWeight)]
        dtype = np.float16 if all(w.w.dtype == np.float16 for w in dense) else np.float32
        return DenseWeight(np.concatenate([w.w.astype(dtype, copy=False) for w in dense]))
    raise ValueError("cannot fuse a quantised matrix with a dense one")
