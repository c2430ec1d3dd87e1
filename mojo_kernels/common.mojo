"""Shared helpers: raw data pointers of numpy arrays, thread count, the target's vector width."""
from std.memory import alloc
from std.os import getenv
from std.python import PythonObject
from std.sys.info import num_logical_cores, simd_width_of


comptime F32Ptr = Pointer[Float32, MutAnyOrigin]
comptime I32Ptr = Pointer[Int32, MutAnyOrigin]
comptime I8Ptr = Pointer[Int8, MutAnyOrigin]
# 16 in an AVX-512 build, 8 in an AVX2 one: kernels take their vector width from the target.
comptime F32_LANES = simd_width_of[DType.float32]()


def data_addr(a: PythonObject) raises -> Int:
    # numpy's PyArrayObject is {PyObject_HEAD (16 bytes); char *data; ...}.
    # Python callers check dtype, shape and contiguity before calling us.
    return Int(Pointer[Int, MutAnyOrigin](unsafe_from_address=Int(a._obj_ptr))[unsafe_offset=2])


def ptr[T: DType](a: PythonObject) raises -> Pointer[Scalar[T], MutAnyOrigin]:
    return Pointer[Scalar[T], MutAnyOrigin](unsafe_from_address=data_addr(a))


def num_threads() -> Int:
    """Worker threads: WICORE_NUM_THREADS if set, else every logical core."""
    var env = getenv("WICORE_NUM_THREADS")
    if env:
        try:
            return max(1, atol(env))
        except:
            pass
    return num_logical_cores()


def scratch_f32(n: Int) -> F32Ptr:
    """Heap scratch of n float32, as a plain pointer (free with free_f32)."""
    var p = alloc[Float32](n)
    return F32Ptr(unsafe_from_address=Int(p))


def free_f32(p: F32Ptr):
    Pointer[Float32, MutUntrackedOrigin](unsafe_from_address=Int(p)).unsafe_free()
