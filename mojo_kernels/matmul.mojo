"""Matmul of float32 activations by GGUF-quantised or dense weights: dst[M, N] = x[M, K] @ W[N, K]^T (+ bias).

Quantised weights stay at their GGUF size in the load-time layout of `wicore/kernels/weights.py`:
tiles of 16 weight rows, interleaved so that 4 consecutive weights of each of the 16 rows fill
one 64-byte register (the VNNI / AMX B layout): unsigned integers u (4, 5, 6 or 8 bits; low
nibbles in one plane, high bits in another) with per-group scales, value = scale * (u - offset),
or scale * u + min (Q4_K). Q8_0 keeps its signed bytes.

x is quantised once per call to int8 blocks of 32 (llama.cpp's Q8_0). For each tile and each
group of 32 weights, the 8 quads of the tile are unpacked once and multiplied into up to 4 rows
of x at a time (8 for the K-quants, whose super-block x sub-block scales and mins are also formed
once per group for all of those rows): the x row's 4 bytes are broadcast, and one integer dot-product instruction adds
4 products into each of the 16 row lanes (VNNI `vpdpbusd`, u8 x s8 -> s32, or AVX2 `vpmaddubsw`
+ `vpmaddwd`). The offset cancels through the accumulator's start value (-offset x the sum of the
x block), a Q4_K min through the block sum; one float FMA per group applies weight scale x
activation scale to 16 outputs at once, with no horizontal sums. Every row of x goes the same
way whatever M is, so a token's logits do not depend on the batch it ran in.
Dense (F32/F16) weights go through a float32 panel GEMM. Both split the output rows over the cores.
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

from common import (
    Dims, F32Ptr, I32Ptr, I8Ptr, F32_LANES, data_addr, free_f32, num_threads, pool_run, pool_start, pool_worker_loop, ptr,
    scratch_f32,
)

comptime W = F32_LANES  # float32 lanes of the target's vector registers
comptime F32x = SIMD[DType.float32, W]
# Weight rows per micro-kernel tile for 4-row and 3-row x tiles: 4x3 and 3x4 keep 12
# accumulators in flight (FMA latency 4 x 2 pipes needs >= 8).
comptime NR4 = 3
comptime NR3 = 4
comptime PANEL_STEP = 12  # panel rows: a multiple of both tile widths
# Below this many multiply-adds a matmul runs on the calling thread: splitting it would cost more
# than it saves (a dense panel dispatch through the runtime costs ~20 us, one through the pool ~1 us).
comptime PARALLEL_MIN_WEIGHTS = 64 * 1024

# Weight formats (wicore/kernels/weights.py FORMATS, DENSE_F32, DENSE_F16).
comptime Q8_0 = 0
comptime Q5_0 = 1
comptime Q6_K = 2
comptime Q4_K = 3
comptime DENSE_F32 = 4
comptime DENSE_F16 = 5
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
    """A weight matrix as its descriptor (weights.py `descriptor`) gives it: quantised planes, or dense rows at `a`."""

    var fmt: Int
    var N: Int
    var K: Int  # a multiple of 32
    var a: U8Ptr  # Q8_0 bytes, or the low nibbles
    var b: U8Ptr  # Q5_0 / Q6_K high bits
    var s: U8Ptr  # per-group scales: f16 (Q8_0, Q5_0), int8 (Q6_K, per 16) or uint8 (Q4_K)
    var m: U8Ptr  # Q4_K per-group mins (uint8)
    var sup: F16Ptr  # K-quants: f16 super-block scales per 256 (Q4_K: scale, then min scale)


def _read_qw(desc: Int) -> QW:
    """The matrix a descriptor (weights.py `descriptor`, int64 [fmt, N, K, a, b, s, m, sup]) describes."""
    var e = Pointer[Int64, MutAnyOrigin](unsafe_from_address=desc)
    return QW(
        Int(e[unsafe_offset=0]), Int(e[unsafe_offset=1]), Int(e[unsafe_offset=2]),
        U8Ptr(unsafe_from_address=Int(e[unsafe_offset=3])), U8Ptr(unsafe_from_address=Int(e[unsafe_offset=4])),
        U8Ptr(unsafe_from_address=Int(e[unsafe_offset=5])), U8Ptr(unsafe_from_address=Int(e[unsafe_offset=6])),
        F16Ptr(unsafe_from_address=Int(e[unsafe_offset=7])),
    )  # fmt: skip


@always_inline
def _unpack[FMT: Int](w: QW, t: Int, g: Int) -> Array[U8x64, 8]:
    """Group g (32 weights) of tile t: quad q is byte 4r + j = u of weight 4q + j of row r."""
    var q = Array[U8x64, 8](fill=U8x64(0))
    var G = w.K // 32
    comptime if FMT == Q8_0:
        var base = (t * G + g) * 512
        comptime for i in range(8):
            q[i] = w.a.unsafe_load[width=64](base + 64 * i)
            comptime if HAS_VNNI:
                q[i] ^= 0x80  # signed -> unsigned for vpdpbusd; the offset 128 cancels
        return q^
    var base = (t * G + g) * 256
    comptime for p in range(4):
        var lo = w.a.unsafe_load[width=64](base + 64 * p)
        q[2 * p] = lo & 0xF
        q[2 * p + 1] = lo >> 4
    comptime if FMT == Q5_0:
        # bit q of byte 4r + j: the fifth bit of weight 4q + j of row r
        var h = w.b.unsafe_load[width=64]((t * G + g) * 64)
        # Move bit i to bit 4 with one shift, then one masked OR (a single vpternlog on AVX-512).
        comptime for i in range(8):
            comptime if i <= 4:
                q[i] |= (h << UInt8(4 - i)) & 0x10
            else:
                q[i] |= (h >> UInt8(i - 4)) & 0x10
    elif FMT == Q6_K:
        # bits 2s, 2s+1 of byte 4r + j of half k: the top bits of weight 4(4k + s) + j
        comptime for k in range(2):
            var h = w.b.unsafe_load[width=64]((t * G + g) * 128 + 64 * k)
            comptime for s in range(4):
                comptime if s <= 2:
                    q[4 * k + s] |= (h << UInt8(4 - 2 * s)) & 0x30
                else:
                    q[4 * k + s] |= (h >> UInt8(2 * s - 4)) & 0x30
    return q^


@always_inline
def _scales[FMT: Int](w: QW, t: Int, g: Int) -> F32x16:
    """Q8_0, Q5_0: scales of group g of the tile's 16 rows."""
    var d = Pointer[Float16, MutUntrackedOrigin](unsafe_from_address=Int(w.s))
    return d.unsafe_load[width=16]((t * (w.K // 32) + g) * 16).cast[DType.float32]()


@always_inline
def _maddubs(u: SIMD[DType.uint8, 32], x: SIMD[DType.int8, 32]) -> SIMD[DType.int32, 8]:
    """AVX2: sums of 4 adjacent u8 x s8 products (pairs in int16: no overflow for u <= 128)."""
    var p = llvm_intrinsic["llvm.x86.avx2.pmadd.ub.sw", SIMD[DType.int16, 16]](bitcast[DType.int8, 32](u), x)
    return llvm_intrinsic["llvm.x86.avx2.pmadd.wd", SIMD[DType.int32, 8]](p, SIMD[DType.int16, 16](1))


@always_inline
def _dot[FMT: Int](acc: I32x16, u: U8x64, x: I8x64) -> I32x16:
    """acc + per lane, the sum of 4 adjacent products of u and x's bytes."""
    comptime if HAS_VNNI:
        return llvm_intrinsic["llvm.x86.avx512.vpdpbusd.512", I32x16](acc, bitcast[DType.int8, 64](u), x)
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


@always_inline
def _quad(xq: I32Ptr, i: Int) -> I8x64:
    """x's 4 bytes i, broadcast to the 16 row lanes."""
    return bitcast[DType.int8, 64](I32x16(xq[unsafe_offset=i]))


def _quantize_x(x: F32Ptr, M: Int, K: Int, off: Int32, xq: I8Ptr, xs: F32Ptr, xsum: I32Ptr, xsb: F32Ptr):
    """x rows as int8 blocks of 32: scale max|x| / 127 per block (xs), -off x the sum of each 16 bytes
    (xsum: the dot products of u - off start there), and scale x the block's sum (xsb, what a Q4_K min
    multiplies)."""
    for i in range(M):
        for blk in range(K // 32):
            var v = x.unsafe_load[width=32](i * K + blk * 32)
            var amax = abs(v).reduce_max()
            var inv: Float32 = 127.0 / amax if amax > 0 else 0.0
            var qf = round(v * inv)
            xq.unsafe_store(i * K + blk * 32, qf.cast[DType.int8]())
            var q32 = qf.cast[DType.int32]()
            xs[unsafe_offset=i * (K // 32) + blk] = amax / 127.0
            xsum[unsafe_offset=i * (K // 16) + 2 * blk] = -off * q32.slice[16, offset=0]().reduce_add()
            xsum[unsafe_offset=i * (K // 16) + 2 * blk + 1] = -off * q32.slice[16, offset=16]().reduce_add()
            xsb[unsafe_offset=i * (K // 32) + blk] = (amax / 127.0) * q32.reduce_add().cast[DType.float32]()


# Bytes ahead of the group being multiplied that its planes are prefetched: the tiles of a thread's
# share lie end to end, so this streams through them (the hardware prefetcher alone reached about
# half the read bandwidth of one core).
comptime PREFETCH_BYTES = 4096


@always_inline
def _prefetch_ahead[FMT: Int](w: QW, group: Int):
    """Prefetch the planes of the group PREFETCH_BYTES ahead of `group` (counted over the whole matrix)."""
    comptime lo_bytes = 512 if FMT == Q8_0 else 256
    comptime hi_bytes = 64 if FMT == Q5_0 else (128 if FMT == Q6_K else 0)
    comptime ahead = PREFETCH_BYTES // lo_bytes
    comptime opts = PrefetchOptions().for_read().high_locality().to_data_cache()
    comptime for line in range(lo_bytes // 64):
        prefetch[opts](w.a.unsafe_offset((group + ahead) * lo_bytes + 64 * line))
    comptime for line in range(hi_bytes // 64):
        prefetch[opts](w.b.unsafe_offset((group + ahead) * hi_bytes + 64 * line))
    # Scales: 16 to 32 bytes a group, so one line every few groups; prefetching it each time is cheap.
    prefetch[opts](w.s.unsafe_offset((group + ahead) * 32))


def _qtile_rows[FMT: Int, mr: Int](
    w: QW, t: Int, xq: I8Ptr, xs: F32Ptr, xsum: I32Ptr, dst: F32Ptr, ldo: Int
):
    """Q8_0, Q5_0: dst[i, 16t .. 16t+15] for mr rows of x: each group of the tile is unpacked once for all rows."""
    var G = w.K // 32
    var acc = Array[F32x16, mr](fill=F32x16(0))
    var x32 = I32Ptr(unsafe_from_address=Int(xq))
    for g in range(G):
        _prefetch_ahead[FMT](w, t * G + g)
        var u = _unpack[FMT](w, t, g)
        var sc = _scales[FMT](w, t, g)
        comptime for i in range(mr):
            var x = x32.unsafe_offset(i * (w.K // 4) + g * 8)
            # xsum holds -offset x the sums of x's 16-byte halves (_quantize_x).
            var d = I32x16(0)
            comptime if _offset[FMT]() != 0:
                var h = xsum.unsafe_offset(i * (w.K // 16) + 2 * g)
                d = I32x16(h[unsafe_offset=0] + h[unsafe_offset=1])
            comptime for q in range(8):
                d = _dot[FMT](d, u[q], _quad(x, q))
            var sx = xs[unsafe_offset=i * G + g]
            acc[i] = d.cast[DType.float32]().fma(sc * sx, acc[i])
    var rows = min(16, w.N - 16 * t)
    comptime for i in range(mr):
        if rows == 16:
            dst.unsafe_store(i * ldo + 16 * t, acc[i])
        else:
            for r in range(rows):
                dst[unsafe_offset=i * ldo + 16 * t + r] = acc[i][r]


# x rows per K-quant tile pass: each unpacked group and its scales serve 8 rows, not 4 (one core,
# M=512 N=896 K=4864: Q4_K +22 %, Q6_K +24 %; 6 and 12 rows were no faster).
comptime KQ_MR = 8


def _kq_rows[FMT: Int, mr: Int](
    w: QW, t: Int, xq: I8Ptr, xs: F32Ptr, xsum: I32Ptr, xsb: F32Ptr, dst: F32Ptr, ldo: Int
):
    """K-quants (Q4_K, Q6_K): dst[i, 16t .. 16t+15] for mr rows of x; each group of the tile is
    unpacked once for all rows, its sub-scales (and Q4_K's sub-mins) multiplied by the super-block
    scales once for all rows. Per row and group: the int32 dot products (from -offset x the x block's
    sums, Q6_K), then one float conversion and one FMA by scales x the x block's scale (Q6_K: two, one
    per 16 weights), and for Q4_K one FMA of the mins by the x block's scale x sum (xsb). The float
    operations and their order are the same whatever mr is: a row's result does not depend on M."""
    var G = w.K // 32
    var acc = Array[F32x16, mr](fill=F32x16(0))
    var x32 = I32Ptr(unsafe_from_address=Int(xq))
    for g in range(G):
        _prefetch_ahead[FMT](w, t * G + g)
        var u = _unpack[FMT](w, t, g)
        comptime if FMT == Q4_K:
            var e = (t * (w.K // 256) + g // 8) * 32
            var sup = w.sup.unsafe_load[width=16](e).cast[DType.float32]()
            var dmin = w.sup.unsafe_load[width=16](e + 16).cast[DType.float32]()
            var sc = w.s.unsafe_load[width=16]((t * G + g) * 16).cast[DType.float32]() * sup
            var mn = w.m.unsafe_load[width=16]((t * G + g) * 16).cast[DType.float32]() * -dmin
            comptime for i in range(mr):
                var x = x32.unsafe_offset(i * (w.K // 4) + g * 8)
                # One row alone has no other row's chain to overlap with: two chains (exact in int32).
                var d = I32x16(0)
                var d2 = I32x16(0)
                comptime for q in range(8):
                    comptime if mr == 1 and q % 2 == 1:
                        d2 = _dot[FMT](d2, u[q], _quad(x, q))
                    else:
                        d = _dot[FMT](d, u[q], _quad(x, q))
                comptime if mr == 1:
                    d += d2
                acc[i] = d.cast[DType.float32]().fma(sc * xs[unsafe_offset=i * G + g], acc[i])
                acc[i] = mn.fma(F32x16(xsb[unsafe_offset=i * G + g]), acc[i])
        else:
            var sc = Pointer[Int8, MutUntrackedOrigin](unsafe_from_address=Int(w.s))
            var sup = w.sup.unsafe_load[width=16]((t * (w.K // 256) + g // 8) * 16).cast[DType.float32]()
            var s0 = sc.unsafe_load[width=16]((t * (w.K // 16) + 2 * g) * 16).cast[DType.float32]() * sup
            var s1 = sc.unsafe_load[width=16]((t * (w.K // 16) + 2 * g + 1) * 16).cast[DType.float32]() * sup
            comptime for i in range(mr):
                var x = x32.unsafe_offset(i * (w.K // 4) + g * 8)
                # xsum holds -32 x the sums of x's 16-byte halves (_quantize_x): the offset of u.
                var h = xsum.unsafe_offset(i * (w.K // 16) + 2 * g)
                var d0 = I32x16(h[unsafe_offset=0])
                var d1 = I32x16(h[unsafe_offset=1])
                comptime for q in range(4):
                    d0 = _dot[FMT](d0, u[q], _quad(x, q))
                    d1 = _dot[FMT](d1, u[4 + q], _quad(x, 4 + q))
                var sx = xs[unsafe_offset=i * G + g]
                acc[i] = d0.cast[DType.float32]().fma(s0 * sx, acc[i])
                acc[i] = d1.cast[DType.float32]().fma(s1 * sx, acc[i])
    var rows = min(16, w.N - 16 * t)
    comptime for i in range(mr):
        if rows == 16:
            dst.unsafe_store(i * ldo + 16 * t, acc[i])
        else:
            for r in range(rows):
                dst[unsafe_offset=i * ldo + 16 * t + r] = acc[i][r]


def _qtiles[FMT: Int](
    w: QW, t0: Int, t1: Int, M: Int, xq: I8Ptr, xs: F32Ptr, xsum: I32Ptr, xsb: F32Ptr, dst: F32Ptr, ldo: Int
):
    """Tiles t0..t1 against every row of x, 4 rows at a time (K-quants: KQ_MR, then 4, 3, 2, 1)."""
    for t in range(t0, t1):
        var i = 0
        while i < M:
            var q = xq.unsafe_offset(i * w.K)
            var s = xs.unsafe_offset(i * (w.K // 32))
            var h = xsum.unsafe_offset(i * (w.K // 16))
            var hb = xsb.unsafe_offset(i * (w.K // 32))
            var d = dst.unsafe_offset(i * ldo)
            var rest = M - i
            comptime if FMT == Q4_K or FMT == Q6_K:
                if rest >= KQ_MR:
                    _kq_rows[FMT, KQ_MR](w, t, q, s, h, hb, d, ldo)
                    i += KQ_MR
                    continue
                elif rest >= 4:
                    _kq_rows[FMT, 4](w, t, q, s, h, hb, d, ldo)
                elif rest == 3:
                    _kq_rows[FMT, 3](w, t, q, s, h, hb, d, ldo)
                elif rest == 2:
                    _kq_rows[FMT, 2](w, t, q, s, h, hb, d, ldo)
                else:
                    _kq_rows[FMT, 1](w, t, q, s, h, hb, d, ldo)
            else:
                if rest >= 4:
                    _qtile_rows[FMT, 4](w, t, q, s, h, d, ldo)
                elif rest == 3:
                    _qtile_rows[FMT, 3](w, t, q, s, h, d, ldo)
                elif rest == 2:
                    _qtile_rows[FMT, 2](w, t, q, s, h, d, ldo)
                else:
                    _qtile_rows[FMT, 1](w, t, q, s, h, d, ldo)
            i += 4


# A matmul job for the pool, Int64 slots: the weight's descriptor address, then M, xq, xs, xsum,
# dst, ldo, tiles, tiles per task, xsb.
comptime JOB_SLOTS = 10


@export
def wicore_matmul_job(ctx: Int, task: Int) abi("C"):
    """Pool task: tiles [task * chunk, (task + 1) * chunk) of the job at ctx."""
    var j = Pointer[Int64, MutAnyOrigin](unsafe_from_address=ctx)
    var w = _read_qw(Int(j[unsafe_offset=0]))
    var M = Int(j[unsafe_offset=1])
    var xq = I8Ptr(unsafe_from_address=Int(j[unsafe_offset=2]))
    var xs = F32Ptr(unsafe_from_address=Int(j[unsafe_offset=3]))
    var xsum = I32Ptr(unsafe_from_address=Int(j[unsafe_offset=4]))
    var dst = F32Ptr(unsafe_from_address=Int(j[unsafe_offset=5]))
    var ldo = Int(j[unsafe_offset=6])
    var chunk = Int(j[unsafe_offset=8])
    var t0 = task * chunk
    var t1 = min(Int(j[unsafe_offset=7]), t0 + chunk)
    var xsb = F32Ptr(unsafe_from_address=Int(j[unsafe_offset=9]))
    if w.fmt == Q8_0:
        _qtiles[Q8_0](w, t0, t1, M, xq, xs, xsum, xsb, dst, ldo)
    elif w.fmt == Q5_0:
        _qtiles[Q5_0](w, t0, t1, M, xq, xs, xsum, xsb, dst, ldo)
    elif w.fmt == Q6_K:
        _qtiles[Q6_K](w, t0, t1, M, xq, xs, xsum, xsb, dst, ldo)
    else:
        _qtiles[Q4_K](w, t0, t1, M, xq, xs, xsum, xsb, dst, ldo)


@export
def wicore_pool_worker(pool: Int) abi("C") -> Int:
    pool_worker_loop(pool)
    return 0


def _matmul_q(desc: Int, x: F32Ptr, dst: F32Ptr, M: Int, ldo: Int, pool: Int):
    var w = _read_qw(desc)
    var K = w.K
    var tiles = (w.N + 15) // 16
    var xq = I8Ptr(unsafe_from_address=Int(scratch_f32(M * K // 4)))
    var xs = scratch_f32(M * K // 32)
    var xsum = I32Ptr(unsafe_from_address=Int(scratch_f32(M * K // 16)))
    var xsb = scratch_f32(M * K // 32)
    var off = 0
    if w.fmt == Q8_0:
        off = _offset[Q8_0]()
    elif w.fmt == Q5_0:
        off = _offset[Q5_0]()
    elif w.fmt == Q6_K:
        off = _offset[Q6_K]()
    _quantize_x(x, M, K, Int32(off), xq, xs, xsum, xsb)
    # A few tasks per thread, so that a thread slowed by something else does not hold up the rest.
    var n_tasks = min(tiles, 4 * num_threads()) if w.N * K * M >= PARALLEL_MIN_WEIGHTS else 1
    var chunk = (tiles + n_tasks - 1) // n_tasks
    var job = Array[Int64, JOB_SLOTS](fill=0)
    job[0] = Int64(desc)
    job[1] = Int64(M)
    job[2] = Int64(Int(xq))
    job[3] = Int64(Int(xs))
    job[4] = Int64(Int(xsum))
    job[5] = Int64(Int(dst))
    job[6] = Int64(ldo)
    job[7] = Int64(tiles)
    job[8] = Int64(chunk)
    job[9] = Int64(Int(xsb))
    pool_run(pool, wicore_matmul_job, Int(Pointer(to=job)), (tiles + chunk - 1) // chunk)
    free_f32(F32Ptr(unsafe_from_address=Int(xq)))
    free_f32(xs)
    free_f32(xsb)
    free_f32(F32Ptr(unsafe_from_address=Int(xsum)))


def start_pool(dims: PythonObject) raises -> PythonObject:
    """Dims: (n_threads,). Start the process's thread pool (n_threads - 1 workers, 0: num_threads());
    returns its address."""
    var n = Dims(dims, 1)[0]
    return PythonObject(pool_start(n if n > 0 else num_threads(), wicore_pool_worker))


def _matmul_dense[DT: DType](
    x: F32Ptr, w: Pointer[Scalar[DT], MutAnyOrigin], dst: F32Ptr, M: Int, N: Int, K: Int, ldo: Int
):
    var nt = num_threads() if N * K * M >= PARALLEL_MIN_WEIGHTS else 1
    var nb = _panel_rows(K)
    var npanels = (N + nb - 1) // nb

    def panels(t: Int) {imm x, imm w, imm dst, imm M, imm N, imm K, imm ldo, imm nb, imm npanels, imm nt}:
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
                    x, M, K, rebind[F32Ptr](w).unsafe_offset(n0 * K), K, rows, dst.unsafe_offset(n0), ldo, pf, pf_bytes
                )
            else:
                for i in range(rows * K):
                    panel[unsafe_offset=i] = w[unsafe_offset=n0 * K + i].cast[DType.float32]()
                _gemm_panel(x, M, K, panel, K, rows, dst.unsafe_offset(n0), ldo, pf, pf_bytes)
            p += nt
        free_f32(panel)

    sync_parallelize(panels, nt)


def matmul(x: PythonObject, desc: PythonObject, bias: PythonObject, dst: PythonObject, dims: PythonObject) raises:
    """dst = x @ W^T (+ bias). desc is W's int64 [fmt, N, K, a, b, s, m, sup] (weights.py `descriptor`);
    dims is (M, has_bias, ldo, col0, pool): output row stride and first column, so the parts of a
    split matrix write side by side, and the thread pool's address (0: this thread only)."""
    var d = Dims(dims, 5)
    var e = data_addr(desc)
    var w = _read_qw(e)
    var M = d[0]
    var ldo = d[2]
    var xp = ptr[DType.float32](x)
    var op = ptr[DType.float32](dst).unsafe_offset(d[3])
    if w.fmt == DENSE_F32:
        _matmul_dense[DType.float32](xp, F32Ptr(unsafe_from_address=Int(w.a)), op, M, w.N, w.K, ldo)
    elif w.fmt == DENSE_F16:
        _matmul_dense[DType.float16](
            xp, Pointer[Float16, MutAnyOrigin](unsafe_from_address=Int(w.a)), op, M, w.N, w.K, ldo
        )
    elif w.fmt >= Q8_0 and w.fmt <= Q4_K:
        _matmul_q(e, xp, op, M, ldo, d[4])
    else:
        raise Error("weight: unsupported format code ", w.fmt)
    if d[1] != 0:
        _add_bias(op, ptr[DType.float32](bias), M, ldo, 0, w.N)


@export
def PyInit_matmul() abi("C") -> PythonObject:
    try:
        _ = initialize_runtime()
        var m = PythonModuleBuilder("matmul")
        m.def_function[matmul]("matmul", docstring="dst = x @ W^T + bias, W quantised or dense (a weights.py descriptor)")
        m.def_function[start_pool]("start_pool", docstring="start the thread pool; returns its address")
        return m.finalize()
    except e:
        abort(String("failed to create module matmul: ", e))
