"""MAX library kernels (the `max` wheel's `quantization` and `linalg` Mojo packages) as a Python
extension module, for benchmarks/bench_max_kernels.py to time against WiCore's own kernels.

Built by wicore/kernels/build.py for the same target as the kernels (`build(name, source_dir=...)`).
Every function takes numpy arrays the Python side has checked (dtype, shape, C order) and an int64
`dims` array. MAX's Q4_K/Q6_K kernels read GGUF blocks repacked by their own `pack_b` (same size as
the file's blocks); both quantise x per call to Q8_K (int8, one scale per 256 values) and run on the
runtime's thread pool (`sync_parallelize`).
"""
from std.os import abort
from std.python import PythonObject
from std.python.bindings import PythonModuleBuilder
from std.runtime import initialize_runtime

from layout import TileTensor, row_major
from linalg.matmul import matmul
from quantization.qmatmul_k import matmul_Q4_K, matmul_Q4_K_pack_b, matmul_Q6_K, matmul_Q6_K_pack_b

from common import ptr

comptime Q4_K = 0
comptime Q6_K = 1


def pack_b(raw: PythonObject, packed: PythonObject, dims: PythonObject) raises:
    """MAX pack_b: packed = the blocked layout of the GGUF blocks raw (uint8 [N, row bytes]); dims [fmt, N, row bytes]."""
    var d = ptr[DType.int64](dims)
    var n = Int(d[unsafe_offset=1])
    var row_bytes = Int(d[unsafe_offset=2])
    var src = TileTensor(ptr[DType.uint8](raw), row_major((n, row_bytes)))
    var dst = TileTensor(ptr[DType.uint8](packed), row_major((n, row_bytes)))
    if d[unsafe_offset=0] == Q4_K:
        matmul_Q4_K_pack_b(src, dst)
    else:
        matmul_Q6_K_pack_b(src, dst)


def matmul_k(x: PythonObject, packed: PythonObject, dst: PythonObject, dims: PythonObject) raises:
    """MAX matmul_Q4_K / matmul_Q6_K: dst[M, N] = x[M, K] @ W^T, W packed by pack_b; dims [fmt, M, N, K, row bytes]."""
    var d = ptr[DType.int64](dims)
    var m = Int(d[unsafe_offset=1])
    var n = Int(d[unsafe_offset=2])
    var k = Int(d[unsafe_offset=3])
    var row_bytes = Int(d[unsafe_offset=4])
    var a = TileTensor(ptr[DType.float32](x), row_major((m, k)))
    var b = TileTensor(ptr[DType.uint8](packed), row_major((n, row_bytes)))
    var c = TileTensor(ptr[DType.float32](dst), row_major((m, n)))
    if d[unsafe_offset=0] == Q4_K:
        matmul_Q4_K(a, b, c)
    else:
        matmul_Q6_K(a, b, c)


def matmul_f32(x: PythonObject, w: PythonObject, dst: PythonObject, dims: PythonObject) raises:
    """MAX linalg.matmul, float32: dst[M, N] = x[M, K] @ w^T (w [N, K], dims[3] = 1) or x @ w (w [K, N], 0).
    dims [M, N, K, transpose_b]."""
    var d = ptr[DType.int64](dims)
    var m = Int(d[unsafe_offset=0])
    var n = Int(d[unsafe_offset=1])
    var k = Int(d[unsafe_offset=2])
    var a = TileTensor(ptr[DType.float32](x), row_major((m, k)))
    var c = TileTensor(ptr[DType.float32](dst), row_major((m, n)))
    if d[unsafe_offset=3] != 0:
        matmul[transpose_b=True, target="cpu"](c, a, TileTensor(ptr[DType.float32](w), row_major((n, k))), None)
    else:
        matmul[target="cpu"](c, a, TileTensor(ptr[DType.float32](w), row_major((k, n))), None)


@export
def PyInit_max_kernels() abi("C") -> PythonObject:
    try:
        _ = initialize_runtime()
        var m = PythonModuleBuilder("max_kernels")
        m.def_function[pack_b]("pack_b", docstring="MAX quantization: Q4_K/Q6_K pack_b")
        m.def_function[matmul_k]("matmul_k", docstring="MAX quantization: matmul_Q4_K / matmul_Q6_K")
        m.def_function[matmul_f32]("matmul_f32", docstring="MAX linalg.matmul, float32")
        return m.finalize()
    except e:
        abort(String("failed to create module max_kernels: ", e))
