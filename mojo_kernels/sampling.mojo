"""Token sampling, batched over rows: grammar mask -> logit bias -> repetition/frequency/presence
penalties -> greedy argmax, or temperature -> top-k -> top-p -> min-p -> draw.

Random numbers come from SplitMix64 of (seed, step), so a row's tokens depend
only on its own seed and step, never on the batch it was sampled in.  Nothing
sorts the vocabulary: top-k keeps a thresholded buffer, top-p finds its boundary
with SIMD threshold passes, and the draw walks the kept tokens in id order.
"""
from std.os import abort
from std.math import log
from std.memory import bitcast
from std.utils.numerics import inf, neg_inf
from std.python import PythonObject
from std.python.bindings import PythonModuleBuilder
from std.builtin.sort import sort
from std.runtime import initialize_runtime
from max.algorithm import sync_parallelize
from common import Dims, data_addr, num_threads, F32_LANES

comptime W = F32_LANES  # float32 lanes of the target's vector registers
comptime BLOCK = 256  # elements per partial sum of the draw
comptime BAND = 1024  # most tokens sorted at once (the stdlib sort slows down past ~2k)
# Untracked origins: the pointers live in a struct shared by the worker threads.
comptime F32Ptr = Pointer[Float32, MutUntrackedOrigin]
comptime F64Ptr = Pointer[Float64, MutUntrackedOrigin]
comptime I32Ptr = Pointer[Int32, MutUntrackedOrigin]
comptime I64Ptr = Pointer[Int64, MutUntrackedOrigin]
comptime U64Ptr = Pointer[UInt64, MutUntrackedOrigin]
comptime F32V = SIMD[DType.float32, W]
comptime LOG2E = 1.4426950408889634
comptime NPARAMS = 8  # temperature, top_k, top_p, min_p, repetition, frequency, presence, unused


# ---------------------------------------------------------------- primitives


def ptr[T: DType](a: PythonObject) raises -> Pointer[Scalar[T], MutUntrackedOrigin]:
    return Pointer[Scalar[T], MutUntrackedOrigin](unsafe_from_address=data_addr(a))


@always_inline
def fast_exp2[w: Int](y: SIMD[DType.float32, w]) -> SIMD[DType.float32, w]:
    """2^y for y <= 0: 2^n * p(y - n) with a degree-5 minimax p, relative error < 2e-7;
    y < -126 gives 0.  Cheaper than exp (no ln 2 range reduction): the exp passes are
    most of a row's time."""
    var yc = max(y, SIMD[DType.float32, w](-126.0))
    var n = (yc + 0.5).__floor__()
    var f = yc - n  # in [-0.5, 0.5]
    var p = f * 1.32647e-3 + 9.67151e-3
    p = p * f + 5.550734e-2
    p = p * f + 2.4022242e-1
    p = p * f + 6.9314698e-1
    p = p * f + 1.0
    var scale = bitcast[DType.float32, w]((n.cast[DType.int32]() + 127) << 23)
    return y.lt(-126.0).select(SIMD[DType.float32, w](0), p * scale)


@always_inline
def splitmix64(x: UInt64) -> UInt64:
    var z = x + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@always_inline
def uniform(seed: UInt64, step: Int64) -> Float64:
    """A uniform draw in [0, 1) that depends only on (seed, step)."""
    var r = splitmix64(splitmix64(seed) ^ bitcast[DType.uint64](step))
    return Float64(r >> 11) * (1.0 / 9007199254740992.0)


@always_inline
def rank_key(v: Float32, i: Int) -> UInt64:
    """Sort key: ascending keys = logits descending, ties to the lower id."""
    var b = bitcast[DType.uint32](v + 0.0)  # + 0.0 turns -0.0 into +0.0
    var ordered = ~b if b >> 31 == 1 else b | 0x80000000  # monotone in v
    return (UInt64(~ordered) << 32) | UInt64(i)


@always_inline
def key_id(k: UInt64) -> Int:
    return Int(k & 0xFFFFFFFF)


@always_inline
def key_value(k: UInt64) -> Float32:
    """The logit a rank key was made from (inverse of rank_key)."""
    var ordered = ~UInt32(k >> 32)
    return bitcast[DType.float32](ordered & 0x7FFFFFFF if ordered >> 31 == 1 else ~ordered)


def sort_keys(keys: U64Ptr, n: Int):
    sort(Span[UInt64, MutUntrackedOrigin](unsafe_ptr=keys, length=n))


# ---------------------------------------------------------------- row passes


def row_max(l: F32Ptr, V: Int) -> Float32:
    # four accumulators hide the latency of vmaxps
    var a0 = F32V(l[unsafe_offset=0])
    var a1 = a0
    var a2 = a0
    var a3 = a0
    var i = 0
    while i + 4 * W <= V:
        a0 = max(a0, l.unsafe_load[width=W](i))
        a1 = max(a1, l.unsafe_load[width=W](i + W))
        a2 = max(a2, l.unsafe_load[width=W](i + 2 * W))
        a3 = max(a3, l.unsafe_load[width=W](i + 3 * W))
        i += 4 * W
    var m = max(max(a0, a1), max(a2, a3)).reduce_max()
    while i < V:
        m = max(m, l[unsafe_offset=i])
        i += 1
    return m


def first_index_of(l: F32Ptr, V: Int, m: Float32) -> Int:
    var i = 0
    while i + W <= V:
        if l.unsafe_load[width=W](i).eq(m).reduce_or():
            break
        i += W
    while i < V and l[unsafe_offset=i] != m:
        i += 1
    return i if i < V else 0  # no match: NaN logits


def exp_sum(l: F32Ptr, V: Int, m: Float32) -> Float64:
    """Sum of exp(l - m), for the greedy logprob."""
    var total = Float64(0)
    var i = 0
    while i < V:
        var end = min(i + BLOCK, V)
        var acc = F32V(0)
        while i + W <= end:
            acc += fast_exp2[W]((l.unsafe_load[width=W](i) - m) * LOG2E)
            i += W
        var s = Float64(acc.reduce_add())
        while i < end:
            s += Float64(fast_exp2[1]((l[unsafe_offset=i] - m) * LOG2E))
            i += 1
        total += s
    return total


def exp_store(l: F32Ptr, V: Int, m: Float32, inv_t: Float32, e: F32Ptr, blocks: F64Ptr) -> Float64:
    """Stores e = exp((l - m) / T) (so the max has e = 1) and their per-block sums; returns Z."""
    var scale = inv_t * LOG2E
    var total = Float64(0)
    var i = 0
    var blk = 0
    while i < V:
        var end = min(i + BLOCK, V)
        var acc = F32V(0)
        while i + W <= end:
            var v = fast_exp2[W]((l.unsafe_load[width=W](i) - m) * scale)
            e.unsafe_store(i, v)
            acc += v
            i += W
        var s = Float64(acc.reduce_add())
        while i < end:
            var v = fast_exp2[1]((l[unsafe_offset=i] - m) * scale)
            e[unsafe_offset=i] = v
            s += Float64(v)
            i += 1
        blocks[unsafe_offset=blk] = s
        total += s
        blk += 1
    return total


@always_inline
def is_kept(v: Float32, i: Int, ev: Float32, lb: Float32, ib: Int, min_p: Float32) -> Bool:
    """Ranked at or above the boundary token (logit lb, id ib), and not cut by min-p."""
    return (v > lb or (v == lb and i <= ib)) and ev >= min_p


def kept_block_sums(l: F32Ptr, e: F32Ptr, V: Int, lb: Float32, ib: Int, min_p: Float32, blocks: F64Ptr):
    var lane = SIMD[DType.int32, W](0)
    comptime for j in range(W):
        lane[j] = Int32(j)
    var i = 0
    var blk = 0
    while i < V:
        var end = min(i + BLOCK, V)
        var acc = F32V(0)
        while i + W <= end:
            var v = l.unsafe_load[width=W](i)
            var ev = e.unsafe_load[width=W](i)
            var ranked = v.gt(lb) | (v.eq(lb) & (lane + Int32(i)).le(Int32(ib)))
            acc += (ranked & ev.ge(min_p)).select(ev, F32V(0))
            i += W
        var s = Float64(acc.reduce_add())
        while i < end:
            if is_kept(l[unsafe_offset=i], i, e[unsafe_offset=i], lb, ib, min_p):
                s += Float64(e[unsafe_offset=i])
            i += 1
        blocks[unsafe_offset=blk] = s
        blk += 1


def draw_by_id(
    l: F32Ptr, e: F32Ptr, V: Int, lb: Float32, ib: Int, min_p: Float32, blocks: F64Ptr, u: Float64
) -> Int:
    """Walks the kept tokens in id order, skipping whole blocks by their sums; picks the first
    whose cumulative mass exceeds u * total."""
    var nblocks = (V + BLOCK - 1) // BLOCK
    var total = Float64(0)
    for b in range(nblocks):
        total += blocks[unsafe_offset=b]
    var target = u * total
    var cum = Float64(0)
    var last = 0
    for b in range(nblocks):
        var bs = blocks[unsafe_offset=b]
        if bs > 0:
            last = b
        if cum + bs > target:
            for i in range(b * BLOCK, min((b + 1) * BLOCK, V)):
                if is_kept(l[unsafe_offset=i], i, e[unsafe_offset=i], lb, ib, min_p):
                    cum += Float64(e[unsafe_offset=i])
                    if cum > target:
                        return i
            # the block's lane-wise sum overshot the in-order walk: fall through
        cum += bs
    # rounding only: the last kept token
    for i in range(min((last + 1) * BLOCK, V) - 1, -1, -1):
        if e[unsafe_offset=i] > 0 and is_kept(l[unsafe_offset=i], i, e[unsafe_offset=i], lb, ib, min_p):
            return i
    return 0


def draw_listed(keys: U64Ptr, n: Int, e: F32Ptr, min_p: Float32, u: Float64) -> Int:
    """The same draw over a short list of ranked tokens: their ids are sorted, then walked."""
    var kept = 0
    for i in range(n):
        var t = key_id(keys[unsafe_offset=i])
        if e[unsafe_offset=t] >= min_p:
            keys[unsafe_offset=kept] = UInt64(t)
            kept += 1
    sort_keys(keys, kept)
    var total = Float64(0)
    for i in range(kept):
        total += Float64(e[unsafe_offset=Int(keys[unsafe_offset=i])])
    var target = u * total
    var cum = Float64(0)
    for i in range(kept):
        var t = Int(keys[unsafe_offset=i])
        cum += Float64(e[unsafe_offset=t])
        if cum > target:
            return t
    return Int(keys[unsafe_offset=kept - 1])  # rounding only


def select_top_k(l: F32Ptr, V: Int, k: Int, keys: U64Ptr) -> Int:
    """Keys of the k largest logits (ties to the lower id), sorted; 0 < k < V.

    Candidates above a running threshold go to a buffer; when it fills, it is sorted,
    cut to k and the threshold rises to the k-th value.  Later tokens have higher ids,
    so one equal to the threshold ranks below all k kept and can be skipped."""
    var cap = min(V, max(2 * k, 64))
    var thr = neg_inf[DType.float32]()
    var n = 0
    var i = 0
    while i < V:
        var lanes = min(W, V - i)
        if lanes < W or l.unsafe_load[width=W](i).gt(thr).reduce_or():
            for j in range(i, i + lanes):
                var v = l[unsafe_offset=j]
                if v > thr:
                    keys[unsafe_offset=n] = rank_key(v, j)
                    n += 1
            if n + W > cap and n > k:
                sort_keys(keys, n)
                n = k
                thr = l[unsafe_offset=key_id(keys[unsafe_offset=k - 1])]
        i += W
    sort_keys(keys, n)
    return min(n, k)


def mass_count(l: F32Ptr, e: F32Ptr, V: Int, theta: Float32) -> Tuple[Float64, Int]:
    """Mass and number of the tokens with logit >= theta."""
    var total = Float64(0)
    var count = SIMD[DType.int32, W](0)
    var i = 0
    while i < V:
        var end = min(i + BLOCK, V)
        var acc = F32V(0)
        while i + W <= end:
            var above = l.unsafe_load[width=W](i).ge(theta)
            acc += above.select(e.unsafe_load[width=W](i), F32V(0))
            count += above.select(SIMD[DType.int32, W](1), SIMD[DType.int32, W](0))
            i += W
        var s = Float64(acc.reduce_add())
        while i < end:
            if l[unsafe_offset=i] >= theta:
                s += Float64(e[unsafe_offset=i])
                count[0] += 1
            i += 1
        total += s
    return (total, Int(count.reduce_add()))


def nucleus_boundary(l: F32Ptr, e: F32Ptr, V: Int, m: Float32, inv_t: Float32, target: Float64, keys: U64Ptr) -> UInt64:
    """Rank key of the last token of the shortest rank prefix with mass >= target, without
    sorting the vocabulary: SIMD passes step a logit threshold down from the max (each step
    doubles the distance) until the mass above it suffices, bisect until the band between the
    last two thresholds holds <= BAND tokens, then sort just that band."""
    var hi = inf[DType.float32]()  # mass above hi < target <= mass above lo
    var mass_hi = Float64(0)
    var count_hi = 0
    var width = Float32(1.3862944) / inv_t  # ln 4 * T: e shrinks 4x per first step
    var lo = m - width
    var mass_lo: Float64
    var count_lo: Int
    mass_lo, count_lo = mass_count(l, e, V, lo)
    # past 87 / inv_t below the max, e underflows to 0: nothing more to gain
    while mass_lo < target and width * inv_t < 87:
        hi, mass_hi, count_hi = lo, mass_lo, count_lo
        width *= 2
        lo = m - width
        mass_lo, count_lo = mass_count(l, e, V, lo)
    for _ in range(40):
        if count_lo - count_hi <= BAND:
            break
        var mid = m if hi == inf[DType.float32]() else lo + (hi - lo) * 0.5
        if not (lo < mid and mid < hi):
            break  # only ties left
        var mass: Float64
        var count: Int
        mass, count = mass_count(l, e, V, mid)
        if mass >= target:
            lo, count_lo = mid, count
        else:
            hi, mass_hi, count_hi = mid, mass, count

    var n = 0
    var i = 0
    while i < V:
        var lanes = min(W, V - i)
        if lanes < W or l.unsafe_load[width=W](i).ge(lo).reduce_or():
            for j in range(i, i + lanes):
                var v = l[unsafe_offset=j]
                if v >= lo and v < hi:
                    keys[unsafe_offset=n] = rank_key(v, j)
                    n += 1
        i += W
    if n == 0:
        return rank_key(neg_inf[DType.float32](), V)  # keep all: only e = 0 tokens were left out
    for j in range(1, n):
        if keys[unsafe_offset=j] < keys[unsafe_offset=j - 1]:
            sort_keys(keys, n)  # gathered in id order: already sorted when the band is one tie
            break
    var cum = mass_hi
    for j in range(n):
        cum += Float64(e[unsafe_offset=key_id(keys[unsafe_offset=j])])
        if cum >= target:
            return keys[unsafe_offset=j]
    return keys[unsafe_offset=n - 1]  # rounding only


def apply_penalties(
    l: F32Ptr, hist: I32Ptr, n: Int, out_start: Int, rep: Float32, freq: Float32, pres: Float32, cnt: I32Ptr
):
    """Repetition (llama.cpp/HF) over the whole history, then OpenAI frequency/presence over the
    generated part.  cnt[t] = present bit + 2 * generated count; reset to 0 as each token is done."""
    for j in range(n):
        var t = Int(hist[unsafe_offset=j])
        cnt[unsafe_offset=t] |= 1
        if j >= out_start:
            cnt[unsafe_offset=t] += 2
    for j in range(n):
        var t = Int(hist[unsafe_offset=j])
        var c = cnt[unsafe_offset=t]
        if c == 0:
            continue  # a repeat of a token already penalised
        cnt[unsafe_offset=t] = 0
        var v = l[unsafe_offset=t]
        if rep != 1.0:
            v = v / rep if v > 0 else v * rep
        var count = c >> 1
        if count > 0:
            # explicit fma: the numpy reference rounds the same way
            v = v - Float32(count).fma(freq, pres)
        l[unsafe_offset=t] = v


def apply_mask(l: F32Ptr, V: Int, mask: I32Ptr):
    """Sets the logit of every token whose bit (bit t % 32 of word t // 32, llguidance's layout)
    is clear to -inf, so nothing after it (truncation, the draw, the logprob) can pick it."""
    for w in range((V + 31) // 32):
        var bits = bitcast[DType.uint32](mask[unsafe_offset=w])
        if bits == 0xFFFFFFFF:
            continue
        var base = w * 32
        # a grammar usually allows few tokens: most words are all clear
        if bits == 0 and base + 32 <= V:
            l.unsafe_store(base, SIMD[DType.float32, 32](neg_inf[DType.float32]()))
            continue
        for j in range(min(32, V - base)):
            if (bits >> UInt32(j)) & 1 == 0:
                l[unsafe_offset=base + j] = neg_inf[DType.float32]()


# ---------------------------------------------------------------- one row


def workspace_size(V: Int) -> Int:
    return 2 * V + (V + BLOCK - 1) // BLOCK


@fieldwise_init
struct Batch(ImplicitlyCopyable):
    var V: Int
    var logits: F32Ptr
    var params: F32Ptr
    var seeds: U64Ptr
    var steps: I64Ptr
    var history: I32Ptr
    var history_offsets: I32Ptr
    var output_start: I32Ptr
    var bias_ids: I32Ptr
    var bias_values: F32Ptr
    var bias_offsets: I32Ptr
    var out_tokens: I32Ptr
    var out_logprobs: F32Ptr
    var masks: I32Ptr
    var mask_rows: I32Ptr
    var workspace: U64Ptr

    def sample_row(self, b: Int, worker: Int):
        var V = self.V
        var l = self.logits.unsafe_offset(b * V)
        var p = self.params.unsafe_offset(b * NPARAMS)
        # per-worker scratch: V sort keys, V exp values, V counters, the block sums
        var keys = self.workspace.unsafe_offset(worker * workspace_size(V))
        var e = keys.unsafe_offset(V).unsafe_bitcast[Float32]()
        var cnt = e.unsafe_offset(V).unsafe_bitcast[Int32]()
        var blocks = keys.unsafe_offset(2 * V).unsafe_bitcast[Float64]()

        var mask_row = Int(self.mask_rows[unsafe_offset=b])
        if mask_row >= 0:
            apply_mask(l, V, self.masks.unsafe_offset(mask_row * ((V + 31) // 32)))

        for j in range(Int(self.bias_offsets[unsafe_offset=b]), Int(self.bias_offsets[unsafe_offset=b + 1])):
            l[unsafe_offset=Int(self.bias_ids[unsafe_offset=j])] += self.bias_values[unsafe_offset=j]

        var rep = p[unsafe_offset=4]
        var freq = p[unsafe_offset=5]
        var pres = p[unsafe_offset=6]
        if rep != 1.0 or freq != 0.0 or pres != 0.0:
            var h0 = Int(self.history_offsets[unsafe_offset=b])
            var n = Int(self.history_offsets[unsafe_offset=b + 1]) - h0
            apply_penalties(
                l, self.history.unsafe_offset(h0), n, Int(self.output_start[unsafe_offset=b]), rep, freq, pres, cnt
            )

        var temperature = p[unsafe_offset=0]
        if temperature <= 0:
            var m = row_max(l, V)
            self.out_tokens[unsafe_offset=b] = Int32(first_index_of(l, V, m))
            self.out_logprobs[unsafe_offset=b] = Float32(-log(exp_sum(l, V, m)))
            return

        var top_k = Int(p[unsafe_offset=1])
        var top_p = p[unsafe_offset=2]
        var min_p = p[unsafe_offset=3]
        var inv_t = Float32(1.0) / temperature
        var u = uniform(self.seeds[unsafe_offset=b], self.steps[unsafe_offset=b])

        # Truncation keeps the tokens ranked (logit desc, id asc) at or above a boundary token;
        # the draw then walks the kept ones in id order.
        var tok: Int
        var m: Float32
        var z: Float64
        if 0 < top_k < V:
            var n = select_top_k(l, V, top_k, keys)
            m = l[unsafe_offset=key_id(keys[unsafe_offset=0])]
            z = exp_store(l, V, m, inv_t, e, blocks)
            if top_p < 1.0:
                var mass = Float64(0)
                for i in range(n):
                    mass += Float64(e[unsafe_offset=key_id(keys[unsafe_offset=i])])
                var target = Float64(top_p) * mass
                var cum = Float64(0)
                for i in range(n):
                    cum += Float64(e[unsafe_offset=key_id(keys[unsafe_offset=i])])
                    if cum >= target:
                        n = i + 1
                        break
            if n <= BAND:
                tok = draw_listed(keys, n, e, min_p, u)
            else:
                var last = keys[unsafe_offset=n - 1]
                kept_block_sums(l, e, V, key_value(last), key_id(last), min_p, blocks)
                tok = draw_by_id(l, e, V, key_value(last), key_id(last), min_p, blocks, u)
        else:
            m = row_max(l, V)
            z = exp_store(l, V, m, inv_t, e, blocks)
            var last = rank_key(neg_inf[DType.float32](), V)  # keep all
            if top_p < 1.0:
                last = nucleus_boundary(l, e, V, m, inv_t, Float64(top_p) * z, keys)
            if top_p < 1.0 or min_p > 0:
                kept_block_sums(l, e, V, key_value(last), key_id(last), min_p, blocks)
            tok = draw_by_id(l, e, V, key_value(last), key_id(last), min_p, blocks, u)
        self.out_tokens[unsafe_offset=b] = Int32(tok)
        var x = (l[unsafe_offset=tok] - m) * inv_t
        self.out_logprobs[unsafe_offset=b] = Float32(Float64(x) - log(z))


# ---------------------------------------------------------------- Python entry points


def check_ranges(offsets: I32Ptr, B: Int, size: Int, what: String) raises:
    for b in range(B):
        var lo = Int(offsets[unsafe_offset=b])
        var hi = Int(offsets[unsafe_offset=b + 1])
        if lo < 0 or hi < lo or hi > size:
            raise Error(what, "_offsets must be non-decreasing within [0, ", size, "]; row ", b, ": ", lo, "..", hi)


def check_ids(ids: I32Ptr, lo: Int, hi: Int, V: Int, what: String) raises:
    for j in range(lo, hi):
        var t = Int(ids[unsafe_offset=j])
        if t < 0 or t >= V:
            raise Error(what, " token id ", t, " out of range [0, ", V, ")")


def sample(
    logits: PythonObject,
    params: PythonObject,
    seeds: PythonObject,
    steps: PythonObject,
    history: PythonObject,
    history_offsets: PythonObject,
    output_start: PythonObject,
    bias_ids: PythonObject,
    bias_values: PythonObject,
    bias_offsets: PythonObject,
    out_tokens: PythonObject,
    out_logprobs: PythonObject,
    masks: PythonObject,
    mask_rows: PythonObject,
    workspace: PythonObject,
    dims_obj: PythonObject,
) raises:
    """Dims: (B, V, len(history), len(bias_ids), len(workspace), rows of masks); the wrapper checks
    dtypes and shapes."""
    var dims = Dims(dims_obj, 6)
    var B = dims[0]
    var V = dims[1]
    var H = dims[2]
    var L = dims[3]
    var WS = dims[4]
    var M = dims[5]
    if WS < workspace_size(V):
        raise Error("workspace: ", WS, " words is smaller than ", workspace_size(V))
    var batch = Batch(
        V,
        ptr[DType.float32](logits),
        ptr[DType.float32](params),
        ptr[DType.uint64](seeds),
        ptr[DType.int64](steps),
        ptr[DType.int32](history),
        ptr[DType.int32](history_offsets),
        ptr[DType.int32](output_start),
        ptr[DType.int32](bias_ids),
        ptr[DType.float32](bias_values),
        ptr[DType.int32](bias_offsets),
        ptr[DType.int32](out_tokens),
        ptr[DType.float32](out_logprobs),
        ptr[DType.int32](masks),
        ptr[DType.int32](mask_rows),
        ptr[DType.uint64](workspace),
    )
    # every index the rows will follow is checked here, before any row is touched
    check_ranges(batch.history_offsets, B, H, "history")
    check_ranges(batch.bias_offsets, B, L, "bias")
    for b in range(B):
        var h0 = Int(batch.history_offsets[unsafe_offset=b])
        var h1 = Int(batch.history_offsets[unsafe_offset=b + 1])
        var os = Int(batch.output_start[unsafe_offset=b])
        if os < 0 or os > h1 - h0:
            raise Error("output_start[", b, "] = ", os, " is outside the row's history of ", h1 - h0)
        var mr = Int(batch.mask_rows[unsafe_offset=b])
        if mr < -1 or mr >= M:
            raise Error("mask_rows[", b, "] = ", mr, " is outside [-1, ", M, ")")
        check_ids(batch.history, h0, h1, V, "history")
        check_ids(
            batch.bias_ids, Int(batch.bias_offsets[unsafe_offset=b]), Int(batch.bias_offsets[unsafe_offset=b + 1]), V, "logit_bias"
        )

    # rows round-robin over the threads, each with its own slice of the workspace
    var workers = min(B, num_threads(), WS // workspace_size(V))
    if workers <= 1:
        for b in range(B):
            batch.sample_row(b, 0)
        return

    def work(w: Int) {imm batch, imm B, imm workers}:
        for b in range(w, B, workers):
            batch.sample_row(b, w)

    sync_parallelize(work, workers)


def workspace_words(dims: PythonObject) raises -> PythonObject:
    """Dims: (vocab,). The uint64 words of scratch `sample` needs for that vocabulary (one slice per thread)."""
    return PythonObject(num_threads() * workspace_size(Dims(dims, 1)[0]))


@export
def PyInit_sampling() abi("C") -> PythonObject:
    try:
        _ = initialize_runtime()
        var m = PythonModuleBuilder("sampling")
        m.def_function[sample]("sample", docstring="Sample one token per row of logits (see wicore/kernels/sampling.py).")
        m.def_function[workspace_words]("workspace_words", docstring="Scratch size for sample(), in uint64 words.")
        return m.finalize()
    except e:
        abort(String("failed to create module sampling: ", e))
