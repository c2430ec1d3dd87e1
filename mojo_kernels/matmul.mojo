"""Matmul of float32 activations by GGUF-quantised or dense weights: dst[M, N] = x[M, K] @ W[N, K]^T (+ bias).

Quantised weights stay at their GGUF size in the load-time layout of `wicore/models/quant.py`:
unsigned integers u (4, 5, 6 or 8 bits) in 64-weight chunks, low nibbles in one plane and the
high bits in another, with per-group scales; value = scale * (u - offset), or scale * u + min
(Q4_K). Q8_0 keeps its signed bytes.

Two paths:
- M <= SMALL_M (decode, small batches): memory-bound. x is quantised once per call to int8
  blocks of 32 (llama.cpp's Q8_0), and each 64-weight chunk is unpacked once in registers and
  multiplied into every row of x with integer dot products: VNNI `vpdpbusd` (u8 x s8 -> s32)
  where the target has it, AVX2 `vpmaddubsw` + `vpmaddwd` otherwise. The offset cancels through
  the accumulator's start value (-offset x the sum of x's bytes), a Q4_K min through x's block
  sums, and one float FMA per 4 lanes applies weight scale x activation scale.
- M > SMALL_M (prefill, batches): compute-bound, so a panel of weight rows is
  dequantised once into a float32 scratch that stays in L2, then 4x3 / 3x4
  register-blocked micro-kernels multiply it with every row of x, while the
  thread's next panel of weights is prefetched from DRAM.
Both split the output rows N over the cores.
"""
from std.collections import Array
from std.memory import bitcast
from std.os import abort
from std.python import PythonObject
from std.python.bindings import PythonModuleBuilder
from std.runtime import initialize_runtime
from std.sys import llvm_intrinsic, size_of
from std.sys.info import CompilationTarget
from std.sys.intrinsics import prefetch, PrefetchOptions
from max.algorithm import sync_parallelize

from common import F32Ptr, I32Ptr, I8Ptr, free_f32, num_threads, ptr, scratch_f32, F32_LANES

comptime W = F32_LANES  # float32 lanes of the target's vector registers
comptime F32x = SIMD[DType.float32, W]
# Weight rows per micro-kernel tile for 4-row and 3-row x tiles: 4x3 and 3x4 keep 12
# accumulators in flight (FMA latency 4 x 2 pipes needs >= 8).
comptime NR4 = 3
comptime NR3 = 4
comptime PANEL_STEP = 12  # panel rows: a multiple of both tile widths
# Up to this many x rows, weights are unpacked in registers and reused across rows (decode
# batches); above, a dequantised panel feeds a register-tiled micro-kernel (prefill).
comptime SMALL_M = 8
# Below this many weights a matmul runs on one thread: dispatch costs ~20 us.
comptime PARALLEL_MIN_WEIGHTS = 64 * 1024

# Weight formats (wicore/models/quant.py FORMATS).
comptime Q8_0 = 0
comptime Q5_0 = 1
comptime Q6_K = 2
comptime Q4_K = 3
comptime CHUNK = 64  # weights per unpacked chunk: one 512-bit register of bytes
comptime HAS_VNNI = CompilationTarget.has_vnni() and CompilationTarget.has_avx512f()

# Untracked: the planes belong to numpy arrays the Python weight object keeps alive.
comptime U8Ptr = Pointer[UInt8, MutUntrackedOrigin]
comptime F16Ptr = Pointer[Float16, MutUntrackedOrigin]
comptime U8x64 = SIMD[DType.uint8, 64]
comptime I8x64 = SIMD[DType.int8, 64]
comptime I32x16 = SIMD[DType.int32, 16]
comptime F32x16 = SIMD[DType.float32, 16]


def _dot_tail(a: F32Ptr, b: F32Ptr, k0: Int, k1: Int) -> Float32:
    var s: Float32 = 0
    for k in range(k0, k1):
        s += a[unsafe_offset=k] * b[unsafe_offset=k]
    return s


def _micro[mr: Int, nr: Int](x: F32Ptr, ldx: Int, w: F32Ptr, ldw: Int, K: Int, dst: F32Ptr, ldd: Int):
    """dst[i, j] = dot(x[i, :K], w[j, :K]) for an mr x nr tile."""
    var acc = Array[F32x, mr * nr](fill=F32x(0))
    var k8 = K - K % W
    for k in range(0, k8, W):
        # Hold the shorter side in registers and stream the other one: 12 accumulators
        # + 3 held + 1 streamed vector fit the 16 ymm registers.
        comptime if mr <= nr:
            var xv = Array[F32x, mr](fill=F32x(0))
            comptime for i in range(mr):
                xv[i] = x.unsafe_load[width=W](i * ldx + k)
            comptime for j in range(nr):
                var wv = w.unsafe_load[width=W](j * ldw + k)
                comptime for i in range(mr):
                    acc[i * nr + j] = wv.fma(xv[i], acc[i * nr + j])
        else:
            var wv = Array[F32x, nr](fill=F32x(0))
            comptime for j in range(nr):
                wv[j] = w.unsafe_load[width=W](j * ldw + k)
            comptime for i in range(mr):
                var xv = x.unsafe_load[width=W](i * ldx + k)
                comptime for j in range(nr):
                    acc[i * nr + j] = wv[j].fma(xv, acc[i * nr + j])
    comptime for i in range(mr):
        comptime for j in range(nr):
            dst[unsafe_offset=i * ldd + j] = acc[i * nr + j].reduce_add() + _dot_tail(
                x.unsafe_offset(i * ldx), w.unsafe_offset(j * ldw), k8, K
            )


def _tile_rows[mr: Int](
    x: F32Ptr, ldx: Int, w: F32Ptr, ldw: Int, nrows: Int, K: Int, dst: F32Ptr, ldd: Int,
    pf: I8Ptr, pf_lines: Int, pf_per_tile: Int,
) -> Int:
    """mr rows of x against nrows panel rows. Each tile also prefetches pf_per_tile of the
    pf_lines cache lines at pf (the next panel's weights), so DRAM reads overlap the FMAs;
    returns how many lines are left."""
    comptime nr = NR4 if mr == 4 else NR3
    var left = pf_lines
    var j = 0
    while j < nrows:
        var stop = max(0, left - pf_per_tile)
        while left > stop:
            left -= 1
            prefetch[PrefetchOptions().for_read().high_locality().to_data_cache()](pf.unsafe_offset(left * 64))
        if j + nr <= nrows:
            _micro[mr, nr](x, ldx, w.unsafe_offset(j * ldw), ldw, K, dst.unsafe_offset(j), ldd)
            j += nr
        else:
            _micro[mr, 1](x, ldx, w.unsafe_offset(j * ldw), ldw, K, dst.unsafe_offset(j), ldd)
            j += 1
    return left


def _gemm_panel(
    x: F32Ptr, M: Int, K: Int, w: F32Ptr, ldw: Int, nrows: Int, dst: F32Ptr, N: Int,
    pf: I8Ptr, pf_bytes: Int,
):
    """dst[:, :nrows] (row stride N) = x[M, K] @ w[nrows, K]^T, prefetching pf[:pf_bytes].

    Rows of x go in tiles of 4 and 3 (17 = 4 + 4 + 3 + 3 + 3), never a thin 1- or 2-row
    tile unless M < 6: a thin tile loads as much of the panel per FMA as a full one."""
    var threes = (4 - M % 4) % 4
    if 3 * threes > M:
        threes = 0
    var tiles = (M - 3 * threes + 3) // 4 + threes
    var pf_lines = (pf_bytes + 63) // 64
    var per_tile = pf_lines // (tiles * (nrows // NR3 + 1)) + 1
    var i = 0
    while i < M:
        var rest = M - i
        var xo = x.unsafe_offset(i * K)
        var oo = dst.unsafe_offset(i * N)
        if rest > 3 * threes and rest >= 4:
            pf_lines = _tile_rows[4](xo, K, w, ldw, nrows, K, oo, N, pf, pf_lines, per_tile)
            i += 4
        elif rest >= 3:
            pf_lines = _tile_rows[3](xo, K, w, ldw, nrows, K, oo, N, pf, pf_lines, per_tile)
            i += 3
        elif rest == 2:
            pf_lines = _tile_rows[2](xo, K, w, ldw, nrows, K, oo, N, pf, pf_lines, per_tile)
            i += 2
        else:
            pf_lines = _tile_rows[1](xo, K, w, ldw, nrows, K, oo, N, pf, pf_lines, per_tile)
            i += 1


def _panel_rows(K: Int) -> Int:
    # Keep the float32 panel around 128 KB so it stays in L2 beside the x tiles; a whole
    # number of 3- and 4-wide tiles.
    var nb = (32 * 1024) // K
    return max(PANEL_STEP, min(60, nb - nb % PANEL_STEP))


def _add_bias(dst: F32Ptr, bias: F32Ptr, M: Int, N: Int, n0: Int, n1: Int):
    for m in range(M):
        for n in range(n0, n1):
            dst[unsafe_offset=m * N + n] += bias[unsafe_offset=n]



def _group[FMT: Int]() -> Int:
    return 16 if FMT == Q6_K else 32


def _offset[FMT: Int]() -> Int:
    """What the integer path subtracts from u: Q8_0's bytes are biased to unsigned only for VNNI."""
    comptime if FMT == Q8_0:
        return 128 if HAS_VNNI else 0
    elif FMT == Q5_0:
        return 16
    elif FMT == Q6_K:
        return 32
    return 0


@fieldwise_init
struct QW(ImplicitlyCopyable):
    """A quantised matrix: plane addresses from Python's descriptor (quant.py `descriptor`)."""

    var fmt: Int
    var N: Int
    var Kp: Int  # K rounded up to whole 64-weight chunks (the planes are padded with zeros)
    var a: U8Ptr  # Q8_0 bytes, or the low nibbles
    var b: U8Ptr  # Q5_0 / Q6_K high bits
    var s: U8Ptr  # per-group scales: f16 (Q8_0, Q5_0), int8 (Q6_K) or uint8 (Q4_K)
    var m: U8Ptr  # Q4_K per-group mins (uint8)
    var sup: F16Ptr  # K-quants: f16 super-block scale per 256 (Q4_K: scale, min scale)


@always_inline
def _unpack[FMT: Int](w: QW, n: Int, c: Int) -> U8x64:
    """Chunk c of row n as 64 bytes: byte j = weight c*64 + j."""
    comptime if FMT == Q8_0:
        return w.a.unsafe_load[width=64](n * w.Kp + c * CHUNK)
    var lo = w.a.unsafe_load[width=32](n * (w.Kp // 2) + c * 32)
    var u = (lo & 0xF).join(lo >> 4)
    comptime if FMT == Q5_0:
        # 8 bytes: bit t of byte j is the fifth bit of weight t*8 + j.
        var h = bitcast[DType.uint64, 1](w.b.unsafe_load[width=8](n * (w.Kp // 8) + c * 8))
        var bits = (SIMD[DType.uint64, 8](h[0]) >> SIMD[DType.uint64, 8](0, 1, 2, 3, 4, 5, 6, 7)) & 0x0101010101010101
        u |= bitcast[DType.uint8, 64](bits) << 4
    elif FMT == Q6_K:
        # 16 bytes: bits 2s, 2s+1 of byte j are the top bits of weight s*16 + j.
        var h2 = bitcast[DType.uint64, 2](w.b.unsafe_load[width=16](n * (w.Kp // 4) + c * 16))
        var h4 = h2.join(h2)
        var bits = (h4.join(h4) >> SIMD[DType.uint64, 8](0, 0, 2, 2, 4, 4, 6, 6)) & 0x0303030303030303
        u |= bitcast[DType.uint8, 64](bits) << 4
    return u


@always_inline
def _gscale[FMT: Int](w: QW, n: Int, g: Int) -> Float32:
    """Scale of group g (G weights) of row n."""
    comptime if FMT == Q8_0 or FMT == Q5_0:
        return Pointer[Float16, MutAnyOrigin](unsafe_from_address=Int(w.s))[unsafe_offset=n * (w.Kp // 32) + g].cast[
            DType.float32
        ]()
    elif FMT == Q6_K:
        var sub = Pointer[Int8, MutAnyOrigin](unsafe_from_address=Int(w.s))[unsafe_offset=n * (w.Kp // 16) + g]
        return w.sup[unsafe_offset=n * (w.Kp // 256) + g // 16].cast[DType.float32]() * sub.cast[DType.float32]()
    var sub = w.s[unsafe_offset=n * (w.Kp // 32) + g]
    return w.sup[unsafe_offset=n * (w.Kp // 128) + (g // 8) * 2].cast[DType.float32]() * sub.cast[DType.float32]()


@always_inline
def _gmin[FMT: Int](w: QW, n: Int, g: Int) -> Float32:
    """Q4_K's per-group offset (value = scale * u + min); 0 for the other formats."""
    comptime if FMT == Q4_K:
        var sub = w.m[unsafe_offset=n * (w.Kp // 32) + g]
        return -w.sup[unsafe_offset=n * (w.Kp // 128) + (g // 8) * 2 + 1].cast[DType.float32]() * sub.cast[
            DType.float32
        ]()
    return 0


@always_inline
def _lane_scales[FMT: Int](w: QW, n: Int, c: Int) -> F32x16:
    """Weight scale of each int32 lane of a chunk's dot product (lane l covers weights 4l..4l+3)."""
    comptime if _group[FMT]() == 32:
        return F32x16(
            SIMD[DType.float32, 8](_gscale[FMT](w, n, 2 * c)).join(SIMD[DType.float32, 8](_gscale[FMT](w, n, 2 * c + 1)))
        )
    var s01 = SIMD[DType.float32, 4](_gscale[FMT](w, n, 4 * c)).join(SIMD[DType.float32, 4](_gscale[FMT](w, n, 4 * c + 1)))
    var s23 = SIMD[DType.float32, 4](_gscale[FMT](w, n, 4 * c + 2)).join(
        SIMD[DType.float32, 4](_gscale[FMT](w, n, 4 * c + 3))
    )
    return s01.join(s23)


@always_inline
def _maddubs(u: SIMD[DType.uint8, 32], x: SIMD[DType.int8, 32]) -> SIMD[DType.int32, 8]:
    """AVX2: sums of 4 adjacent u8 x s8 products (pairs in int16: no overflow for u <= 128)."""
    var p = llvm_intrinsic["llvm.x86.avx2.pmadd.ub.sw", SIMD[DType.int16, 16]](bitcast[DType.int8, 32](u), x)
    return llvm_intrinsic["llvm.x86.avx2.pmadd.wd", SIMD[DType.int32, 8]](p, SIMD[DType.int16, 16](1))


@always_inline
def _dot[FMT: Int](acc: I32x16, u: U8x64, x: I8x64) -> I32x16:
    """acc + sums of 4 adjacent products of the chunk's weights and x's bytes."""
    comptime if HAS_VNNI:
        return llvm_intrinsic["llvm.x86.avx512.vpdpbusd.512", I32x16](acc, bitcast[DType.int8, 64](u ^ 0x80 if FMT == Q8_0 else u), x)
    elif FMT == Q8_0:
        # Signed x signed without VNNI: |w| x (x with w's sign), llama.cpp's trick; |w| <= 128 fits.
        var q = bitcast[DType.int8, 64](u)
        var au = bitcast[DType.uint8, 64](abs(q))
        var sx = q.lt(0).select(-x, q.eq(0).select(I8x64(0), x))
        return acc + _maddubs(au.slice[32, offset=0](), sx.slice[32, offset=0]()).join(
            _maddubs(au.slice[32, offset=32](), sx.slice[32, offset=32]())
        )
    else:
        return acc + _maddubs(u.slice[32, offset=0](), x.slice[32, offset=0]()).join(
            _maddubs(u.slice[32, offset=32](), x.slice[32, offset=32]())
        )


def _quantize_x(x: F32Ptr, M: Int, K: Int, Kp: Int, offset: Int, xq: I8Ptr, xoff: I32Ptr, xsl: F32Ptr, xgs: F32Ptr):
    """x rows as int8 blocks of 32 (zero-padded to Kp) with, per 4-byte lane, the block scale
    (xsl) and -offset x the bytes' sum (xoff, the dot product's start value), and per block
    scale x sum (xgs, for Q4_K mins)."""
    for i in range(M):
        for blk in range(Kp // 32):
            var base = blk * 32
            var v = SIMD[DType.float32, 32](0)
            if base + 32 <= K:
                v = x.unsafe_load[width=32](i * K + base)
            else:
                for j in range(max(0, K - base)):
                    v[j] = x[unsafe_offset=i * K + base + j]
            var amax = abs(v).reduce_max()
            var d = amax / 127.0
            var inv: Float32 = 127.0 / amax if amax > 0 else 0.0
            var qf = round(v * inv)
            xq.unsafe_store(i * Kp + base, qf.cast[DType.int8]())
            var q32 = qf.cast[DType.int32]()
            var lanes = i * (Kp // 4) + blk * 8
            comptime for l in range(8):
                xoff[unsafe_offset=lanes + l] = Int32(-offset) * q32.slice[4, offset=4 * l]().reduce_add()
                xsl[unsafe_offset=lanes + l] = d
            xgs[unsafe_offset=i * (Kp // 32) + blk] = d * q32.reduce_add().cast[DType.float32]()


@always_inline
def _block_scales[FMT: Int](w: QW, n: Int, sb: Int) -> F32x16:
    """Scales of the groups of weights 256*sb .. 256*sb+255 of row n, in one load: 8 groups of 32
    (lanes 0-7, repeated in 8-15) or 16 of 16."""
    comptime if FMT == Q8_0 or FMT == Q5_0:
        var d = Pointer[Float16, MutAnyOrigin](unsafe_from_address=Int(w.s)).unsafe_load[width=8](n * (w.Kp // 32) + 8 * sb)
        var f = d.cast[DType.float32]()
        return f.join(f)
    elif FMT == Q6_K:
        var sc = Pointer[Int8, MutAnyOrigin](unsafe_from_address=Int(w.s)).unsafe_load[width=16](n * (w.Kp // 16) + 16 * sb)
        return sc.cast[DType.float32]() * w.sup[unsafe_offset=n * (w.Kp // 256) + sb].cast[DType.float32]()
    var sc = w.s.unsafe_load[width=8](n * (w.Kp // 32) + 8 * sb).cast[DType.float32]()
    var f = sc * w.sup[unsafe_offset=n * (w.Kp // 128) + 2 * sb].cast[DType.float32]()
    return f.join(f)


@always_inline
def _chunk_lanes[G: Int, j: Int](s: F32x16) -> F32x16:
    """Lane scales of chunk j of a block (lane l covers weights 4l..4l+3) from _block_scales."""
    comptime if G == 32:
        comptime a = 2 * j
        comptime b = 2 * j + 1
        return s.shuffle[a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b]()
    comptime a = 4 * j
    comptime b = 4 * j + 1
    comptime c = 4 * j + 2
    comptime d = 4 * j + 3
    return s.shuffle[a, a, a, a, b, b, b, b, c, c, c, c, d, d, d, d]()


@always_inline
def _chunk[FMT: Int, mr: Int](
    w: QW, n: Int, c: Int, sv: F32x16, xq: I8Ptr, xoff: I32Ptr, xsl: F32Ptr, mut acc: Array[F32x16, mr]
):
    """acc[i] += chunk c of row n times x row i, per lane, scaled (sv: the weights' lane scales)."""
    var lanes = w.Kp // 4
    var u = _unpack[FMT](w, n, c)
    comptime for i in range(mr):
        var d = _dot[FMT](
            xoff.unsafe_load[width=16](i * lanes + c * 16), u, xq.unsafe_load[width=64](i * w.Kp + c * CHUNK)
        )
        acc[i] = d.cast[DType.float32]().fma(sv * xsl.unsafe_load[width=16](i * lanes + c * 16), acc[i])


def _rows_q[FMT: Int, mr: Int](
    w: QW, xq: I8Ptr, xoff: I32Ptr, xsl: F32Ptr, xgs: F32Ptr, dst: F32Ptr, ldo: Int, n0: Int, n1: Int
):
    """Up to 4 x rows against weight rows n0..n1: each chunk is unpacked once and used for every row.
    Scales are read per block of 256 weights (one vector load), Q4_K mins applied per block."""
    comptime G = _group[FMT]()
    var nsb = w.Kp // 256
    var nc = w.Kp // CHUNK
    for n in range(n0, n1):
        var acc = Array[F32x16, mr](fill=F32x16(0))
        var corr = Array[SIMD[DType.float32, 8], mr](fill=SIMD[DType.float32, 8](0))
        for sb in range(nsb):
            var sg = _block_scales[FMT](w, n, sb)
            comptime for j in range(4):
                _chunk[FMT, mr](w, n, 4 * sb + j, _chunk_lanes[G, j](sg), xq, xoff, xsl, acc)
            comptime if FMT == Q4_K:
                var dmin = w.sup[unsafe_offset=n * (w.Kp // 128) + 2 * sb + 1].cast[DType.float32]()
                var mins = w.m.unsafe_load[width=8](n * (w.Kp // 32) + 8 * sb).cast[DType.float32]() * -dmin
                comptime for i in range(mr):
                    corr[i] = mins.fma(xgs.unsafe_load[width=8](i * (w.Kp // 32) + 8 * sb), corr[i])
        # Q8_0 / Q5_0 rows need not be whole blocks of 256 (K-quants always are).
        for c in range(4 * nsb, nc):
            _chunk[FMT, mr](w, n, c, _lane_scales[FMT](w, n, c), xq, xoff, xsl, acc)
        comptime for i in range(mr):
            dst[unsafe_offset=i * ldo + n] = acc[i].reduce_add() + corr[i].reduce_add()


def _rows_q_tiles[FMT: Int](
    w: QW, xq: I8Ptr, xoff: I32Ptr, xsl: F32Ptr, xgs: F32Ptr, dst: F32Ptr, M: Int, ldo: Int, n0: Int, n1: Int
):
    var lanes = w.Kp // 4
    var i = 0
    while i < M:
        var rest = M - i
        var q = xq.unsafe_offset(i * w.Kp)
        var o = xoff.unsafe_offset(i * lanes)
        var s = xsl.unsafe_offset(i * lanes)
        var g = xgs.unsafe_offset(i * (w.Kp // 32))
        var d = dst.unsafe_offset(i * ldo)
        if rest >= 4:
            _rows_q[FMT, 4](w, q, o, s, g, d, ldo, n0, n1)
        elif rest == 3:
            _rows_q[FMT, 3](w, q, o, s, g, d, ldo, n0, n1)
        elif rest == 2:
            _rows_q[FMT, 2](w, q, o, s, g, d, ldo, n0, n1)
        else:
            _rows_q[FMT, 1](w, q, o, s, g, d, ldo, n0, n1)
        i += 4


def _dequant_panel[FMT: Int](w: QW, n0: Int, nrows: Int, panel: F32Ptr):
    """Rows n0..n0+nrows as float32, row stride Kp."""
    comptime G = _group[FMT]()
    for r in range(nrows):
        var n = n0 + r
        for c in range(w.Kp // CHUNK):
            var u = _unpack[FMT](w, n, c)
            comptime for j in range(CHUNK // G):
                var s = _gscale[FMT](w, n, c * (CHUNK // G) + j)
                var m = _gmin[FMT](w, n, c * (CHUNK // G) + j)
                var part = u.slice[G, offset=j * G]()
                var v: SIMD[DType.float32, G]
                comptime if FMT == Q8_0:
                    v = bitcast[DType.int8, G](part).cast[DType.float32]()
                elif FMT == Q4_K:
                    v = part.cast[DType.float32]()
                else:
                    v = part.cast[DType.float32]() - Float32(_offset[FMT]())
                panel.unsafe_store(r * w.Kp + c * CHUNK + j * G, v.fma(SIMD[DType.float32, G](s), SIMD[DType.float32, G](m)))


def _matmul_q[FMT: Int](w: QW, x: F32Ptr, dst: F32Ptr, M: Int, K: Int, ldo: Int):
    var N = w.N
    var Kp = w.Kp
    var nt = num_threads() if N * K >= PARALLEL_MIN_WEIGHTS else 1
    if M <= SMALL_M:
        var xq = I8Ptr(unsafe_from_address=Int(scratch_f32(M * Kp // 4)))
        var xoff = I32Ptr(unsafe_from_address=Int(scratch_f32(M * Kp // 4)))
        var xsl = scratch_f32(M * Kp // 4)
        var xgs = scratch_f32(M * Kp // 32)
        _quantize_x(x, M, K, Kp, _offset[FMT](), xq, xoff, xsl, xgs)
        var chunk = (N + nt - 1) // nt

        def rows(t: Int) {imm w, imm xq, imm xoff, imm xsl, imm xgs, imm dst, imm M, imm ldo, imm N, imm chunk}:
            _rows_q_tiles[FMT](w, xq, xoff, xsl, xgs, dst, M, ldo, t * chunk, min(N, (t + 1) * chunk))

        sync_parallelize(rows, nt)
        free_f32(F32Ptr(unsafe_from_address=Int(xq)))
        free_f32(F32Ptr(unsafe_from_address=Int(xoff)))
        free_f32(xsl)
        free_f32(xgs)
        return
    var nb = _panel_rows(Kp)
    var npanels = (N + nb - 1) // nb
    var row_bytes = (Kp if FMT == Q8_0 else Kp // 2)

    def panels(t: Int) {imm w, imm x, imm dst, imm M, imm N, imm K, imm Kp, imm ldo, imm nb, imm npanels, imm nt, imm row_bytes}:
        var panel = scratch_f32(nb * Kp)
        var p = t
        while p < npanels:
            var n0 = p * nb
            var rows = min(nb, N - n0)
            _dequant_panel[FMT](w, n0, rows, panel)
            # This thread's next panel of packed weights is prefetched during the FMAs.
            var nxt = min(N, n0 + nt * nb)
            var pf_rows = max(0, min(nb, N - nxt))
            var pf = I8Ptr(unsafe_from_address=Int(w.a) + nxt * row_bytes)
            _gemm_panel(x, M, K, panel, Kp, rows, dst.unsafe_offset(n0), ldo, pf, pf_rows * row_bytes)
            p += nt
        free_f32(panel)

    sync_parallelize(panels, nt)


def matmul_q(x: PythonObject, desc: PythonObject, bias: PythonObject, dst: PythonObject, dims: PythonObject) raises:
    """Quantised matmul. desc is int64 [fmt, N, K, Kp, a, b, s, m, sup] (quant.py `descriptor`);
    dims is int64 [M, has_bias, ldo, col0]: output row stride and first column, so the parts of a
    split matrix write side by side."""
    var e = ptr[DType.int64](desc)
    var d = ptr[DType.int64](dims)
    var w = QW(
        Int(e[unsafe_offset=0]), Int(e[unsafe_offset=1]), Int(e[unsafe_offset=3]),
        U8Ptr(unsafe_from_address=Int(e[unsafe_offset=4])), U8Ptr(unsafe_from_address=Int(e[unsafe_offset=5])),
        U8Ptr(unsafe_from_address=Int(e[unsafe_offset=6])), U8Ptr(unsafe_from_address=Int(e[unsafe_offset=7])),
        F16Ptr(unsafe_from_address=Int(e[unsafe_offset=8])),
    )  # fmt: skip
    var K = Int(e[unsafe_offset=2])
    var M = Int(d[unsafe_offset=0])
    var ldo = Int(d[unsafe_offset=2])
    var xp = ptr[DType.float32](x)
    var op = ptr[DType.float32](dst).unsafe_offset(Int(d[unsafe_offset=3]))
    if w.fmt == Q8_0:
        _matmul_q[Q8_0](w, xp, op, M, K, ldo)
    elif w.fmt == Q5_0:
        _matmul_q[Q5_0](w, xp, op, M, K, ldo)
    elif w.fmt == Q6_K:
        _matmul_q[Q6_K](w, xp, op, M, K, ldo)
    elif w.fmt == Q4_K:
        _matmul_q[Q4_K](w, xp, op, M, K, ldo)
    else:
        raise Error("unsupported weight format")
    if d[unsafe_offset=1] != 0:
        _add_bias(op, ptr[DType.float32](bias), M, ldo, 0, w.N)


def _matmul_dense[DT: DType](x: F32Ptr, w: Pointer[Scalar[DT], MutAnyOrigin], dst: F32Ptr, M: Int, N: Int, K: Int):
    var nt = num_threads() if N * K * M >= PARALLEL_MIN_WEIGHTS else 1
    var nb = _panel_rows(K)
    var npanels = (N + nb - 1) // nb

    def panels(t: Int) {imm x, imm w, imm dst, imm M, imm N, imm K, imm nb, imm npanels, imm nt}:
        var panel = scratch_f32(nb * K)
        var p = t
        while p < npanels:
            var n0 = p * nb
            var rows = min(nb, N - n0)
            var nxt = min(N, n0 + nt * nb)
            var pf = I8Ptr(unsafe_from_address=Int(w.unsafe_offset(nxt * K)))
            var pf_bytes = max(0, min(nb, N - nxt)) * K * size_of[DT]()
            comptime if DT == DType.float32:
                _gemm_panel(
                    x, M, K, rebind[F32Ptr](w).unsafe_offset(n0 * K), K, rows, dst.unsafe_offset(n0), N, pf, pf_bytes
                )
            else:
                for i in range(rows * K):
                    panel[unsafe_offset=i] = w[unsafe_offset=n0 * K + i].cast[DType.float32]()
                _gemm_panel(x, M, K, panel, K, rows, dst.unsafe_offset(n0), N, pf, pf_bytes)
            p += nt
        free_f32(panel)

    sync_parallelize(panels, nt)


def matmul_dense(x: PythonObject, w: PythonObject, bias: PythonObject, dst: PythonObject, dims: PythonObject) raises:
    """Dense matmul; dims is int32 [M, N, K, is_f16, has_bias]."""
    var d = ptr[DType.int32](dims)
    var M = Int(d[unsafe_offset=0])
    var N = Int(d[unsafe_offset=1])
    var K = Int(d[unsafe_offset=2])
    var xp = ptr[DType.float32](x)
    var op = ptr[DType.float32](dst)
    if d[unsafe_offset=3] != 0:
        _matmul_dense[DType.float16](xp, ptr[DType.float16](w), op, M, N, K)
    else:
        _matmul_dense[DType.float32](xp, ptr[DType.float32](w), op, M, N, K)
    if d[unsafe_offset=4] != 0:
        _add_bias(op, ptr[DType.float32](bias), M, N, 0, N)


@export
def PyInit_matmul() abi("C") -> PythonObject:
    try:
        _ = initialize_runtime()
        var m = PythonModuleBuilder("matmul")
        m.def_function[matmul_q]("matmul_q", docstring="dst = x @ W^T + bias, W a GGUF-quantised matrix")
        m.def_function[matmul_dense]("matmul_dense", docstring="dst = x @ w^T + bias, w float32 or float16")
        return m.finalize()
    except e:
        abort(String("failed to create module matmul: ", e))
