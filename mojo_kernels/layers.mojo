"""Row-wise layer kernels: rmsnorm, fused residual + rmsnorm, rope, silu/gelu * up.

All arrays are float32, C-contiguous and shape-checked by wicore/kernels/layers.py.
These run ~100 times per decoded token on one row, so they stay single-threaded
unless a call has enough work to pay for waking the thread pool (~20 us).
"""
from std.collections import List
from std.math import cos, exp, log, sin, sqrt
from std.os import abort
from std.python import PythonObject
from std.python.bindings import PythonModuleBuilder
from std.runtime import initialize_runtime
from max.algorithm import sync_parallelize
from common import Dims, F32Ptr, ptr, num_threads, F32_LANES

comptime W = F32_LANES  # float32 lanes of the target's vector registers
comptime V = SIMD[DType.float32, W]
# Threads pay off once a call has more than ~50 us of single-threaded work: waking the pool
# costs ~15-25 us. Each kernel passes an estimate of its work in ns, measured on one Zen 3 core.
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


def _sum_sq(x: F32Ptr, k: Int) -> Float32:
    # Four accumulators hide the FMA latency.
    var a0 = V(0)
    var a1 = V(0)
    var a2 = V(0)
    var a3 = V(0)
    var i = 0
    while i + 4 * W <= k:
        var v0 = x.unsafe_load[width=W](i)
        var v1 = x.unsafe_load[width=W](i + W)
        var v2 = x.unsafe_load[width=W](i + 2 * W)
        var v3 = x.unsafe_load[width=W](i + 3 * W)
        a0 = v0.fma(v0, a0)
        a1 = v1.fma(v1, a1)
        a2 = v2.fma(v2, a2)
        a3 = v3.fma(v3, a3)
        i += 4 * W
    while i + W <= k:
        var v = x.unsafe_load[width=W](i)
        a0 = v.fma(v, a0)
        i += W
    var s = ((a0 + a1) + (a2 + a3)).reduce_add()
    while i < k:
        var v = x[unsafe_offset=i]
        s += v * v
        i += 1
    return s


def _scale_mul(x: F32Ptr, w: F32Ptr, scale: Float32, dst: F32Ptr, k: Int):
    """dst = x * scale * w; dst may alias x."""
    var i = 0
    while i + W <= k:
        dst.unsafe_store(i, x.unsafe_load[width=W](i) * scale * w.unsafe_load[width=W](i))
        i += W
    while i < k:
        dst.unsafe_store(i, x[unsafe_offset=i] * scale * w[unsafe_offset=i])
        i += 1


def _norm_scale(ss: Float32, k: Int, eps: Float32) -> Float32:
    return 1.0 / sqrt(ss / Float32(k) + eps)


def rmsnorm(
    x_obj: PythonObject, w_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject, eps_obj: PythonObject
) raises:
    """Dims: (M, K)."""
    var x = ptr[DType.float32](x_obj)
    var w = ptr[DType.float32](w_obj)
    var dst = ptr[DType.float32](out_obj)
    var eps = Float32(Float64(py=eps_obj))
    var dims = Dims(dims_obj, 2)
    var m = dims[0]
    var k = dims[1]

    def row(r: Int) {imm x, imm w, imm dst, imm eps, imm k}:
        var xr = x.unsafe_offset(r * k)
        _scale_mul(xr, w, _norm_scale(_sum_sq(xr, k), k, eps), dst.unsafe_offset(r * k), k)

    _for_rows(row, m, m * k // 8)  # ~0.1 ns per element


def add_rmsnorm(
    x_obj: PythonObject, d_obj: PythonObject, w_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject,
    eps_obj: PythonObject,
) raises:
    """Dims: (M, K)."""
    var x = ptr[DType.float32](x_obj)
    var d = ptr[DType.float32](d_obj)
    var w = ptr[DType.float32](w_obj)
    var dst = ptr[DType.float32](out_obj)
    var eps = Float32(Float64(py=eps_obj))
    var dims = Dims(dims_obj, 2)
    var m = dims[0]
    var k = dims[1]

    def row(r: Int) {imm x, imm d, imm w, imm dst, imm eps, imm k}:
        # One pass adds the residual and sums the squares; the second normalises.
        var xr = x.unsafe_offset(r * k)
        var dr = d.unsafe_offset(r * k)
        var acc = V(0)
        var i = 0
        while i + W <= k:
            var v = xr.unsafe_load[width=W](i) + dr.unsafe_load[width=W](i)
            xr.unsafe_store(i, v)
            acc = v.fma(v, acc)
            i += W
        var ss = acc.reduce_add()
        while i < k:
            var v = xr[unsafe_offset=i] + dr[unsafe_offset=i]
            xr.unsafe_store(i, v)
            ss += v * v
            i += 1
        _scale_mul(xr, w, _norm_scale(ss, k, eps), dst.unsafe_offset(r * k), k)

    _for_rows(row, m, m * k // 4)  # ~0.2 ns per element


def _rotate_neox(x: F32Ptr, c: F32Ptr, s: F32Ptr, half: Int):
    """Pairs (i, i + half): both halves are contiguous, so plain vector loads."""
    var i = 0
    while i + W <= half:
        var x0 = x.unsafe_load[width=W](i)
        var x1 = x.unsafe_load[width=W](i + half)
        var cv = c.unsafe_load[width=W](i)
        var sv = s.unsafe_load[width=W](i)
        x.unsafe_store(i, x0 * cv - x1 * sv)
        x.unsafe_store(i + half, x0 * sv + x1 * cv)
        i += W
    while i < half:
        var x0 = x[unsafe_offset=i]
        var x1 = x[unsafe_offset=i + half]
        x.unsafe_store(i, x0 * c[unsafe_offset=i] - x1 * s[unsafe_offset=i])
        x.unsafe_store(i + half, x0 * s[unsafe_offset=i] + x1 * c[unsafe_offset=i])
        i += 1


def _rotate_normal(x: F32Ptr, c: F32Ptr, s: F32Ptr, half: Int):
    """Pairs (2i, 2i + 1): load 2W interleaved values and split them into evens and odds."""
    var i = 0
    while i + W <= half:
        var pair = x.unsafe_load[width=2 * W](2 * i).deinterleave()
        var even = rebind[V](pair[0])  # (2W)/2 lanes, which the compiler does not fold to W
        var odd = rebind[V](pair[1])
        var cv = c.unsafe_load[width=W](i)
        var sv = s.unsafe_load[width=W](i)
        var r0 = even * cv - odd * sv
        var r1 = even * sv + odd * cv
        x.unsafe_store(2 * i, r0.interleave(r1))
        i += W
    while i < half:
        var x0 = x[unsafe_offset=2 * i]
        var x1 = x[unsafe_offset=2 * i + 1]
        x.unsafe_store(2 * i, x0 * c[unsafe_offset=i] - x1 * s[unsafe_offset=i])
        x.unsafe_store(2 * i + 1, x0 * s[unsafe_offset=i] + x1 * c[unsafe_offset=i])
        i += 1


def rope_table(pos_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject, theta_obj: PythonObject) raises:
    """Dims: (T, n_rot). Row t of out: cos, then sin, of pos[t] * theta^(-2i/n_rot) for i < n_rot/2.

    One table serves every layer (and q and k) that shares a RoPE base: the float64 cos/sin
    cost more than the rotations they feed."""
    var pos = ptr[DType.int32](pos_obj)
    var out = ptr[DType.float32](out_obj)
    var dims = Dims(dims_obj, 2)
    var t = dims[0]
    var half = dims[1] // 2
    var log_theta = log(Float64(py=theta_obj))
    # Angles in float64: a float32 angle near 1e5 (a long context) is off by up to 4e-3 rad.
    var freq = List[Float64](capacity=half)
    for i in range(half):
        freq.append(exp(-Float64(2 * i) / Float64(2 * half) * log_theta))
    var fp = freq.unsafe_ptr()

    def row(ti: Int) {imm pos, imm out, imm half, imm fp}:
        var c = out.unsafe_offset(2 * half * ti)
        var s = c.unsafe_offset(half)
        var p = Float64(pos[unsafe_offset=ti])
        for i in range(half):
            var a = p * fp[unsafe_offset=i]
            c.unsafe_store(i, Float32(cos(a)))
            s.unsafe_store(i, Float32(sin(a)))

    _for_rows(row, t, t * 12 * half)  # ~12 ns per cos/sin pair
    _ = freq^


def rope(x_obj: PythonObject, table_obj: PythonObject, dims_obj: PythonObject) raises:
    """Dims: (T, H, D, neox, n_rot); table float32 [T, n_rot] from rope_table."""
    var x = ptr[DType.float32](x_obj)
    var tab = ptr[DType.float32](table_obj)
    var dims = Dims(dims_obj, 5)
    var t = dims[0]
    var h = dims[1]
    var d = dims[2]
    var neox = dims[3] != 0
    var half = dims[4] // 2

    def row(ti: Int) {imm x, imm tab, imm h, imm d, imm neox, imm half}:
        var c = tab.unsafe_offset(2 * half * ti)
        var s = c.unsafe_offset(half)
        for hi in range(h):
            var xh = x.unsafe_offset((ti * h + hi) * d)
            if neox:
                _rotate_neox(xh, c, s, half)
            else:
                _rotate_normal(xh, c, s, half)

    _for_rows(row, t, t * h * half // 2)  # ~1 ns per rotated pair


def _act[GELU: Bool, w: Int](g: SIMD[DType.float32, w]) -> SIMD[DType.float32, w]:
    comptime if GELU:
        # GELU's tanh approximation, the one Gemma is trained with (gelu_pytorch_tanh), as
        # g * sigmoid(2z) = 0.5 g (1 + tanh(z)): no cancellation where tanh(z) nears -1.
        return g / (1.0 + exp(-1.5957691216057308 * (g + 0.044715 * g * g * g)))
    else:
        return g / (1.0 + exp(-g))  # SiLU


def _glu_row[GELU: Bool](g: F32Ptr, u: F32Ptr, dst: F32Ptr, f: Int):
    var i = 0
    while i + W <= f:
        dst.unsafe_store(i, _act[GELU, W](g.unsafe_load[width=W](i)) * u.unsafe_load[width=W](i))
        i += W
    while i < f:
        dst.unsafe_store(i, _act[GELU, 1](g[unsafe_offset=i]) * u[unsafe_offset=i])
        i += 1


def glu_mul(gu_obj: PythonObject, out_obj: PythonObject, dims_obj: PythonObject) raises:
    """Dims: (M, F, gelu)."""
    var gu = ptr[DType.float32](gu_obj)
    var dst = ptr[DType.float32](out_obj)
    var dims = Dims(dims_obj, 3)
    var m = dims[0]
    var f = dims[1]
    var gelu = dims[2] != 0

    def row(r: Int) {imm gu, imm dst, imm f, imm gelu}:
        var g = gu.unsafe_offset(2 * f * r)
        if gelu:
            _glu_row[True](g, g.unsafe_offset(f), dst.unsafe_offset(f * r), f)
        else:
            _glu_row[False](g, g.unsafe_offset(f), dst.unsafe_offset(f * r), f)

    _for_rows(row, m, m * f // 2)  # ~0.5 ns per output (exp or tanh, and a division)


@export
def PyInit_layers() abi("C") -> PythonObject:
    try:
        _ = initialize_runtime()
        var m = PythonModuleBuilder("layers")
        m.def_function[rmsnorm]("rmsnorm", docstring="out = x / sqrt(mean(x^2) + eps) * w, rows of [M, K]")
        m.def_function[add_rmsnorm]("add_rmsnorm", docstring="x += delta; out = rmsnorm(x)")
        m.def_function[rope_table]("rope_table", docstring="cos | sin of each position's RoPE angles, [T, n_rot]")
        m.def_function[rope]("rope", docstring="rotary embedding in place on x [T, H, D] from a rope_table")
        m.def_function[glu_mul]("glu_mul", docstring="out = act(gate) * up, gate_up [M, 2F], act SiLU or GELU-tanh")
        return m.finalize()
    except e:
        abort(String("failed to create module layers: ", e))
