"""Matmul of float32 activations by quantised or dense weights: dst[M, N] = x[M, K] @ W[N, K]^T (+ bias).

Quantised weights use the load-time layout of `wicore/models/quant.py`:
value[n, k] = q[n, k] * scale[n, k // G] (+ min[n, k // G]), q int8, G in {16, 32}.

Two paths:
- M <= SMALL_M (decode, small batches): memory-bound, so each weight group is read
  once per 4 rows of x and turned into float32 in registers; per group the int8 x
  float dot is scaled once.
- M > SMALL_M (prefill, batches): compute-bound, so a panel of weight rows is
  dequantised once into a float32 scratch that stays in L2, then 4x3 / 3x4
  register-blocked micro-kernels multiply it with every row of x, while the
  thread's next panel of weights is prefetched from DRAM.
Both split the output rows N over the cores.
"""
from std.collections import Array
from std.os import abort
from std.python import PythonObject
from std.python.bindings import PythonModuleBuilder
from std.runtime import initialize_runtime
from std.sys import size_of
from std.sys.intrinsics import prefetch, PrefetchOptions
from max.algorithm import sync_parallelize

from common import F32Ptr, I8Ptr, free_f32, num_threads, ptr, scratch_f32

comptime W = 8  # float32 lanes in an AVX2 register
comptime F32x = SIMD[DType.float32, W]
# Weight rows per micro-kernel tile for 4-row and 3-row x tiles: 4x3 and 3x4 keep 12
# accumulators in flight (FMA latency 4 x 2 pipes needs >= 8).
comptime NR4 = 3
comptime NR3 = 4
comptime PANEL_STEP = 12  # panel rows: a multiple of both tile widths
# Up to this many x rows, weights are dequantised in registers and reused across rows (decode
# batches); above, a dequantised panel feeds a register-tiled micro-kernel (prefill).
comptime SMALL_M = 8
# Below this many weights a matmul runs on one thread: dispatch costs ~20 us.
comptime PARALLEL_MIN_WEIGHTS = 64 * 1024


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


def _rows_q[G: Int, HAS_MIN: Bool, mr: Int](
    x: F32Ptr, xsum: F32Ptr, q: I8Ptr, sc: F32Ptr, mn: F32Ptr, dst: F32Ptr, K: Int, N: Int, n0: Int, n1: Int
):
    """Up to 4 x rows against weight rows n0..n1: each weight group is dequantised once, in
    registers, and used for every x row. xsum[i, b] = sum of x row i over group b (for mins)."""
    var nb = K // G
    for n in range(n0, n1):
        var acc = Array[F32x, mr](fill=F32x(0))
        var macc = Array[Float32, mr](fill=0)
        var qrow = q.unsafe_offset(n * K)
        for b in range(nb):
            var w = Array[F32x, G // W](fill=F32x(0))
            comptime for j in range(G // W):
                w[j] = qrow.unsafe_load[width=W](b * G + j * W).cast[DType.float32]()
            var s = F32x(sc[unsafe_offset=n * nb + b])
            comptime for i in range(mr):
                var part = F32x(0)
                comptime for j in range(G // W):
                    part = w[j].fma(x.unsafe_load[width=W](i * K + b * G + j * W), part)
                acc[i] = part.fma(s, acc[i])
                comptime if HAS_MIN:
                    macc[i] += mn[unsafe_offset=n * nb + b] * xsum[unsafe_offset=i * nb + b]
        comptime for i in range(mr):
            dst[unsafe_offset=i * N + n] = acc[i].reduce_add() + macc[i]


def _rows_q_tiles[G: Int, HAS_MIN: Bool](
    x: F32Ptr, xsum: F32Ptr, q: I8Ptr, sc: F32Ptr, mn: F32Ptr, dst: F32Ptr, M: Int, K: Int, N: Int, n0: Int, n1: Int
):
    var nb = K // G
    var i = 0
    while i < M:
        var xo = x.unsafe_offset(i * K)
        var so = xsum.unsafe_offset(i * nb)
        var do = dst.unsafe_offset(i * N)
        var rest = M - i
        if rest >= 4:
            _rows_q[G, HAS_MIN, 4](xo, so, q, sc, mn, do, K, N, n0, n1)
        elif rest == 3:
            _rows_q[G, HAS_MIN, 3](xo, so, q, sc, mn, do, K, N, n0, n1)
        elif rest == 2:
            _rows_q[G, HAS_MIN, 2](xo, so, q, sc, mn, do, K, N, n0, n1)
        else:
            _rows_q[G, HAS_MIN, 1](xo, so, q, sc, mn, do, K, N, n0, n1)
        i += 4


def _dequant_panel[G: Int, HAS_MIN: Bool](
    q: I8Ptr, sc: F32Ptr, mn: F32Ptr, K: Int, n0: Int, nrows: Int, panel: F32Ptr
):
    var nb = K // G
    for r in range(nrows):
        var n = n0 + r
        for b in range(nb):
            var s = F32x(sc[unsafe_offset=n * nb + b])
            var m = F32x(0)
            comptime if HAS_MIN:
                m = F32x(mn[unsafe_offset=n * nb + b])
            comptime for j in range(G // W):
                var off = b * G + j * W
                var wv = q.unsafe_load[width=W](n * K + off).cast[DType.float32]()
                panel.unsafe_store(r * K + off, wv.fma(s, m))


def _matmul_q[G: Int, HAS_MIN: Bool](
    x: F32Ptr, q: I8Ptr, sc: F32Ptr, mn: F32Ptr, dst: F32Ptr, M: Int, N: Int, K: Int
):
    var nt = num_threads() if N * K >= PARALLEL_MIN_WEIGHTS else 1
    if M <= SMALL_M:
        var nb = K // G
        var xsum = scratch_f32(M * nb)
        comptime if HAS_MIN:
            for i in range(M * nb):
                var sum = F32x(0)
                comptime for j in range(G // W):
                    sum += x.unsafe_load[width=W](i * G + j * W)
                xsum[unsafe_offset=i] = sum.reduce_add()
        var chunk = (N + nt - 1) // nt

        def rows(t: Int) {imm x, imm xsum, imm q, imm sc, imm mn, imm dst, imm M, imm K, imm N, imm chunk}:
            _rows_q_tiles[G, HAS_MIN](x, xsum, q, sc, mn, dst, M, K, N, t * chunk, min(N, (t + 1) * chunk))

        sync_parallelize(rows, nt)
        free_f32(xsum)
        return
    var nb = _panel_rows(K)
    var npanels = (N + nb - 1) // nb

    def panels(t: Int) {imm x, imm q, imm sc, imm mn, imm dst, imm M, imm N, imm K, imm nb, imm npanels, imm nt}:
        var panel = scratch_f32(nb * K)
        var p = t
        while p < npanels:
            var n0 = p * nb
            var rows = min(nb, N - n0)
            _dequant_panel[G, HAS_MIN](q, sc, mn, K, n0, rows, panel)
            # This thread's next panel of int8 weights is prefetched during the FMAs.
            var nxt = min(N, n0 + nt * nb)
            var pf_rows = max(0, min(nb, N - nxt))
            _gemm_panel(x, M, K, panel, K, rows, dst.unsafe_offset(n0), N, q.unsafe_offset(nxt * K), pf_rows * K)
            p += nt
        free_f32(panel)

    sync_parallelize(panels, nt)


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


def matmul_q(
    x: PythonObject, q: PythonObject, scale: PythonObject, mins: PythonObject,
    bias: PythonObject, dst: PythonObject, dims: PythonObject,
) raises:
    """Quantised matmul; dims is int32 [M, N, K, group, has_min, has_bias]."""
    var d = ptr[DType.int32](dims)
    var M = Int(d[unsafe_offset=0])
    var N = Int(d[unsafe_offset=1])
    var K = Int(d[unsafe_offset=2])
    var G = Int(d[unsafe_offset=3])
    var has_min = d[unsafe_offset=4] != 0
    var xp = ptr[DType.float32](x)
    var qp = ptr[DType.int8](q)
    var sp = ptr[DType.float32](scale)
    var mp = ptr[DType.float32](mins)
    var op = ptr[DType.float32](dst)
    if G == 32 and has_min:
        _matmul_q[32, True](xp, qp, sp, mp, op, M, N, K)
    elif G == 32:
        _matmul_q[32, False](xp, qp, sp, mp, op, M, N, K)
    elif G == 16 and has_min:
        _matmul_q[16, True](xp, qp, sp, mp, op, M, N, K)
    elif G == 16:
        _matmul_q[16, False](xp, qp, sp, mp, op, M, N, K)
    else:
        raise Error("unsupported quant group layout")
    if d[unsafe_offset=5] != 0:
        _add_bias(op, ptr[DType.float32](bias), M, N, 0, N)


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
        m.def_function[matmul_q]("matmul_q", docstring="dst = x @ dequant(q, scale, min)^T + bias")
        m.def_function[matmul_dense]("matmul_dense", docstring="dst = x @ w^T + bias, w float32 or float16")
        return m.finalize()
    except e:
        abort(String("failed to create module matmul: ", e))
