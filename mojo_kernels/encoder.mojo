"""Encoder (BERT) kernels: layer norm, fused residual + layer norm, GELU (erf), bidirectional
attention over a right-padded batch, masked mean pooling, L2 normalisation.

All arrays are float32 (lengths int32), C-contiguous and shape-checked by
wicore/kernels/encoder.py. Padding is on the right: sequence b holds lengths[b] real
tokens followed by padding, so the key padding mask is the length, and padded keys
and queries are skipped instead of masked.
"""
from std.collections import Array
from std.math import erf, exp, sqrt
from std.os import abort
from std.python import PythonObject
from std.python.bindings import PythonModuleBuilder
from std.runtime import initialize_runtime
from max.algorithm import sync_parallelize
from common import Dims, F32Ptr, free_f32, num_threads, ptr, scratch_f32

comptime W = 8  # 8 float32 lanes on every target: the register transposes below are written for 8
comptime V = SIMD[DType.float32, W]
# Waking the thread pool costs ~15-25 us: threads only for calls with more than ~50 us of
# single-threaded work. Each kernel passes an estimate of its work in ns (one Zen 3 core).
comptime PARALLEL_MIN_NS = 50_000


def _for_rows[F: RegisterPassable & def(Int) -> None](row: F, rows: Int, work_ns: Int):
    """Call row(r) for r in [0, rows), split into contiguous blocks over threads when big."""
    var nt = min(rows, num_threads()) if work_ns >= PARALLEL_MIN_NS else 1
    if nt == 1:
        for r in range(rows):
            row(r)
        return

    def work(t: Int) {imm row, imm rows, imm nt}:
        for r in range(t * rows // nt, (t + 1) * rows // nt):
            row(r)

    sync_parallelize(work, nt)


def _sum(x: F32Ptr, k: Int) -> Float32:
    var acc = V(0)
    var i = 0
    while i + W <= k:
        acc += x.unsafe_load[width=W](i)
        i += W
    var s = acc.reduce_add()
    while i < k:
        s += x[unsafe_offset=i]
        i += 1
    return s


def _sum_sq_dev(x: F32Ptr, mean: Float32, k: Int) -> Float32:
    var acc = V(0)
    var i = 0
    while i + W <= k:
        var d = x.unsafe_load[width=W](i) - mean
        acc = d.fma(d, acc)
        i += W
    var s = acc.reduce_add()
    while i < k:
        var d = x[unsafe_offset=i] - mean
        s += d * d
        i += 1
    return s


def _layer_norm_row(x: F32Ptr, g: F32Ptr, b: F32Ptr, eps: Float32, dst: F32Ptr, k: Int):
    """dst = (x - mean) / sqrt(var + eps) * g + b; dst may alias x.

    Two passes (mean, then squared deviations) rather than E[x^2] - mean^2, which
    cancels badly in float32 when the mean is large against the spread.
    """
    var mean = _sum(x, k) / Float32(k)
    var inv = 1.0 / sqrt(_sum_sq_dev(x, mean, k) / Float32(k) + eps)
    var i = 0
    while i + W <= k:
        var v = (x.unsafe_load[width=W](i) - mean) * inv
        dst.unsafe_store(i, v.fma(g.unsafe_load[width=W](i), b.unsafe_load[width=W](i)))
        i += W
    while i < k:
        dst.unsafe_store(i, (x[unsafe_offset=i] - mean) * inv * g[unsafe_offset=i] + b[unsafe_offset=i])
        i += 1


def layer_norm(
    x_obj: PythonObject, g_obj: PythonObject, b_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject,
    eps_obj: PythonObject,
) raises:
    """Dims: (M, K)."""
    var x = ptr[DType.float32](x_obj)
    var g = ptr[DType.float32](g_obj)
    var b = ptr[DType.float32](b_obj)
    var dst = ptr[DType.float32](out_obj)
    var eps = Float32(Float64(py=eps_obj))
    var dims = Dims(dims_obj, 2)
    var m = dims[0]
    var k = dims[1]

    def row(r: Int) {imm x, imm g, imm b, imm dst, imm eps, imm k}:
        _layer_norm_row(x.unsafe_offset(r * k), g, b, eps, dst.unsafe_offset(r * k), k)

    _for_rows(row, m, m * k // 4)  # ~0.25 ns per element (three passes)


def add_layer_norm(
    x_obj: PythonObject, d_obj: PythonObject, g_obj: PythonObject, b_obj: PythonObject, out_obj: PythonObject,
    dims_obj: PythonObject, eps_obj: PythonObject,
) raises:
    """Dims: (M, K)."""
    var x = ptr[DType.float32](x_obj)
    var d = ptr[DType.float32](d_obj)
    var g = ptr[DType.float32](g_obj)
    var b = ptr[DType.float32](b_obj)
    var dst = ptr[DType.float32](out_obj)
    var eps = Float32(Float64(py=eps_obj))
    var dims = Dims(dims_obj, 2)
    var m = dims[0]
    var k = dims[1]

    def row(r: Int) {imm x, imm d, imm g, imm b, imm dst, imm eps, imm k}:
        # The sum goes to dst first (elementwise, so dst may alias x or delta), then is normalised in place.
        var xr = x.unsafe_offset(r * k)
        var dr = d.unsafe_offset(r * k)
        var o = dst.unsafe_offset(r * k)
        var i = 0
        while i + W <= k:
            o.unsafe_store(i, xr.unsafe_load[width=W](i) + dr.unsafe_load[width=W](i))
            i += W
        while i < k:
            o.unsafe_store(i, xr[unsafe_offset=i] + dr[unsafe_offset=i])
            i += 1
        _layer_norm_row(o, g, b, eps, o, k)

    _for_rows(row, m, m * k // 3)  # ~0.3 ns per element (four passes)


def _gelu[w: Int](x: SIMD[DType.float32, w]) -> SIMD[DType.float32, w]:
    # The exact (erf) form, as BERT uses, not the tanh approximation.
    return 0.5 * x * (1.0 + erf(x * 0.7071067811865476))


def gelu(x_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject) raises:
    """Dims: (number of elements,)."""
    var x = ptr[DType.float32](x_obj)
    var dst = ptr[DType.float32](out_obj)
    var n = Dims(dims_obj, 1)[0]
    comptime CHUNK = 4096
    var chunks = (n + CHUNK - 1) // CHUNK

    def chunk(c: Int) {imm x, imm dst, imm n}:
        var i = c * CHUNK
        var end = min(n, i + CHUNK)
        while i + W <= end:
            dst.unsafe_store(i, _gelu[W](x.unsafe_load[width=W](i)))
            i += W
        while i < end:
            dst.unsafe_store(i, _gelu[1](x[unsafe_offset=i]))
            i += 1

    _for_rows(chunk, chunks, n)  # ~1 ns per element (erf is a long polynomial)


def _dot(a: F32Ptr, b: F32Ptr, d: Int) -> Float32:
    var acc = V(0)
    var i = 0
    while i + W <= d:
        acc = a.unsafe_load[width=W](i).fma(b.unsafe_load[width=W](i), acc)
        i += W
    var s = acc.reduce_add()
    while i < d:
        s += a[unsafe_offset=i] * b[unsafe_offset=i]
        i += 1
    return s


def _add(dst: F32Ptr, x: F32Ptr, d: Int):
    """dst += x."""
    var i = 0
    while i + W <= d:
        dst.unsafe_store(i, dst.unsafe_load[width=W](i) + x.unsafe_load[width=W](i))
        i += W
    while i < d:
        dst.unsafe_store(i, dst[unsafe_offset=i] + x[unsafe_offset=i])
        i += 1


def _zero(dst: F32Ptr, d: Int):
    for i in range(d):
        dst.unsafe_store(i, 0.0)


def _round_up(n: Int) -> Int:
    return (n + W - 1) // W * W


comptime QT = 4  # queries per attention tile: each key or value load feeds QT FMAs


def _exp_row(s: F32Ptr, n: Int) -> Float32:
    """s = exp(s - max(s)) in place; returns 1 / sum, so the caller normalises once per output."""
    var mv = V(-Float32.MAX)
    var i = 0
    while i + W <= n:
        mv = max(mv, s.unsafe_load[width=W](i))
        i += W
    var mx = mv.reduce_max()
    while i < n:
        mx = max(mx, s[unsafe_offset=i])
        i += 1
    var acc = V(0)
    i = 0
    while i + W <= n:
        var e = exp(s.unsafe_load[width=W](i) - mx)
        s.unsafe_store(i, e)
        acc += e
        i += W
    var total = acc.reduce_add()
    while i < n:
        var e = exp(s[unsafe_offset=i] - mx)
        s.unsafe_store(i, e)
        total += e
        i += 1
    return 1.0 / total


def _attend_head(
    qkv: F32Ptr, dst: F32Ptr, S: Int, H: Int, D: Int, L: Int, scale: Float32, kt: F32Ptr, vs: F32Ptr, p: F32Ptr
):
    """One (sequence, head): qkv points at this head's q in token 0, dst at its output in token 0.

    K is copied transposed into kt [D, Lp] and V into vs [L, Dp] (Lp, Dp rounded up to W, the
    extra lanes zero), so that scores are full-width FMAs over 8 keys and P.V full-width FMAs
    over 8 dims, both in register tiles of QT queries, with no horizontal sums.
    """
    var stride = 3 * H * D
    var out_stride = H * D
    var Lp = _round_up(L)
    var Dp = _round_up(D)
    var k0 = qkv.unsafe_offset(H * D)
    var v0 = qkv.unsafe_offset(2 * H * D)
    _zero(kt, D * Lp)
    _zero(vs, L * Dp)
    for j in range(L):
        var kj = k0.unsafe_offset(j * stride)
        var vj = v0.unsafe_offset(j * stride)
        for d in range(D):
            kt.unsafe_store(d * Lp + j, kj[unsafe_offset=d])
            vs.unsafe_store(j * Dp + d, vj[unsafe_offset=d])

    var i0 = 0
    while i0 < L:
        var nq = min(QT, L - i0)
        # A short last tile repeats its last query: the extra rows are computed, never stored.
        var q = Array[F32Ptr, QT](fill=qkv)
        comptime for r in range(QT):
            q[r] = qkv.unsafe_offset(min(i0 + r, L - 1) * stride)

        # Scores p[r, j] = q_r . k_j * scale, 8 keys at a time.
        var j = 0
        while j < Lp:
            var acc = Array[V, QT](fill=V(0))
            for d in range(D):
                var k = kt.unsafe_load[width=W](d * Lp + j)
                comptime for r in range(QT):
                    acc[r] = V(q[r][unsafe_offset=d]).fma(k, acc[r])
            comptime for r in range(QT):
                p.unsafe_store(r * Lp + j, acc[r] * scale)
            j += W
        var inv = Array[Float32, QT](fill=0)
        for r in range(nq):
            inv[r] = _exp_row(p.unsafe_offset(r * Lp), L)

        # out_r = sum_j p[r, j] v_j / sum_j p[r, j], 8 dims at a time.
        var d0 = 0
        while d0 < Dp:
            var acc = Array[V, QT](fill=V(0))
            for jj in range(L):
                var v = vs.unsafe_load[width=W](jj * Dp + d0)
                comptime for r in range(QT):
                    acc[r] = V(p[unsafe_offset=r * Lp + jj]).fma(v, acc[r])
            for r in range(nq):
                var o = dst.unsafe_offset((i0 + r) * out_stride + d0)
                var res = acc[r] * inv[r]
                if d0 + W <= D:
                    o.unsafe_store(0, res)
                else:
                    for lane in range(D - d0):
                        o.unsafe_store(lane, res[lane])
            d0 += W
        i0 += QT
    # Padded queries get zeros: defined values, and nothing downstream reads them as tokens.
    for i in range(L, S):
        _zero(dst.unsafe_offset(i * out_stride), D)


def attention(
    qkv_obj: PythonObject, len_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject,
    scale_obj: PythonObject,
) raises:
    """Dims: (B, S, H, D); qkv [B, S, 3, H, D], out [B, S, H, D], lengths int32 [B]."""
    var qkv = ptr[DType.float32](qkv_obj)
    var lengths = ptr[DType.int32](len_obj)
    var dst = ptr[DType.float32](out_obj)
    var dims = Dims(dims_obj, 4)
    var B = dims[0]
    var S = dims[1]
    var H = dims[2]
    var D = dims[3]
    var scale = Float32(Float64(py=scale_obj))

    var work_ns = 0  # ~D/16 ns per query-key pair, plus copying K and V
    for b in range(B):
        var L = Int(lengths[unsafe_offset=b])
        work_ns += H * (L * L * D // 16 + L * D)
    var items = B * H
    var nt = min(items, num_threads()) if work_ns >= PARALLEL_MIN_NS else 1

    # Items go round-robin over threads: sequence lengths differ, neighbours have similar ones.
    def work(t: Int) {imm qkv, imm lengths, imm dst, imm S, imm H, imm D, imm scale, imm items, imm nt}:
        var Sp = _round_up(max(S, 1))
        var Dp = _round_up(D)
        var kt = scratch_f32(D * Sp)
        var vs = scratch_f32(Sp * Dp)
        var p = scratch_f32(QT * Sp)
        var it = t
        while it < items:
            var b = it // H
            var h = it % H
            var q = qkv.unsafe_offset(b * S * 3 * H * D + h * D)
            var o = dst.unsafe_offset(b * S * H * D + h * D)
            _attend_head(q, o, S, H, D, Int(lengths[unsafe_offset=b]), scale, kt, vs, p)
            it += nt
        free_f32(kt)
        free_f32(vs)
        free_f32(p)

    if nt == 1:
        work(0)
    else:
        sync_parallelize(work, nt)


def mean_pool(
    x_obj: PythonObject, len_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject
) raises:
    """Dims: (B, S, E); out[b] = mean of x[b, :lengths[b]] (zeros for an empty sequence)."""
    var x = ptr[DType.float32](x_obj)
    var lengths = ptr[DType.int32](len_obj)
    var dst = ptr[DType.float32](out_obj)
    var dims = Dims(dims_obj, 3)
    var B = dims[0]
    var S = dims[1]
    var E = dims[2]

    def row(b: Int) {imm x, imm lengths, imm dst, imm S, imm E}:
        var L = Int(lengths[unsafe_offset=b])
        var o = dst.unsafe_offset(b * E)
        _zero(o, E)
        var xb = x.unsafe_offset(b * S * E)
        for s in range(L):
            _add(o, xb.unsafe_offset(s * E), E)
        var inv = Float32(1.0) / Float32(max(L, 1))
        for i in range(E):
            o.unsafe_store(i, o[unsafe_offset=i] * inv)

    _for_rows(row, B, B * S * E // 8)  # ~0.1 ns per element


def l2_normalize(x_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject) raises:
    """Dims: (M, N); rows scaled: out = x / max(||x||, 1e-12) (torch's F.normalize); out may alias x."""
    var x = ptr[DType.float32](x_obj)
    var dst = ptr[DType.float32](out_obj)
    var dims = Dims(dims_obj, 2)
    var m = dims[0]
    var n = dims[1]

    def row(r: Int) {imm x, imm dst, imm n}:
        var xr = x.unsafe_offset(r * n)
        var o = dst.unsafe_offset(r * n)
        var inv = 1.0 / max(sqrt(_dot(xr, xr, n)), 1e-12)
        var i = 0
        while i + W <= n:
            o.unsafe_store(i, xr.unsafe_load[width=W](i) * inv)
            i += W
        while i < n:
            o.unsafe_store(i, xr[unsafe_offset=i] * inv)
            i += 1

    _for_rows(row, m, m * n // 8)  # ~0.1 ns per element


@export
def PyInit_encoder() abi("C") -> PythonObject:
    try:
        _ = initialize_runtime()
        var m = PythonModuleBuilder("encoder")
        m.def_function[layer_norm]("layer_norm", docstring="out = (x - mean) / sqrt(var + eps) * g + b, rows")
        m.def_function[add_layer_norm]("add_layer_norm", docstring="out = layer_norm(x + delta)")
        m.def_function[gelu]("gelu", docstring="out = x * Phi(x) (erf GELU), flat")
        m.def_function[attention]("attention", docstring="bidirectional attention, right-padded batch")
        m.def_function[mean_pool]("mean_pool", docstring="mean over each sequence's real tokens")
        m.def_function[l2_normalize]("l2_normalize", docstring="rows scaled to unit L2 norm")
        return m.finalize()
    except e:
        abort(String("failed to create module encoder: ", e))
