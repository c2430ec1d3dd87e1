"""Causal grouped-query attention over a paged KV cache.

One kernel serves prefill, decode and mixed batches: every query token names
its sequence (a row of the block table) and its position, and attends to the
keys at positions 0..pos of that sequence (or the last `window` of them).
Work item = (query token, kv head): the group of query heads sharing a kv
head is processed together so each K/V row loaded serves the whole group, and
keys are consumed in tiles with an online (flash-style) softmax.
"""
from std.atomic import Atomic
from std.collections import Array
from std.math import ceildiv, exp
from std.memory import alloc, bitcast, dealloc, Layout
from std.os import abort
from std.python import PythonObject
from std.python.bindings import PythonModuleBuilder
from std.runtime import initialize_runtime
from std.sys.intrinsics import prefetch, PrefetchOptions
from common import Dims, F32Ptr, I32Ptr, data_addr, ptr, num_threads, pool_run

comptime W = 8  # 8 float32 lanes on every target: the register transposes below are written for 8
comptime Vec = SIMD[DType.float32, W]
comptime TILE = 32  # keys per online-softmax step (measured: 16 and 64 a little slower)
comptime IntPtr = Pointer[Int, MutAnyOrigin]
# The KV cache holds float16 (default) or float32; reads widen to float32 in registers.
comptime KPtr[KT: DType] = Pointer[Scalar[KT], MutAnyOrigin]
# Below this many multiply-adds (keys x query heads x head_dim) one thread
# beats paying for the thread pool. Measured, one decode token, 14 heads of 64:
# 512 keys take 24 us alone, ~21 us on two threads with the other core idle
# (but far more when it is busy); from ~600 keys on threads win clearly.
comptime PARALLEL_MIN_WORK = 1 << 19


@always_inline
def hadd(a: Vec, b: Vec) -> Vec:
    """Pairwise sums within each 128-bit half: [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7]."""
    return a.shuffle[0, 2, 8, 10, 4, 6, 12, 14](b) + a.shuffle[1, 3, 9, 11, 5, 7, 13, 15](b)


@always_inline
def sum8(a: Array[Vec, 8]) -> Vec:
    """Lane j = the sum of a[j]'s lanes: eight reductions for the price of about three."""
    var x = hadd(hadd(a[0], a[1]), hadd(a[2], a[3]))  # [a0..a3 low halves | a0..a3 high halves]
    var y = hadd(hadd(a[4], a[5]), hadd(a[6], a[7]))
    return x.shuffle[0, 1, 2, 3, 8, 9, 10, 11](y) + x.shuffle[4, 5, 6, 7, 12, 13, 14, 15](y)


@always_inline
def scores8[NH: Int, KT: DType](q: F32Ptr, k: KPtr[KT], offs: IntPtr, t: Int, hd: Int, s: F32Ptr, scale: Float32):
    """Scores of keys t..t+8/NH-1 for NH (1 or 2) heads: eight dot products reduced together."""
    comptime NK = 8 // NH
    var a = Array[Vec, 8](fill=Vec(0))
    var tail = Vec(0)
    var c = 0
    while c + W <= hd:
        comptime for i in range(NH):
            var qi = q.unsafe_load[width=W](i * hd + c)
            comptime for j in range(NK):
                a[i * NK + j] = qi.fma(
                    k.unsafe_load[width=W](offs[unsafe_offset=t + j] + c).cast[DType.float32](), a[i * NK + j]
                )
        c += W
    while c < hd:
        comptime for i in range(NH):
            var qi = q[unsafe_offset=i * hd + c]
            comptime for j in range(NK):
                tail[i * NK + j] += qi * k[unsafe_offset=offs[unsafe_offset=t + j] + c].cast[DType.float32]()
        c += 1
    var r = (sum8(a) + tail) * scale
    comptime for i in range(NH):
        s.unsafe_store(i * TILE + t, r.slice[NK, offset=i * NK]())


@always_inline
def score_key[NH: Int, KT: DType](q: F32Ptr, k: KPtr[KT], offs: IntPtr, t: Int, hd: Int, s: F32Ptr, scale: Float32):
    """Score of key t for NH heads (the tile's last few keys)."""
    var a = Array[Vec, NH](fill=Vec(0))
    var tail = Array[Float32, NH](fill=0)
    var kr = k.unsafe_offset(offs[unsafe_offset=t])
    var c = 0
    while c + W <= hd:
        var kv = kr.unsafe_load[width=W](c).cast[DType.float32]()
        comptime for i in range(NH):
            a[i] = q.unsafe_load[width=W](i * hd + c).fma(kv, a[i])
        c += W
    while c < hd:
        comptime for i in range(NH):
            tail[i] += q[unsafe_offset=i * hd + c] * kr[unsafe_offset=c].cast[DType.float32]()
        c += 1
    comptime for i in range(NH):
        s[unsafe_offset=i * TILE + t] = (a[i].reduce_add() + tail[i]) * scale


@always_inline
def pv_cols[
    NC: Int, NH: Int, WD: Int, KT: DType
](s: F32Ptr, v: KPtr[KT], offs: IntPtr, n: Int, c: Int, hd: Int, corr: Array[Float32, NH], acc: F32Ptr):
    """acc[h, c:c+NC*WD] = acc * corr[h] + p[h] @ V[:, c:c+NC*WD] for NH heads, in registers."""
    var a = Array[SIMD[DType.float32, WD], NC * NH](fill=0)
    comptime for i in range(NH):
        comptime for j in range(NC):
            a[i * NC + j] = acc.unsafe_load[width=WD](i * hd + c + j * WD) * corr[i]
    for t in range(n):
        var vr = v.unsafe_offset(offs[unsafe_offset=t] + c)
        var vv = Array[SIMD[DType.float32, WD], NC](fill=0)
        comptime for j in range(NC):
            vv[j] = vr.unsafe_load[width=WD](j * WD).cast[DType.float32]()
        comptime for i in range(NH):
            var p = SIMD[DType.float32, WD](s[unsafe_offset=i * TILE + t])
            comptime for j in range(NC):
                a[i * NC + j] = p.fma(vv[j], a[i * NC + j])
    comptime for i in range(NH):
        comptime for j in range(NC):
            acc.unsafe_store(i * hd + c + j * WD, a[i * NC + j])


@always_inline
def tile_heads[
    NH: Int, KT: DType
](
    q: F32Ptr,
    acc: F32Ptr,
    s: F32Ptr,
    m: F32Ptr,
    l: F32Ptr,
    k: KPtr[KT],
    v: KPtr[KT],
    offs: IntPtr,
    n: Int,
    hd: Int,
    scale: Float32,
):
    """Fold `n` keys (cache rows at `offs`) into the running softmax of NH heads.

    q, acc: [NH, hd] rows; s: [NH, TILE] scores; m, l: running max and sum.
    """
    comptime H = min(NH, 2)  # heads per scores8 call
    var t = 0
    while t + 8 // H <= n:
        comptime for h in range(0, NH, H):
            scores8[H, KT](q.unsafe_offset(h * hd), k, offs, t, hd, s.unsafe_offset(h * TILE), scale)
        t += 8 // H
    while t < n:
        score_key[NH, KT](q, k, offs, t, hd, s, scale)
        t += 1

    # Online softmax: what was accumulated is rescaled by corr when the max grows.
    var corr = Array[Float32, NH](fill=1)
    comptime for i in range(NH):
        var si = s.unsafe_offset(i * TILE)
        var mx = m[unsafe_offset=i]
        var t = 0
        if n >= W:
            var mv = si.unsafe_load[width=W](0)
            t = W
            while t + W <= n:
                mv = max(mv, si.unsafe_load[width=W](t))
                t += W
            mx = max(mx, mv.reduce_max())
        while t < n:
            mx = max(mx, si[unsafe_offset=t])
            t += 1
        corr[i] = exp(m[unsafe_offset=i] - mx)
        var sum = Vec(0)
        t = 0
        while t + W <= n:
            var p = exp(si.unsafe_load[width=W](t) - mx)
            si.unsafe_store(t, p)
            sum += p
            t += W
        var total = sum.reduce_add()
        while t < n:
            var p = exp(si[unsafe_offset=t] - mx)
            si[unsafe_offset=t] = p
            total += p
            t += 1
        l[unsafe_offset=i] = l[unsafe_offset=i] * corr[i] + total
        m[unsafe_offset=i] = mx

    comptime NC = 8 // NH  # columns of W per pass: 8 accumulators whatever NH
    var c = 0
    while c + NC * W <= hd:
        pv_cols[NC, NH, W, KT](s, v, offs, n, c, hd, corr, acc)
        c += NC * W
    while c + W <= hd:
        pv_cols[1, NH, W, KT](s, v, offs, n, c, hd, corr, acc)
        c += W
    while c < hd:
        pv_cols[1, NH, 1, KT](s, v, offs, n, c, hd, corr, acc)
        c += 1


# attend's state for `group` heads, one block of floats: acc [group, hd], scores
# [group, TILE], running max m [group], running sum l [group].
def state_len(group: Int, hd: Int) -> Int:
    return group * (hd + TILE + 2)


def m_offset(group: Int, hd: Int) -> Int:
    return group * (hd + TILE)


@always_inline
def attend[
    PREFETCH: Bool, KT: DType
](
    q: F32Ptr,
    k: KPtr[KT],
    v: KPtr[KT],
    row: Int,
    table: I32Ptr,
    bs: Int,
    first: Int,
    last: Int,
    group: Int,
    hd: Int,
    scale: Float32,
    state: F32Ptr,
    offs: IntPtr,
):
    """Online softmax of one token's `group` query heads (rows of q) over keys first..last.

    k, v point at this kv head in the cache; `row` floats separate consecutive slots.
    Leaves the unnormalised result in `state` (see state_len); offs: [2 * TILE] ints.
    PREFETCH: fetch each tile's K/V rows while the previous tile is computed.
    """
    var acc = state
    var s = acc.unsafe_offset(group * hd)
    var m = state.unsafe_offset(m_offset(group, hd))
    var l = m.unsafe_offset(group)
    for i in range(group * hd):
        acc[unsafe_offset=i] = 0
    for i in range(group):
        m[unsafe_offset=i] = Float32.MIN  # -inf: the first tile's correction is exp(-inf) = 0
        l[unsafe_offset=i] = 0

    var blk = first // bs
    var o = first - blk * bs
    var base = Int(table[unsafe_offset=blk]) * bs

    @always_inline
    def fill(dst_offs: IntPtr, n: Int) {mut blk, mut o, mut base, imm table, imm bs, imm row, imm k, imm v, imm hd}:
        """Cache offsets of the next n keys."""
        for t in range(n):
            if o == bs:  # next block; only read table entries that are used
                o = 0
                blk += 1
                base = Int(table[unsafe_offset=blk]) * bs
            var off = (base + o) * row
            dst_offs[unsafe_offset=t] = off
            comptime if PREFETCH:
                for c in range(0, hd, 16):
                    prefetch[PrefetchOptions().for_read().high_locality()](k.unsafe_offset(off + c))
                    prefetch[PrefetchOptions().for_read().high_locality()](v.unsafe_offset(off + c))
            o += 1

    var cur = offs
    var nxt = offs.unsafe_offset(TILE)
    var n = min(TILE, last + 1 - first)
    fill(cur, n)
    var filled = first + n
    while n > 0:
        var n_next = min(TILE, last + 1 - filled)
        fill(nxt, n_next)
        filled += n_next
        var h = 0
        while h + 4 <= group:
            tile_heads[4, KT](
                q.unsafe_offset(h * hd), acc.unsafe_offset(h * hd), s.unsafe_offset(h * TILE),
                m.unsafe_offset(h), l.unsafe_offset(h), k, v, cur, n, hd, scale,
            )
            h += 4
        if h + 2 <= group:
            tile_heads[2, KT](
                q.unsafe_offset(h * hd), acc.unsafe_offset(h * hd), s.unsafe_offset(h * TILE),
                m.unsafe_offset(h), l.unsafe_offset(h), k, v, cur, n, hd, scale,
            )
            h += 2
        if h < group:
            tile_heads[1, KT](
                q.unsafe_offset(h * hd), acc.unsafe_offset(h * hd), s.unsafe_offset(h * TILE),
                m.unsafe_offset(h), l.unsafe_offset(h), k, v, cur, n, hd, scale,
            )
        n = n_next
        swap(cur, nxt)


def finish(states: F32Ptr, n_parts: Int, group: Int, hd: Int, dst: F32Ptr):
    """Write softmax-normalised rows to dst, merging n_parts consecutive states over disjoint key ranges."""
    var stride = state_len(group, hd)
    var mo = m_offset(group, hd)
    for i in range(group):
        var mx = Float32.MIN
        for p in range(n_parts):
            mx = max(mx, states[unsafe_offset=p * stride + mo + i])
        var total = Float32(0)
        for p in range(n_parts):
            var st = states.unsafe_offset(p * stride)
            var wp = exp(st[unsafe_offset=mo + i] - mx)
            total += wp * st[unsafe_offset=mo + group + i]
            for d in range(hd):
                var prev = dst[unsafe_offset=i * hd + d] if p > 0 else 0
                dst[unsafe_offset=i * hd + d] = prev + wp * st[unsafe_offset=i * hd + d]
        var inv = 1 / total
        for d in range(hd):
            dst[unsafe_offset=i * hd + d] *= inv


def first_key(pos: Int, window: Int) -> Int:
    """The first key position a query at `pos` attends to."""
    return max(0, pos - window + 1) if window > 0 else 0


def check_indices(
    table: I32Ptr,
    seq: I32Ptr,
    pos: I32Ptr,
    n_tok: Int,
    n_seq: Int,
    max_blocks: Int,
    bs: Int,
    n_blocks: Int,
    window: Int,
) raises:
    """Raise unless every index the kernel will follow is in range."""
    for t in range(n_tok):
        var b = Int(seq[unsafe_offset=t])
        var p = Int(pos[unsafe_offset=t])
        if b < 0 or b >= n_seq:
            raise Error("token_seq: entry outside the rows of block_tables")
        if p < 0 or p >= max_blocks * bs:
            raise Error("token_pos: position outside what block_tables can address")
        for blk in range(first_key(p, window) // bs, p // bs + 1):
            var e = Int(table[unsafe_offset=b * max_blocks + blk])
            if e < 0 or e >= n_blocks:
                raise Error("block_tables: a block the tokens attend to is outside the cache")


# An attention job for the thread pool, Int64 slots (addresses, then sizes; scale as float32 bits;
# last, 1 for a float16 KV cache).
comptime JOB_SLOTS = 22


@export
def wicore_attention_job(ctx: Int, task: Int) abi("C"):
    """Pool task: a worker taking (token, kv head, key part) items from the job's shared counter."""
    var j = Pointer[Int64, MutAnyOrigin](unsafe_from_address=ctx)
    if j[unsafe_offset=21] != 0:
        _work[DType.float16](j)
    else:
        _work[DType.float32](j)


def _work[KT: DType](j: Pointer[Int64, MutAnyOrigin]):
    var q = F32Ptr(unsafe_from_address=Int(j[unsafe_offset=0]))
    var k = KPtr[KT](unsafe_from_address=Int(j[unsafe_offset=1]))
    var v = KPtr[KT](unsafe_from_address=Int(j[unsafe_offset=2]))
    var table = I32Ptr(unsafe_from_address=Int(j[unsafe_offset=3]))
    var seq = I32Ptr(unsafe_from_address=Int(j[unsafe_offset=4]))
    var pos = I32Ptr(unsafe_from_address=Int(j[unsafe_offset=5]))
    var dst = F32Ptr(unsafe_from_address=Int(j[unsafe_offset=6]))
    var scale = bitcast[DType.float32, 1](Int32(j[unsafe_offset=7]))[0]
    var n_kv = Int(j[unsafe_offset=8])
    var hd = Int(j[unsafe_offset=9])
    var bs = Int(j[unsafe_offset=10])
    var max_blocks = Int(j[unsafe_offset=11])
    var window = Int(j[unsafe_offset=12])
    var group = Int(j[unsafe_offset=13])
    var row = Int(j[unsafe_offset=14])
    var stride = Int(j[unsafe_offset=15])
    var n_parts = Int(j[unsafe_offset=16])
    var n_tasks = Int(j[unsafe_offset=17])
    var next_ptr = Pointer[Atomic[Int64], MutAnyOrigin](unsafe_from_address=Int(j[unsafe_offset=18]))
    var parts_ptr = F32Ptr(unsafe_from_address=Int(j[unsafe_offset=19]))
    var prefetch_rows = j[unsafe_offset=20] != 0
    var own = alloc(Layout[Float32](count=stride))
    var offs = alloc(Layout[Int](count=2 * TILE))
    var own_ptr = own.unsafe_ptr().unsafe_origin_cast[MutAnyOrigin]()
    var offs_ptr = offs.unsafe_ptr().unsafe_origin_cast[MutAnyOrigin]()
    while True:
        var task = n_tasks - 1 - Int(next_ptr[].fetch_add(1))
        if task < 0:
            break
        var item = task // n_parts
        var part = task - item * n_parts
        var t = item // n_kv
        var g = item - t * n_kv
        var p = Int(pos[unsafe_offset=t])
        var first = first_key(p, window)
        var n_keys = p + 1 - first
        var heads = item * group * hd  # q and dst rows of this token's group
        var state = parts_ptr.unsafe_offset(task * stride) if n_parts > 1 else own_ptr
        var kh = k.unsafe_offset(g * hd)
        var vh = v.unsafe_offset(g * hd)
        var tab = table.unsafe_offset(Int(seq[unsafe_offset=t]) * max_blocks)
        var lo = first + n_keys * part // n_parts
        var hi = first + n_keys * (part + 1) // n_parts - 1
        if prefetch_rows:
            attend[True, KT](q.unsafe_offset(heads), kh, vh, row, tab, bs, lo, hi, group, hd, scale, state, offs_ptr)
        else:
            attend[False, KT](q.unsafe_offset(heads), kh, vh, row, tab, bs, lo, hi, group, hd, scale, state, offs_ptr)
        if n_parts == 1:
            finish(state, 1, group, hd, dst.unsafe_offset(heads))
    dealloc(own^)
    dealloc(offs^)



def paged_attention(
    q_obj: PythonObject,
    k_obj: PythonObject,
    v_obj: PythonObject,
    table_obj: PythonObject,
    seq_obj: PythonObject,
    pos_obj: PythonObject,
    out_obj: PythonObject,
    dims_obj: PythonObject,
    scale_obj: PythonObject,
) raises:
    """Dims: (tokens, n_heads, n_kv, head_dim, block_size, seqs, max_blocks, num_blocks, window, pool,
    kv_is_f16). Every index is checked before anything is written."""
    var q = ptr[DType.float32](q_obj)
    var k = data_addr(k_obj)
    var v = data_addr(v_obj)
    var table = ptr[DType.int32](table_obj)
    var seq = ptr[DType.int32](seq_obj)
    var pos = ptr[DType.int32](pos_obj)
    var dst = ptr[DType.float32](out_obj)
    var dims = Dims(dims_obj, 11)
    var scale = Float32(Float64(py=scale_obj))
    var n_tok = dims[0]
    var n_heads = dims[1]
    var n_kv = dims[2]
    var hd = dims[3]
    var bs = dims[4]
    var n_seqs = dims[5]
    var max_blocks = dims[6]
    var window = dims[8]
    var pool = dims[9]
    var kv_f16 = dims[10]
    check_indices(table, seq, pos, n_tok, n_seqs, max_blocks, bs, dims[7], window)
    _attention(q, k, v, table, seq, pos, dst, scale, n_tok, n_heads, n_kv, hd, bs, n_seqs, max_blocks, window, pool, kv_f16)


def _attention(
    q: F32Ptr, k: Int, v: Int, table: I32Ptr, seq: I32Ptr, pos: I32Ptr, dst: F32Ptr, scale: Float32,
    n_tok: Int, n_heads: Int, n_kv: Int, hd: Int, bs: Int, n_seqs: Int, max_blocks: Int, window: Int, pool: Int,
    kv_f16: Int,
):
    """The checked call: a job for the pool (the raising entry point above keeps none on its frame)."""
    var group = n_heads // n_kv
    var row = n_kv * hd
    var n_items = n_tok * n_kv
    var work_size = 0
    var min_keys = Int.MAX
    for t in range(n_tok):
        var p = Int(pos[unsafe_offset=t])
        var n_keys = p + 1 - first_key(p, window)
        work_size += n_keys
        min_keys = min(min_keys, n_keys)
    work_size *= n_heads * hd
    var n_workers = num_threads() if work_size >= PARALLEL_MIN_WORK else 1
    # Too few items for the workers (one decode token, one kv head): split the
    # keys of each item into parts, merged afterwards (flash-decoding).
    var n_parts = min(ceildiv(n_workers, n_items), min_keys)
    var n_tasks = n_items * n_parts
    n_workers = min(n_workers, n_tasks)
    # Decode reads each sequence's K/V once, mostly from DRAM, where blocks are
    # scattered and the hardware prefetcher loses the stream: prefetching the
    # next tile saves 10-25 %. Prefill rereads K/V from cache: it only costs 5 %.
    var prefetch_rows = n_tok <= 2 * n_seqs
    var stride = state_len(group, hd)
    var parts = alloc(Layout[Float32](count=stride * n_tasks if n_parts > 1 else 1))
    var parts_ptr = parts.unsafe_ptr().unsafe_origin_cast[MutAnyOrigin]()

    # Workers take tasks from a shared counter, last (in prefill: longest) first,
    # so that whatever the mix of sequence lengths they finish together.
    var next_task = Atomic[Int64](0)
    var next_ptr = Pointer(to=next_task).unsafe_origin_cast[MutAnyOrigin]()

    var job = Array[Int64, JOB_SLOTS](fill=0)
    job[0] = Int64(Int(q))
    job[1] = Int64(Int(k))
    job[2] = Int64(Int(v))
    job[3] = Int64(Int(table))
    job[4] = Int64(Int(seq))
    job[5] = Int64(Int(pos))
    job[6] = Int64(Int(dst))
    job[7] = Int64(bitcast[DType.int32, 1](scale)[0])
    job[8] = Int64(n_kv)
    job[9] = Int64(hd)
    job[10] = Int64(bs)
    job[11] = Int64(max_blocks)
    job[12] = Int64(window)
    job[13] = Int64(group)
    job[14] = Int64(row)
    job[15] = Int64(stride)
    job[16] = Int64(n_parts)
    job[17] = Int64(n_tasks)
    job[18] = Int64(Int(next_ptr))
    job[19] = Int64(Int(parts_ptr))
    job[20] = Int64(1 if prefetch_rows else 0)
    job[21] = Int64(kv_f16)
    pool_run(pool if n_workers > 1 else 0, wicore_attention_job, Int(Pointer(to=job)), n_workers)
    _ = next_task.load()  # the workers used it through next_ptr: keep it alive until here
    if n_parts > 1:
        for item in range(n_items):
            var states = parts_ptr.unsafe_offset(item * n_parts * stride)
            finish(states, n_parts, group, hd, dst.unsafe_offset(item * group * hd))
    dealloc(parts^)


@export
def PyInit_attention() abi("C") -> PythonObject:
    try:
        _ = initialize_runtime()
        var m = PythonModuleBuilder("attention")
        m.def_function[paged_attention](
            "paged_attention", docstring="Causal GQA over a paged KV cache."
        )
        return m.finalize()
    except e:
        abort(String("failed to create module attention: ", e))
