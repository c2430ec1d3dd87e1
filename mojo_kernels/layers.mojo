"""Row-wise layer kernels: rmsnorm, fused residual + rmsnorm, rope, silu/gelu * up, softmax.

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
from common import F32Ptr, ptr, num_threads, F32_LANES

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
    x_obj: PythonObject, w_obj: PythonObject, eps_obj: PythonObject, out_obj: PythonObject,
    m_obj: PythonObject, k_obj: PythonObject,
) raises:
    var x = ptr[DType.float32](x_obj)
    var w = ptr[DType.float32](w_obj)
    var dst = ptr[DType.float32](out_obj)
    var eps = Float32(Float64(py=eps_obj))
    var m = Int(py=m_obj)
    var k = Int(py=k_obj)

    def row(r: Int) {imm x, imm w, imm dst, imm eps, imm k}:
        var xr = x.unsafe_offset(r * k)
        _scale_mul(xr, w, _norm_scale(_sum_sq(xr, k), k, eps), dst.unsafe_offset(r * k), k)

    _for_rows(row, m, m * k // 8)  # ~0.1 ns per element


def add_rmsnorm(
    x_obj: PythonObject, d_obj: PythonObject, w_obj: PythonObject, eps_obj: PythonObject,
    out_obj: PythonObject, m_obj: PythonObject, k_obj: PythonObject,
) raises:
    var x = ptr[DType.float32](x_obj)
    var d = ptr[DType.float32](d_obj)
    var w = ptr[DType.float32](w_obj)
    var dst = ptr[DType.float32](out_obj)
    var eps = Float32(Float64(py=eps_obj))
    var m = Int(py=m_obj)
    var k = Int(py=k_obj)

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


def rope(
    x_obj: PythonObject, pos_obj: PythonObject, t_obj: PythonObject, h_obj: PythonObject,
    d_obj: PythonObject, theta_obj: PythonObject, neox_obj: PythonObject, n_rot_obj: PythonObject,
) raises:
    var x = ptr[DType.float32](x_obj)
    var pos = ptr[DType.int32](pos_obj)
    var t = Int(py=t_obj)
    var h = Int(py=h_obj)
    var d = Int(py=d_obj)
    var log_theta = log(Float64(py=theta_obj))
    var neox = Int(py=neox_obj) != 0
    var half = Int(py=n_rot_obj) // 2

    # freq_i = theta^(-2i/n_rot) and angles pos * freq_i in float64: a float32 angle near 1e5
    # (a long context) is off by up to 4e-3 rad. Each token's row of the table holds its
    # float32 cos, then sin, shared by all heads.
    var freq = List[Float64](capacity=half)
    for i in range(half):
        freq.append(exp(-Float64(2 * i) / Float64(2 * half) * log_theta))
    var fp = freq.unsafe_ptr()
    var table = List[Float32](length=2 * half * t, fill=0)
    var tab = F32Ptr(unsafe_from_address=Int(table.unsafe_ptr()))

    def row(ti: Int) {imm x, imm pos, imm h, imm d, imm neox, imm half, imm fp, imm tab}:
        var c = tab.unsafe_offset(2 * half * ti)
        var s = c.unsafe_offset(half)
        var p = Float64(pos[unsafe_offset=ti])
        for i in range(half):
            var a = p * fp[unsafe_offset=i]
            c.unsafe_store(i, Float32(cos(a)))
            s.unsafe_store(i, Float32(sin(a)))
        for hi in range(h):
            var xh = x.unsafe_offset((ti * h + hi) * d)
            if neox:
                _rotate_neox(xh, c, s, half)
            else:
                _rotate_normal(xh, c, s, half)

    _for_rows(row, t, t * (12 * half + h * d // 8))  # ~12 ns per cos/sin pair + the rotations
    _ = freq^
    _ = table^


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


def glu_mul(
    gu_obj: PythonObject, out_obj: PythonObject, m_obj: PythonObject, f_obj: PythonObject, gelu_obj: PythonObject
) raises:
    var gu = ptr[DType.float32](gu_obj)
    var dst = ptr[DType.float32](out_obj)
    var m = Int(py=m_obj)
    var f = Int(py=f_obj)
    var gelu = Int(py=gelu_obj) != 0

    def row(r: Int) {imm gu, imm dst, imm f, imm gelu}:
        var g = gu.unsafe_offset(2 * f * r)
        if gelu:
            _glu_row[True](g, g.unsafe_offset(f), dst.unsafe_offset(f * r), f)
        else:
            _glu_row[False](g, g.unsafe_offset(f), dst.unsafe_offset(f * r), f)

    _for_rows(row, m, m * f // 2)  # ~0.5 ns per output (exp or tanh, and a division)


def _softmax_row(x: F32Ptr, n: Int):
    var mv = V(-Float32.MAX)
    var i = 0
    while i + W <= n:
        mv = max(mv, x.unsafe_load[width=W](i))
        i += W
    var mx = mv.reduce_max()
    while i < n:
        mx = max(mx, x[unsafe_offset=i])
        i += 1

    var sv = V(0)
    i = 0
    while i + W <= n:
        var e = exp(x.unsafe_load[width=W](i) - mx)
        x.unsafe_store(i, e)
        sv += e
        i += W
    var total = sv.reduce_add()
    while i < n:
        var e = exp(x[unsafe_offset=i] - mx)
        x.unsafe_store(i, e)
        total += e
        i += 1

    var inv = 1.0 / total
    i = 0
    while i + W <= n:
        x.unsafe_store(i, x.unsafe_load[width=W](i) * inv)
        i += W
    while i < n:
        x.unsafe_store(i, x[unsafe_offset=i] * inv)
        i += 1


def softmax(x_obj: PythonObject, m_obj: PythonObject, n_obj: PythonObject) raises:
    var x = ptr[DType.float32](x_obj)
    var m = Int(py=m_obj)
    var n = Int(py=n_obj)

    def row(r: Int) {imm x, imm n}:
        _softmax_row(x.unsafe_offset(r * n), n)

    _for_rows(row, m, m * n // 2)  # ~0.5 ns per element (exp, three passes)


@export
def PyInit_layers() abi("C") -> PythonObject:
    try:
        _ = initialize_runtime()
        var m = PythonModuleBuilder("layers")
        m.def_function[rmsnorm]("rmsnorm", docstring="out = x / sqrt(mean(x^2) + eps) * w, rows of [M, K]")
        m.def_function[add_rmsnorm]("add_rmsnorm", docstring="x += delta; out = rmsnorm(x)")
        m.def_function[rope]("rope", docstring="rotary embedding in place on x [T, H, D]")
        m.def_function[glu_mul]("glu_mul", docstring="out = act(gate) * up, gate_up [M, 2F], act SiLU or GELU-tanh")
        m.def_function[softmax]("softmax", docstring="row softmax in place on x [M, N]")
        return m.finalize()
    except e:
        abort(String("failed to create module layers: ", e))
