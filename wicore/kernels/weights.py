"""The weights the matmul kernel reads: quantised matrices in its tiled layout, and dense ones.

Each quantised format these models use is small unsigned integers u times a
per-group scale: value = scale * (u - offset), or scale * u + min for Q4_K
(Q8_0 keeps its signed bytes: value = scale * q).  The load-time repack
(wicore/models/quant.py reads the GGUF blocks) keeps every bit and every scale of
the file and only moves them: rows go in tiles of 16, and within a tile the
weights of a group of 32 are interleaved so that "4 consecutive weights of each
of the 16 rows" (a quad, byte 4r + j) fills one 64-byte register, the layout
VNNI dot products and AMX tiles read.  Planes, each [tiles, bytes per tile], per
group of 32 weights of a tile:

    qs  int8   Q8_0: 8 quads (512 bytes)
    lo  uint8  4 x 64 bytes: low nibbles of quads 0, 2, 4, 6, high nibbles of quads 1, 3, 5, 7
    hi  uint8  Q5_0: 64 bytes, bit q of byte 4r + j = the fifth bit of quad q's weight
               Q6_K: 2 x 64 bytes, bits 2s..2s+1 of half k = the top bits of quad 4k + s
    d   f16    Q8_0 / Q5_0: 16 scales per group; Q6_K: 16 super-scales per 256 weights;
               Q4_K: 16 super-scales, then 16 super-mins, per 256 weights
    sc  int8 / uint8  K-quants: 16 sub-scales per group (Q6_K: per 16 weights)
    mn  uint8  Q4_K: 16 sub-mins per group

Rows past N (to a whole tile) are zero.  Bytes per weight: Q8_0 1.0625, Q5_0
0.6875, Q6_K 0.8203 (as in the file), Q4_K 0.578 (the file's 0.5625 packs two
6-bit sub-scales into 12 bits; bytes are cheaper to read).  Matrices of one
format fuse into one matmul (q|k|v, gate|up) when the first part fills whole
tiles; other parts stay side by side in a SplitWeight.

F32 and F16 matrices stay dense (DenseWeight).  Every weight carries the
descriptor the matmul kernel reads: its format code, shape and data addresses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wicore.kernels.checks import require

QK_K = 256
R = 16  # weight rows per tile
# format -> (kernel code, group of a scale, offset subtracted from u, planes)
FORMATS: dict[str, tuple[int, int, int, tuple[str, ...]]] = {
    "q8_0": (0, 32, 0, ("qs", "d")),
    "q5_0": (1, 32, 16, ("lo", "hi", "d")),
    "q6_k": (2, 16, 32, ("lo", "hi", "sc", "d")),
    "q4_k": (3, 32, 0, ("lo", "sc", "mn", "d")),
}
# Kernel codes of the dense formats (matmul.mojo DENSE_F32, DENSE_F16).
DENSE_F32 = 4
DENSE_F16 = 5


def _tiles(n: int) -> int:
    return -(-n // R)


def _plane_dtypes(fmt: str, k: int) -> dict[str, tuple[type, int]]:
    """Plane name -> (dtype, elements per tile)."""
    return {
        "qs": (np.int8, k * R),
        "lo": (np.uint8, k * R // 2),
        "hi": (np.uint8, k * R // (8 if fmt == "q5_0" else 4)),
        "sc": (np.int8 if fmt == "q6_k" else np.uint8, k // FORMATS[fmt][1] * R),
        "mn": (np.uint8, k // 32 * R),
        "d": (np.float16, k // 32 * R if fmt in ("q8_0", "q5_0") else k // QK_K * R * (2 if fmt == "q4_k" else 1)),
    }


def _descriptor(code: int, n: int, k: int, addresses: tuple[int, int, int, int, int]) -> np.ndarray:
    """What the matmul kernel reads of a weight: int64 [code, N, K, five data addresses]. The
    addresses are taken once, at load: the weight object keeps its arrays alive and unchanged."""
    return np.array([code, n, k, *addresses], dtype=np.int64)


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


@dataclass
class QuantWeight:
    """A GGUF-quantised matrix in the kernel's tiled layout; logical shape [N, K]."""

    fmt: str
    shape: tuple[int, int]
    planes: dict[str, np.ndarray]
    # int64 [code, N, K, addresses of qs|lo, hi, sc|d, mn, d]: see _descriptor.
    descriptor: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The kernel reads these arrays raw: check them once here, not per call.
        if self.fmt not in FORMATS:
            raise ValueError(f"quantised weight: unknown format {self.fmt!r}")
        n, k = self.shape = (int(self.shape[0]), int(self.shape[1]))
        code, _, _, names = FORMATS[self.fmt]
        if k % 32 or (self.fmt in ("q6_k", "q4_k") and k % QK_K):
            raise ValueError(f"quantised weight: K={k} is not a whole number of {self.fmt} blocks")
        if set(self.planes) != set(names):
            raise ValueError(f"quantised weight: {self.fmt} needs planes {names}, got {tuple(self.planes)}")
        dtypes = _plane_dtypes(self.fmt, k)
        for name in names:
            dtype, per_tile = dtypes[name]
            require(self.planes[name], dtype, name, (_tiles(n), per_tile))

        def addr(name: str) -> int:
            return _address(self.planes[name]) if name in self.planes else 0

        scales = "sc" if "sc" in self.planes else "d"
        supers = "d" if "sc" in self.planes else ""
        self.descriptor = _descriptor(
            code, n, k, (addr("qs") or addr("lo"), addr("hi"), addr(scales), addr("mn"), addr(supers))
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.planes.values())

    def dequantize(self) -> np.ndarray:
        return self.rows(np.arange(self.shape[0]))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Dequantised rows (embedding lookup), reading only those rows' bytes."""
        n, k = self.shape
        g = k // 32
        tile, lane = np.divmod(np.asarray(ids, dtype=np.int64), R)
        _, group, offset, _ = FORMATS[self.fmt]
        p = self.planes

        def pick(name: str, *inner: int) -> np.ndarray:
            """Plane `name` as [tiles, *inner, 16 rows, rest] -> the selected rows: [len(ids), *inner, rest]."""
            a = p[name].reshape(len(p[name]), *inner, R, -1)
            return np.moveaxis(a, 1 + len(inner), 1)[tile, lane]

        if self.fmt == "q8_0":
            u = pick("qs", g, 8).reshape(len(ids), k).astype(np.float32)
        else:
            lo = pick("lo", g, 4)  # [rows, g, 4, 4]
            quads = np.stack([lo & 0x0F, lo >> 4], axis=3).reshape(len(ids), g, 8, 4).astype(np.int16)
            if self.fmt == "q5_0":
                hi = pick("hi", g)[:, :, None, :]  # [rows, g, 1, 4]
                quads |= ((hi >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1).astype(np.int16) << 4
            elif self.fmt == "q6_k":
                hi = pick("hi", g, 2)[:, :, :, None, :]  # [rows, g, 2, 1, 4]
                shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
                quads |= ((hi >> shifts) & 3).reshape(len(ids), g, 8, 4).astype(np.int16) << 4
            u = quads.reshape(len(ids), k).astype(np.float32) - offset
        if self.fmt in ("q8_0", "q5_0"):
            scale, mins = pick("d", g)[:, :, 0].astype(np.float32), None
        elif self.fmt == "q6_k":
            d = np.repeat(pick("d", k // QK_K)[:, :, 0].astype(np.float32), QK_K // 16, axis=1)
            scale, mins = d * pick("sc", k // 16)[:, :, 0].astype(np.float32), None
        else:
            d = np.repeat(pick("d", k // QK_K, 2).astype(np.float32)[:, :, :, 0], QK_K // 32, axis=1)
            scale = d[:, :, 0] * pick("sc", g)[:, :, 0].astype(np.float32)
            mins = -d[:, :, 1] * pick("mn", g)[:, :, 0].astype(np.float32)
        w = u.reshape(len(ids), k // group, group) * scale[:, :, None]
        if mins is not None:
            w += mins[:, :, None]
        return w.reshape(len(ids), k)


@dataclass
class DenseWeight:
    """F32 or F16 matrix [N, K], as stored in the file."""

    w: np.ndarray
    # int64 [code, N, K, address of w, 0, 0, 0, 0]: see _descriptor.
    descriptor: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.w.ndim != 2 or self.w.dtype not in (np.float32, np.float16) or not self.w.flags.c_contiguous:
            raise ValueError(f"dense weight: need a C-contiguous 2-D float32/float16 array, got {self.w.dtype}")
        code = DENSE_F16 if self.w.dtype == np.float16 else DENSE_F32
        self.descriptor = _descriptor(code, *self.w.shape, (_address(self.w), 0, 0, 0, 0))

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


def to_tiles(a: np.ndarray, n: int, row_axis: int = -1) -> np.ndarray:
    """Per-row values [N, *inner] -> tiles of 16 rows, the row axis moved to `row_axis` of
    [tiles, *inner], flattened per tile (rows past N are 0). Scales put the 16 rows last; weight
    quads put them before the quad's 4 bytes."""
    padded = np.zeros((_tiles(n) * R, *a.shape[1:]), dtype=a.dtype)
    padded[:n] = a
    t = padded.reshape(_tiles(n), R, *a.shape[1:])
    return np.ascontiguousarray(np.moveaxis(t, 1, row_axis)).reshape(_tiles(n), -1)


def _quads(u: np.ndarray) -> np.ndarray:
    """u [N, K] -> [N, K/32 groups, 8 quads, 4]: the order in which a tile lays out one row."""
    return u.reshape(u.shape[0], -1, 8, 4)


def pack_planes(u: np.ndarray, n: int, fmt: str) -> dict[str, np.ndarray]:
    """Weights u [N, K] (unsigned, or Q8_0's signed bytes) as the qs | lo, hi planes."""
    q = _quads(u)  # [N, g, 8, 4]

    def tiled(per_row: np.ndarray) -> np.ndarray:
        # [N, g, X, 4] -> [T, g, X, 16 rows, 4]: 4 bytes of each of the 16 rows side by side
        return to_tiles(per_row, n, row_axis=-2)

    if fmt == "q8_0":
        return {"qs": tiled(q)}
    pairs = q.reshape(q.shape[0], q.shape[1], 4, 2, 4)
    planes = {"lo": tiled(((pairs[:, :, :, 0] & 0x0F) | ((pairs[:, :, :, 1] & 0x0F) << 4)).astype(np.uint8))}
    if fmt == "q5_0":
        bits = ((q >> 4) & 1).astype(np.uint8) << np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
        planes["hi"] = tiled(np.bitwise_or.reduce(bits, axis=2)[:, :, None, :])
    elif fmt == "q6_k":
        top = ((q >> 4) & 3).astype(np.uint8).reshape(q.shape[0], q.shape[1], 2, 4, 4)
        shifted = top << (np.arange(4, dtype=np.uint8) * 2).reshape(1, 1, 1, 4, 1)
        planes["hi"] = tiled(np.bitwise_or.reduce(shifted, axis=3))
    return planes


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
        # Tiles hold 16 rows: parts fuse only where the first one ends on a tile boundary.
        if merged and merged[-1].fmt == w.fmt and merged[-1].shape[0] % R == 0:
            last = merged.pop()
            w = QuantWeight(
                w.fmt,
                (last.shape[0] + w.shape[0], w.shape[1]),
                {name: np.concatenate([last.planes[name], w.planes[name]]) for name in w.planes},
            )
        merged.append(w)
    return merged[0] if len(merged) == 1 else SplitWeight(merged)
