"""Shared helpers: data pointers of Python buffers, the sizes tuple, thread count, vector width, thread pool.

Calling convention of every Python entry point: its arrays first (numpy arrays, whose dtype,
shape and contiguity the Python wrapper has checked), then one tuple of Python ints `dims`
(sizes, integer options, the thread pool's address), then float scalars. Errors are raised
as Error("<argument>: <what is wrong>") before anything is written; the wrapper re-raises
them as ValueError.
"""
from std.atomic import Atomic
from std.ffi import external_call
from std.memory import alloc, stack_allocation
from std.os import getenv
from std.python import PythonObject
from std.sys.info import num_logical_cores, simd_width_of
from std.time import perf_counter_ns


comptime F32Ptr = Pointer[Float32, MutAnyOrigin]
comptime I32Ptr = Pointer[Int32, MutAnyOrigin]
comptime I8Ptr = Pointer[Int8, MutAnyOrigin]
# 16 in an AVX-512 build, 8 in an AVX2 one: kernels take their vector width from the target.
comptime F32_LANES = simd_width_of[DType.float32]()

# CPython's buffer protocol (PEP 3118, part of the stable ABI): a Py_buffer is 80 bytes, its
# first field the data address. PyBUF_C_CONTIGUOUS makes the exporter refuse anything else.
comptime PY_BUFFER_WORDS = 10
comptime PYBUF_C_CONTIGUOUS = 0x0020 | 0x0010 | 0x0008


def data_addr(a: PythonObject) raises -> Int:
    """The data address of a C-contiguous buffer (a numpy array), through CPython's public API
    rather than numpy's struct layout, so it holds on free-threaded and debug builds too.
    The pointer stays valid after the release: the caller holds the array for the call."""
    var view = stack_allocation[PY_BUFFER_WORDS, Int]()
    if external_call["PyObject_GetBuffer", Int32](Int(a._obj_ptr), Int(view), Int32(PYBUF_C_CONTIGUOUS)) != 0:
        external_call["PyErr_Clear", NoneType]()
        raise Error("array: not a C-contiguous buffer")
    var addr = view[unsafe_offset=0]
    external_call["PyBuffer_Release", NoneType](Int(view))
    return addr


def ptr[T: DType](a: PythonObject) raises -> Pointer[Scalar[T], MutAnyOrigin]:
    return Pointer[Scalar[T], MutAnyOrigin](unsafe_from_address=data_addr(a))


struct Dims:
    """The `dims` tuple of Python ints, read through the C API (~20 ns an entry, a tenth of
    PythonObject indexing: hundreds of kernel calls per decoded token read one)."""

    var tuple: Int

    def __init__(out self, t: PythonObject, n: Int) raises:
        self.tuple = Int(t._obj_ptr)
        if external_call["PyTuple_Size", Int](self.tuple) != n:
            external_call["PyErr_Clear", NoneType]()
            raise Error("dims: expected a tuple of ", n, " ints")

    def __getitem__(self, i: Int) raises -> Int:
        var v = external_call["PyLong_AsSsize_t", Int](external_call["PyTuple_GetItem", Int](self.tuple, i))
        if v == -1 and external_call["PyErr_Occurred", Int]() != 0:
            external_call["PyErr_Clear", NoneType]()
            raise Error("dims: entry ", i, " is not an int")
        return v


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


# A persistent thread pool shared by every kernel module of the process (ggml's design): workers
# spin on a generation counter, take tasks from an atomic counter, and sleep on a futex once idle
# for SPIN_NS. Waking the runtime's pool for each call (sync_parallelize) cost 25-250 us per call on
# these VMs, hundreds of times per token; a spinning worker picks a job up in well under 1 us.
# The pool is a block of 64-byte lines (one field each) that Python creates once (`pool_start` of
# the matmul module) and passes to kernels by address; a job is an exported C function of the
# module that posts it, called as entry(ctx, task) for every task.
comptime PoolAtomic = Atomic[Int64]
comptime JobEntry = def(Int, Int) abi("C") thin -> None
comptime WorkerEntry = def(Int) abi("C") thin -> Int
comptime _GEN = 0
comptime _NEXT = 1
comptime _DONE = 2
comptime _FN = 3
comptime _CTX = 4
comptime _NTASKS = 5
comptime _WORKERS = 6
comptime _SLEEPERS = 7
comptime POOL_BYTES = 8 * 64
# How long an idle worker spins before it sleeps on a futex: long enough to bridge the Python and
# single-threaded kernels between two matmuls of a decode step, short enough to leave the core
# to others (the HTTP process, other kernels' threads) soon after.
comptime SPIN_NS = 200_000
comptime FUTEX_WAIT_PRIVATE = 128
comptime FUTEX_WAKE_PRIVATE = 129


def _field(pool: Int, i: Int) -> Pointer[PoolAtomic, MutAnyOrigin]:
    return Pointer[PoolAtomic, MutAnyOrigin](unsafe_from_address=pool + 64 * i)


def _fn_addr[F: ImplicitlyCopyable & Deinitable](f: F) -> Int:
    """The address of a C function value (thin function pointer)."""
    var slot = f
    return Pointer(to=slot).unsafe_bitcast[Int]()[]


def _run_tasks(pool: Int):
    var addr = Int(_field(pool, _FN)[].load())
    var entry = Pointer(to=addr).unsafe_bitcast[JobEntry]()[]
    var ctx = Int(_field(pool, _CTX)[].load())
    var n = _field(pool, _NTASKS)[].load()
    while True:
        var t = _field(pool, _NEXT)[].fetch_add(1)
        if t >= n:
            break
        entry(ctx, Int(t))


def _futex(addr: Int, op: Int, val: Int) -> Int:
    return external_call["syscall", Int](202, addr, op, val, 0, 0, 0)  # SYS_futex, no timeout


def pool_worker_loop(pool: Int):
    """A worker's life: the pool lives as long as the process (workers are detached, never stopped)."""
    # Generation 0 is "no job yet": a worker that starts after the first job was posted still runs it.
    var seen: Int64 = 0
    var gen = _field(pool, _GEN)
    while True:
        var idle_since = perf_counter_ns()
        var spins = 0
        while gen[].load() == seen:
            spins += 1
            if spins % 64 == 0 and perf_counter_ns() - idle_since > SPIN_NS:
                # Sleep until the generation moves; announce it first so that pool_run wakes us.
                _ = _field(pool, _SLEEPERS)[].fetch_add(1)
                if gen[].load() == seen:
                    _ = _futex(Int(gen), FUTEX_WAIT_PRIVATE, Int(seen & 0xFFFFFFFF))
                _ = _field(pool, _SLEEPERS)[].fetch_sub(1)
                idle_since = perf_counter_ns()
        seen += 1
        _run_tasks(pool)
        _ = _field(pool, _DONE)[].fetch_add(1)


def pool_start(n_threads: Int, worker: WorkerEntry) raises -> Int:
    """A pool of n_threads - 1 workers (the caller is the last one) running `worker`(pool)."""
    var pool = external_call["aligned_alloc", Int](64, POOL_BYTES)
    _ = external_call["memset", Int](pool, 0, POOL_BYTES)
    _field(pool, _WORKERS)[].store(Int64(n_threads - 1))
    var entry = _fn_addr(worker)
    for _ in range(n_threads - 1):
        var tid = Int(0)
        if external_call["pthread_create", Int32](Pointer(to=tid), Int(0), entry, pool) != 0:
            raise Error("pthread_create failed")
        _ = external_call["pthread_detach", Int32](tid)
    return pool


def pool_run(pool: Int, entry: JobEntry, ctx: Int, n_tasks: Int):
    """entry(ctx, t) for t in [0, n_tasks), on the pool's workers and the calling thread."""
    if pool == 0 or n_tasks <= 1 or _field(pool, _WORKERS)[].load() == 0:
        for t in range(n_tasks):
            entry(ctx, t)
        return
    _field(pool, _FN)[].store(Int64(_fn_addr(entry)))
    _field(pool, _CTX)[].store(Int64(ctx))
    _field(pool, _NTASKS)[].store(Int64(n_tasks))
    _field(pool, _NEXT)[].store(0)
    _field(pool, _DONE)[].store(0)
    _ = _field(pool, _GEN)[].fetch_add(1)  # publishes the job (sequentially consistent)
    if _field(pool, _SLEEPERS)[].load() > 0:
        _ = _futex(pool + 64 * _GEN, FUTEX_WAKE_PRIVATE, 1 << 30)
    _run_tasks(pool)
    var workers = _field(pool, _WORKERS)[].load()
    while _field(pool, _DONE)[].load() < workers:
        pass
