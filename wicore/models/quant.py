"""GGUF weight blocks repacked, at their GGUF size, into the layout the matmul kernel reads.

Each quantised format these models use is small unsigned integers u times a
per-group scale: value = scale * (u - offset), or scale * u + min for Q4_K
(Q8_0 keeps its signed bytes: value = scale * q).  The load-time repack keeps
every bit and every scale of the file, only moves them so that one 64-weight
chunk unpacks into one 512-bit register of bytes with a few shifts and masks:

    lo  uint8 [N, Kp/2]  byte j of chunk c: weight c*64 + j (low nibble), c*64 + 32 + j (high)
    hi  uint8            Q5_0: [N, Kp/8], bit t of byte j = 5th bit of weight t*8 + j
                         Q6_K: [N, Kp/4], bits 2s..2s+1 of byte j = top bits of weight s*16 + j
    qs  int8  [N, Kp]    Q8_0's bytes as they are
    d   float16          Q8_0 / Q5_0: scale per 32 weights; Q6_K: super-scale per 256;
                         Q4_K: (scale, min) super-scales per 256
    sc  int8 / uint8     K-quants: sub-scale per group (16 for Q6_K, 32 for Q4_K)
    mn  uint8            Q4_K: sub-min per 32

Kp is K rounded up to whole chunks (K = 896, 4864, 640, 2048 need none); the
padding is zero weights.  Bytes per weight: Q8_0 1.0625, Q5_0 0.6875, Q6_K
0.8203 (as in the file), Q4_K 0.578 (the file's 0.5625 packs two 6-bit
sub-scales into 12 bits; bytes are cheaper to read).  Matrices of one format
fuse into one matmul (q|k|v, gate|up); parts of different formats stay a
SplitWeight whose parts write side by side.

F32 and F16 tensors are kept dense, as they are in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as QT

from wicore.kernels._arrays import require

QK_K = 256
CHUNK = 64
# format -> (kernel code, GGUF type, group of a scale, offset subtracted from u, planes)
FORMATS: dict[str, tuple[int, QT, int, int, tuple[str, ...]]] = {
    "q8_0": (0, QT.Q8_0, 32, 0, ("qs", "d")),
    "q5_0": (1, QT.Q5_0, 32, 16, ("lo", "hi", "d")),
    "q6_k": (2, QT.Q6_K, 16, 32, ("lo", "hi", "sc", "d")),
    "q4_k": (3, QT.Q4_K, 32, 0, ("lo", "sc", "mn", "d")),
}
_BY_TYPE = {spec[1]: name for name, spec in FORMATS.items()}
_EMPTY = np.zeros(1, dtype=np.uint8)


def _round_up(k: int) -> int:
    return -(-k // CHUNK) * CHUNK


@dataclass
class QuantWeight:
    """A GGUF-quantised matrix in the kernel layout; logical shape [N, K]."""

    fmt: str
    shape: tuple[int, int]
    planes: dict[str, np.ndarray]
    # int64 [code, N, K, Kp, addresses of qs|lo, hi, sc|d, mn, d]: computed once, read by the kernel.
    descriptor: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The kernel reads these arrays raw: check them once here, not per call.
        if self.fmt not in FORMATS:
            raise ValueError(f"quantised weight: unknown format {self.fmt!r}")
        n, k = self.shape = (int(self.shape[0]), int(self.shape[1]))
        kp = _round_up(k)
        code, _, group, _, names = FORMATS[self.fmt]
        if k % group:
            raise ValueError(f"quantised weight: K={k} is not a multiple of the {self.fmt} group ({group})")
        expected = _plane_shapes(self.fmt, n, kp)
        if set(self.planes) != set(names):
            raise ValueError(f"quantised weight: {self.fmt} needs planes {names}, got {tuple(self.planes)}")
        for name in names:
            dtype, shape = expected[name]
            require(self.planes[name], dtype, name, shape)

        def addr(name: str) -> int:
            return self.planes[name].__array_interface__["data"][0] if name in self.planes else 0

        scales = "sc" if "sc" in self.planes else "d"
        supers = "d" if "sc" in self.planes else ""
        self.descriptor = np.array(
            [code, n, k, kp, addr("qs") or addr("lo"), addr("hi"), addr(scales), addr("mn"), addr(supers)],
            dtype=np.int64,
        )

    def dequantize(self) -> np.ndarray:
        n, k = self.shape
        kp = _round_up(k)
        _, _, group, offset, _ = FORMATS[self.fmt]
        p = self.planes
        if self.fmt == "q8_0":
            u = p["qs"].astype(np.float32)
        else:
            lo = p["lo"].reshape(n, kp // CHUNK, 32)
            u = np.concatenate([lo & 0x0F, lo >> 4], axis=2).astype(np.int16)
            if self.fmt == "q5_0":
                bits = np.unpackbits(p["hi"].reshape(n, kp // CHUNK, 8, 1), axis=3, bitorder="little")
                u |= bits.transpose(0, 1, 3, 2).reshape(n, kp // CHUNK, CHUNK).astype(np.int16) << 4
            elif self.fmt == "q6_k":
                hi = p["hi"].reshape(n, kp // CHUNK, 1, 16) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
                u |= (hi & 3).reshape(n, kp // CHUNK, CHUNK).astype(np.int16) << 4
            u = u.reshape(n, kp).astype(np.float32) - offset
        scale, mins = self._group_scales(n, kp, group)
        w = u.reshape(n, kp // group, group) * scale[:, :, None]
        if mins is not None:
            w += mins[:, :, None]
        return np.ascontiguousarray(w.reshape(n, kp)[:, :k])

    def _group_scales(self, n: int, kp: int, group: int) -> tuple[np.ndarray, np.ndarray | None]:
        p = self.planes
        if self.fmt in ("q8_0", "q5_0"):
            return p["d"].astype(np.float32), None
        per_super = QK_K // group
        if self.fmt == "q6_k":
            return np.repeat(p["d"].astype(np.float32), per_super, axis=1) * p["sc"].astype(np.float32), None
        d = p["d"].astype(np.float32).reshape(n, kp // QK_K, 2)
        scale = np.repeat(d[:, :, 0], per_super, axis=1) * p["sc"].astype(np.float32)
        return scale, -np.repeat(d[:, :, 1], per_super, axis=1) * p["mn"].astype(np.float32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Dequantised rows (embedding lookup) without touching the rest."""
        sub = {name: np.ascontiguousarray(a[ids]) for name, a in self.planes.items()}
        return QuantWeight(self.fmt, (len(ids), self.shape[1]), sub).dequantize()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.planes.values())


def _plane_shapes(fmt: str, n: int, kp: int) -> dict[str, tuple[type, tuple[int, int]]]:
    return {
        "qs": (np.int8, (n, kp)),
        "lo": (np.uint8, (n, kp // 2)),
        "hi": (np.uint8, (n, kp // 8 if fmt == "q5_0" else kp // 4)),
        "sc": (np.int8 if fmt == "q6_k" else np.uint8, (n, kp // FORMATS[fmt][2])),
        "mn": (np.uint8, (n, kp // 32)),
        "d": (np.float16, (n, kp // 32 if fmt in ("q8_0", "q5_0") else kp // QK_K * (2 if fmt == "q4_k" else 1))),
    }


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

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    def dequantize(self) -> np.ndarray:
        return self.w.astype(np.float32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.w[ids].astype(np.float32)


@dataclass
class SplitWeight:
    """Quantised matrices of different formats stacked by rows (e.g. q|k|v with a Q8_0 v)."""

    parts: list[QuantWeight]

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.shape[0] for p in self.parts), self.parts[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def dequantize(self) -> np.ndarray:
        return np.concatenate([p.dequantize() for p in self.parts])


Weight = QuantWeight | DenseWeight | SplitWeight


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).reshape(b.shape[0], -1)


def _pack_nibbles(u: np.ndarray) -> np.ndarray:
    """u [N, Kp] (< 16 after masking) -> [N, Kp/2]: chunk byte j = weight j | weight 32 + j << 4."""
    n, kp = u.shape
    c = u.reshape(n, kp // CHUNK, 2, 32)
    return ((c[:, :, 0] & 0x0F) | ((c[:, :, 1] & 0x0F) << 4)).reshape(n, kp // 2)


def _pack_high(u: np.ndarray, bits: int) -> np.ndarray:
    """The bits above the nibble of u [N, Kp]: 1 (Q5_0) or 2 (Q6_K) per weight, see the module doc."""
    n, kp = u.shape
    rows = CHUNK // (8 // bits)  # weights per plane byte row: 8 (1 bit) or 16 (2 bits)
    hi = (u >> 4).reshape(n, kp // CHUNK, 8 // bits, rows).astype(np.uint8)
    shifts = (np.arange(8 // bits, dtype=np.uint8) * bits).reshape(1, 1, -1, 1)
    return np.bitwise_or.reduce(hi << shifts, axis=2).reshape(n, -1)


def _pad(a: np.ndarray, k: int, kp: int, per: int = 1) -> np.ndarray:
    """Zero-pad the last axis of a per-weight (per=1) or per-group array from k to kp weights."""
    if k == kp:
        return np.ascontiguousarray(a)
    out = np.zeros((a.shape[0], kp // per), dtype=a.dtype)
    out[:, : k // per] = a
    return out


def repack(raw: np.ndarray, qtype: QT, shape: tuple[int, int]) -> Weight:
    """Turn a GGUF tensor's raw data (rows of blocks) into the kernel's layout.

    `shape` is (N, K): N output rows, K weights per row.
    """
    n, k = shape
    if qtype == QT.F32:
        return DenseWeight(np.ascontiguousarray(raw.reshape(n, k), dtype=np.float32))
    if qtype == QT.F16:
        return DenseWeight(np.ascontiguousarray(raw.reshape(n, k).view(np.float16)))
    if qtype not in _BY_TYPE:
        raise ValueError(f"unsupported tensor type {qtype.name}")
    fmt = _BY_TYPE[qtype]
    kp = _round_up(k)
    b = raw.reshape(-1).view(np.uint8).reshape(n, -1)
    if fmt == "q8_0":
        blocks = b.reshape(n, k // 32, 34)
        planes = {"qs": _pad(blocks[:, :, 2:].reshape(n, k).view(np.int8), k, kp), "d": _f16(blocks[:, :, :2])}
        planes["d"] = _pad(planes["d"], k, kp, 32)
    elif fmt == "q5_0":
        blocks = b.reshape(n, k // 32, 22)
        qh = np.ascontiguousarray(blocks[:, :, 2:6]).view(np.uint32)  # [n, k/32, 1]
        fifth = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        qs = blocks[:, :, 6:]
        u = _pad((np.concatenate([qs & 0x0F, qs >> 4], axis=2) | (fifth << 4)).reshape(n, k), k, kp)
        planes = {"lo": _pack_nibbles(u), "hi": _pack_high(u, 1), "d": _pad(_f16(blocks[:, :, :2]), k, kp, 32)}
    elif fmt == "q6_k":
        blocks = b.reshape(n, k // QK_K, 210)
        ql = blocks[:, :, :128].reshape(n, -1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
        ql = (ql & 0x0F).reshape(n, -1, 2, 4, 32)
        qh = blocks[:, :, 128:192].reshape(n, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)
        u = (ql | ((qh & 3) << 4)).reshape(n, k)
        planes = {
            "lo": _pack_nibbles(u),
            "hi": _pack_high(u, 2),
            "sc": np.ascontiguousarray(blocks[:, :, 192:208].reshape(n, -1)).view(np.int8),
            "d": _f16(blocks[:, :, 208:210]),
        }
    else:
        blocks = b.reshape(n, k // QK_K, 144)
        s = blocks[:, :, 4:16].reshape(n, -1, 3, 4)
        sd, sm, smd = s[:, :, 0], s[:, :, 1], s[:, :, 2]
        sc = np.concatenate([sd & 0x3F, (smd & 0x0F) | ((sd >> 2) & 0x30)], axis=2)
        mn = np.concatenate([sm & 0x3F, (smd >> 4) | ((sm >> 2) & 0x30)], axis=2)
        qs = blocks[:, :, 16:].reshape(n, -1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
        u = (qs & 0x0F).reshape(n, k)
        planes = {
            "lo": _pack_nibbles(u),
            "sc": np.ascontiguousarray(sc.reshape(n, -1)),
            "mn": np.ascontiguousarray(mn.reshape(n, -1)),
            "d": _f16(blocks[:, :, 0:4]),
        }
    return QuantWeight(fmt, (n, k), planes)


def concat_rows(weights: list[Weight]) -> Weight:
    """Stack matrices with the same K into one, e.g. q|k|v, so they run as one matmul call.

    Quantised parts of one format concatenate; parts of different formats stay
    side by side in a SplitWeight (converting would make the file's weights larger).
    """
    if all(isinstance(w, DenseWeight) for w in weights):
        dense = [w for w in weights if isinstance(w, DenseWeight)]
        dtype = np.float16 if all(w.w.dtype == np.float16 for w in dense) else np.float32
        return DenseWeight(np.concatenate([w.w.astype(dtype, copy=False) for w in dense]))
    parts: list[QuantWeight] = []
    for w in weights:
        if isinstance(w, DenseWeight):
            raise ValueError("cannot fuse a quantised matrix with a dense one")
        parts += w.parts if isinstance(w, SplitWeight) else [w]
    merged: list[QuantWeight] = []
    for w in parts:
        if merged and merged[-1].fmt == w.fmt:
            last = merged.pop()
            w = QuantWeight(
                w.fmt,
                (last.shape[0] + w.shape[0], w.shape[1]),
                {name: np.concatenate([last.planes[name], w.planes[name]]) for name in w.planes},
            )
        merged.append(w)
    return merged[0] if len(merged) == 1 else SplitWeight(merged)
