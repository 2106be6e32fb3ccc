// Attention of one query per (row, head) against `keys` cached positions, for decoding: q
// [batch, heads, dim] (contiguous), k and v [batch, kv_heads, *, dim] (strides kb, kh between rows
// and heads, unit stride within a key and `dim` between keys; every row 4-element aligned),
// `hidden` [batch, keys] (1 = not visible; null: all visible), out [batch, heads, dim]
// contiguous. Head h reads kv head h / rep. Appended to kernels.cu (its helpers) before NVRTC
// compiles them. Replaces about a dozen kernels of the tensor-op form (product, scale, mask,
// softmax's five, casts, product, the grouped heads' copies).
//
// One block per (row, head), for head dimensions 32 · PER (PER 1, 2, 4, 8: every preset's), the
// keys dealt to warps KW (8, 16 or 32) at a time: a warp reads each of its KW keys and values as
// one coalesced row (lane i holding elements i·PER ... of the head), turns its lanes' KW partial
// dot products into one score per lane with a butterfly of shuffles (reduce-scatter; below 32
// keys each group of KW lanes ends with the KW scores), takes their softmax against its running
// maximum (online softmax), and sums the values; the block's warps are merged through shared
// memory once, each warp holding one warp's weight per lane. Fewer keys per warp make more,
// shorter warps: 16 with split keys (below), 8 when the pairs fill the SMs (attempt 45).
// No workspace, no second phase: after the wait the chain is the query, the keys, the shuffles,
// the values and one block barrier. The form before it (attempts 19 and 23) split the keys over
// blocks (flash-decoding), read each key by a group of threads whose dot product was reduced by
// shuffles, and ran its phases (scores, two block reductions, values, workspace, merge) as a
// chain of block barriers, the last block of a pair merging the splits: with this one a decoded
// `1b` token took 1.23 instead of 1.30-1.33 ms at batch 1 and 1.71 instead of 2.07-2.13 ms at
// batch 8 (H200; docs/performance.md, attempt 31).
//
// Split keys (sm_90, a launch with a cluster dimension of `splits` ≤ 8): when the pairs are
// fewer than the SMs (7B at batch 1: 32 heads on 132 SMs), each pair's keys are dealt to the
// `splits` blocks of one thread-block cluster, so the cache streams through `splits` times the
// SMs; each block merges its warps as above, then the cluster's blocks read each other's sums
// from distributed shared memory (no workspace in global memory, no second kernel, no atomics)
// and each writes a `1 / splits` share of the outputs. One split is the form above (bit for bit
// up to 512 keys; past them its 16 warps loop where 32 did before). Attempt 41: −2 to −5 % per
// decoded token on an H200, though alone the kernel took as long split or not. Attempt 45: not
// bound by the warps' chains either (four times the warps with a quarter of the chain was no
// faster) but by load round trips and the block and cluster barriers; 16 keys per warp over 8
// blocks per pair took ~10.5 against ~12.5 µs per 7B layer.
//
// Grid: pairs · splits blocks of 32 · warps threads, warps = ⌈keys / (KW · splits)⌉ up to 16,
// and with split keys no more than keep every cluster resident at once (decode_attention.rs,
// attempt 82); each warp then loops over further keys. Dynamic shared memory:
// (warps + 1) · (dim + 2) + dim + 2 floats, and where the launch gives more
// (decode_attention.rs: up to 48 KB in all), from the next 16 bytes on 2 · KW rows of `dim` elements per warp (its first pass's keys and
// values), or KW (the keys only), copied asynchronously before the wait for the kernel ahead
// (the cached rows below the slot do not depend on it), so that the first scores (and value
// sums) after the wait read shared memory instead of L2.
// Floats of value rows a lane has in flight at once (`LLAMA_ATTN_VALUES=narrow` compiles 8).
// Most blocks in one pair's cluster (the portable cluster size; `DECODE_MAX_SPLITS` in
// decode_attention.rs launches no more): the merge keeps one scale per block in registers.
#define DECODE_MAX_SPLITS 8
// Most warps in a block (`__launch_bounds__(512)`; `DECODE_MAX_WARPS` in decode_attention.rs):
// the merge holds one weight per warp in a lane.
#define DECODE_MAX_WARPS 16
#ifndef DECODE_VALUE_FLOATS
#define DECODE_VALUE_FLOATS 32
#endif

template <typename T, int PER>
__device__ __forceinline__ void load_span(const T* p, float* f) {
    if (PER == 1) {
        f[0] = load(p, 0);
    } else if (PER == 2) {
        if (sizeof(T) == 2) {
            const unsigned int u = *reinterpret_cast<const unsigned int*>(p);
            f[0] = __uint_as_float(u << 16);
            f[1] = __uint_as_float(u & 0xffff0000u);
        } else {
            const float2 u = *reinterpret_cast<const float2*>(p);
            f[0] = u.x;
            f[1] = u.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < PER; i += 4) {
            const Four x = load4(p, i);
            f[i] = x.v[0]; f[i + 1] = x.v[1]; f[i + 2] = x.v[2]; f[i + 3] = x.v[3];
        }
    }
}

// One step of the reduce-scatter of 2·O sums per lane over lanes `O` apart.
template <int O>
__device__ __forceinline__ void scatter_step(float* sc, int lane) {
    const bool up = lane & O;
#pragma unroll
    for (int jj = 0; jj < O; ++jj) {
        const float send = up ? sc[jj] : sc[jj + O];
        const float keep = up ? sc[jj + O] : sc[jj];
        sc[jj] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
}

// The block's place in its thread-block cluster (sm_90): a split of one (row, head) pair's keys
// over `cluster_size()` blocks. Below sm_90, and for a launch without a cluster dimension, one
// block of one.
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
    return r;
}
__device__ __forceinline__ unsigned cluster_size() {
    unsigned n = 1;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
#endif
    return n;
}
// Every thread of every block of the cluster: writes to shared memory before it are visible to
// the cluster's reads after it.
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
#endif
}
// The same barrier without the memory ordering (arrive.relaxed): for the last one, which only
// keeps each block's shared memory alive until the others have read it.
__device__ __forceinline__ void cluster_sync_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" :::
                     "memory");
#endif
}
// The float at `p` (this block's shared memory) in block `rank` of the cluster.
__device__ __forceinline__ float cluster_load(const float* p, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned long long local;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(local) : "l"(p));
    unsigned remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
                 : "=r"(remote)
                 : "r"((unsigned)local), "r"(rank));
    float v;
    // Volatile keeps it after the cluster barrier; no memory clobber, so several are in flight.
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote));
    return v;
#else
    return *p;
#endif
}

// The block's share of one pair's keys below `keys`: warp w of block r takes keys from (r · warps
// + w) · KW in strides of splits · warps · KW. `qv`: the lane's span of the (rotated) query;
// `extra`: the step's own key (score `s_extra`, value `v_extra`, the lane's span) enters this
// block's merge. `part`: (warps + 1) × dim floats; `wm`: 2 · (warps + 1); `blk`: dim + 2 (the
// block's unnormalised sums, then its maximum and softmax denominator).
template <typename T, int PER, int KW>
__device__ __forceinline__ void decode_attention_rows(const float* qv, const T* kr, const T* vr,
                                                      const unsigned char* hr, T* out, int keys,
                                                      float scale, float* part, float* wm,
                                                      float* blk, unsigned rank, unsigned splits,
                                                      bool extra, float s_extra,
                                                      const float* v_extra, const T* pre_k,
                                                      const T* pre_v) {
    static_assert(KW == 8 || KW == 16 || KW == 32, "keys per warp pass: 8, 16 or 32");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int dim = 32 * PER;
    float o[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) o[i] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    const int first = ((int)rank * warps + warp) * KW, stride = (int)splits * warps * KW;
    for (int base = first; base < keys; base += stride) {
        const int n = min(KW, keys - base);
        // The warp's first KW keys (and values), where `pre_k` (`pre_v`) holds them (shared
        // memory, copied before the wait), else the cache: rows `dim` apart either way.
        const T* kp = pre_k && base == first ? pre_k : kr + (long long)base * dim;
        const T* vp = pre_v && base == first ? pre_v : vr + (long long)base * dim;
        float sc[KW];
#pragma unroll
        for (int jj = 0; jj < KW; ++jj) {
            float a = 0.0f;
            if (jj < n) {
                float kf[PER];
                load_span<T, PER>(kp + jj * dim + lane * PER, kf);
#pragma unroll
                for (int i = 0; i < PER; ++i) a += kf[i] * qv[i];
            }
            sc[jj] = a;
        }
        // Reduce-scatter: after the step of offset `o` a lane keeps the half of its sums whose
        // keys have bit `o` of the lane's index, plus its partner's; lane i ends with key
        // i mod KW's sum over the lanes i mod KW + KW·c, which the butterfly past KW completes
        // (every lane of a group of KW then holds its group's KW scores).
        if (KW >= 32) scatter_step<16>(sc, lane);
        if (KW >= 16) scatter_step<8>(sc, lane);
        if (KW >= 8) scatter_step<4>(sc, lane);
        scatter_step<2>(sc, lane);
        scatter_step<1>(sc, lane);
#pragma unroll
        for (int off = KW; off < 32; off <<= 1) sc[0] += __shfl_xor_sync(0xffffffffu, sc[0], off);
        const int j = base + (lane & (KW - 1));
        const float s = (j < keys && !(hr && hr[j])) ? sc[0] * scale : NEG_INF;
        float mx = s;
#pragma unroll
        for (int off = KW / 2; off > 0; off >>= 1)
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        const float mn = fmaxf(m, mx);
        if (mn == NEG_INF) continue;  // the same in the whole warp: every key so far hidden
        const float p = s == NEG_INF ? 0.0f : expf(s - mn);
        const float corr = m == NEG_INF ? 0.0f : expf(m - mn);
        float ps = p;  // the group's KW probabilities summed (every group holds the same KW)
#pragma unroll
        for (int off = KW / 2; off > 0; off >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
        l = l * corr + ps;
#pragma unroll
        for (int i = 0; i < PER; ++i) o[i] *= corr;
        // VU rows' loads in flight at a time (no branch around them); a hidden key's value may
        // be anything (NaN), so its product is skipped rather than multiplied by 0. The loop is
        // a chain of VU-row round trips to L2 (32 / VU of them for a warp's 32 keys): with 8
        // floats per lane (attempt 31) a 128-wide head (7B) made 16 of them, ~1/3 of the
        // kernel; 32 floats make 4, for 32 more registers in a kernel that has them to spare.
        constexpr int VF = PER >= DECODE_VALUE_FLOATS ? 1 : DECODE_VALUE_FLOATS / PER;
        constexpr int VU = VF < KW ? VF : KW;
        for (int j0 = 0; j0 < n; j0 += VU) {
            float vf[VU][PER];
#pragma unroll
            for (int u = 0; u < VU; ++u)
                if (j0 + u < n)
                    load_span<T, PER>(vp + (j0 + u) * dim + lane * PER, vf[u]);
#pragma unroll
            for (int u = 0; u < VU; ++u) {
                const float pj = __shfl_sync(0xffffffffu, p, (j0 + u) & (KW - 1));
                if (j0 + u < n && pj != 0.0f) {
#pragma unroll
                    for (int i = 0; i < PER; ++i) o[i] += pj * vf[u][i];
                }
            }
        }
        m = mn;
    }
    // Rows of `part` and entries of `wm` (stride warps + 1): one per warp, and with `extra` (the
    // step's own key, never read from the cache) one more: its score, a sum of 1, its value.
    const int entries = warps + (extra ? 1 : 0), ws = warps + 1;
#pragma unroll
    for (int i = 0; i < PER; ++i) part[warp * dim + lane * PER + i] = o[i];
    if (lane == 0) {
        wm[warp] = m;
        wm[ws + warp] = l;
    }
    if (extra && warp == 0) {
#pragma unroll
        for (int i = 0; i < PER; ++i) part[warps * dim + lane * PER + i] = v_extra[i];
        if (lane == 0) {
            wm[warps] = s_extra;
            wm[ws + warps] = 1.0f;
        }
    }
    __syncthreads();
    // The block's warps merged against the block's maximum. Every warp holds entry w's weight in
    // lane w (one exponential per lane, reductions by shuffles): a loop over the warps with an
    // exponential per step in every thread was most of a 16-warp block's instructions.
    const float mw = lane < entries ? wm[lane] : NEG_INF;
    float mx = mw;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    // A warp that saw only hidden keys has weight 0 and sums 0 (never a hidden value's NaN).
    const float ew = mw == NEG_INF ? 0.0f : expf(mw - mx);
    const float den = warp_sum(lane < entries ? wm[ws + lane] * ew : 0.0f);
    // dim is a multiple of 32, so the loop is the same for a whole warp (its shuffles).
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float num = 0.0f;
#pragma unroll
        for (int w = 0; w <= DECODE_MAX_WARPS; ++w) {
            const float e = __shfl_sync(0xffffffffu, ew, w);
            if (w < entries) num += part[w * dim + i] * e;
        }
        if (splits == 1) {
            store(out, i, den > 0.0f ? num / den : 0.0f);
        } else {
            blk[i] = num;
        }
    }
    if (splits == 1) return;
    if (threadIdx.x == 0) {
        blk[dim] = mx;
        blk[dim + 1] = den;
    }
    // The cluster's blocks merged through distributed shared memory: block r writes the outputs
    // r, r + splits, ... from every block's sums, in rank order (the same bits every run); lane c
    // reads block c's maximum and denominator, and every block's sums for an output are loaded
    // together. The second barrier keeps each block's shared memory alive until the others have
    // read it.
    cluster_sync();
    const float bc = lane < (int)splits ? cluster_load(blk + dim, lane) : NEG_INF;
    const float dc = lane < (int)splits ? cluster_load(blk + dim + 1, lane) : 0.0f;
    float big = bc;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, off));
    const float ec = bc == NEG_INF ? 0.0f : expf(bc - big);
    const float total = warp_sum(dc * ec);
    float e[DECODE_MAX_SPLITS];
#pragma unroll
    for (int c = 0; c < DECODE_MAX_SPLITS; ++c) e[c] = __shfl_sync(0xffffffffu, ec, c);
    for (int i = (int)rank + (int)splits * threadIdx.x; i < dim; i += (int)splits * blockDim.x) {
        float num = 0.0f;
#pragma unroll
        for (int c = 0; c < DECODE_MAX_SPLITS; ++c)
            if (c < (int)splits) num += cluster_load(blk + i, c) * e[c];
        store(out, i, total > 0.0f ? num / total : 0.0f);
    }
    cluster_sync_relaxed();
}

// An element as a cache of T stores it (bf16: rounded to nearest even).
__device__ __forceinline__ float as_stored(float v, const float*) { return v; }
__device__ __forceinline__ float as_stored(float v, const bf16_t*) {
    bf16_t h;
    store(&h, 0, v);
    return load(&h, 0);
}

// A lane's span of a head's row rotated with the full-width tables (c = [cos, cos], s = [−sin,
// sin]): x ⊙ c + swap(x) ⊙ s, the partner half of the span's elements in lane ^ 16 (half a head
// is 16 lanes' spans), as the rotary and rope_slot kernels compute it (the same bits).
template <typename T, int PER>
__device__ __forceinline__ void rotate_span(const T* x, const T* c, const T* s, int lane,
                                            float* r) {
    float a[PER], b[PER], cv[PER], sv[PER];
    load_span<T, PER>(x + lane * PER, a);
    load_span<T, PER>(x + (lane ^ 16) * PER, b);
    load_span<T, PER>(c + lane * PER, cv);
    load_span<T, PER>(s + lane * PER, sv);
#pragma unroll
    for (int i = 0; i < PER; ++i) r[i] = as_stored(rotate_one(a[i], cv[i], b[i], sv[i]), x);
}

// Floats of shared memory before the preloaded rows (`part`, `wm`, `blk`), rounded up to 16 bytes;
// `decode_preload_offset` in decode_attention.rs computes the same.
__device__ __forceinline__ int decode_preload_offset(int warps, int dim) {
    return ((warps + 1) * (dim + 2) + dim + 2 + 3) & ~3;
}

// An asynchronous copy of BYTES (4, 8 or 16; both addresses so aligned) from global to shared
// memory (sm_80 and later; waited for by cp.async.wait_all).
template <int BYTES>
__device__ __forceinline__ void copy_async(void* shared, const void* global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(shared);
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(s), "l"(global), "n"(BYTES)
                 : "memory");
#endif
}

// With `slot` (the rotation-and-slot form, for a decode step that writes its key and value at a
// device-side cache position): q is the step's unrotated query, kn and vn [batch, kv_heads, dim]
// its unrotated key and value, tc and ts [batch, dim] the rotary tables. The block rotates the
// query itself; the cache is read below `slot` only (the positions past it are not written yet:
// with a cache longer than the text so far, they are not streamed at all); the step's own key is
// scored from registers as one more entry of the block's merge (block 0 of the cluster), and the
// first query head of each key/value head's group writes it, rotated, and the value at `slot`
// (no block reads that position from the cache, so no ordering is needed). One kernel instead
// of rope_slot's and this one's.
template <typename T, int PER, int KW>
__device__ void decode_attention(const T* q, const T* k, const T* v, const unsigned char* hidden,
                                 T* out, int heads, int rep, int keys, long long kb, long long kh,
                                 float scale, const T* kn, const T* vn, const T* tc, const T* ts,
                                 const long long* slot) {
    extern __shared__ float sh[];
    const int warps = blockDim.x >> 5, dim = 32 * PER, lane = threadIdx.x & 31;
    float* part = sh;                      // (warps + 1) × dim
    float* wm = part + (warps + 1) * dim;  // warps + 1 maxima, then as many sums
    float* blk = wm + 2 * (warps + 1);     // the block's sums, maximum and denominator (splits)
    const unsigned rank = cluster_rank(), splits = cluster_size();
    const int pair = blockIdx.x / splits, row = pair / heads, h = pair % heads;
    const long long kvoff = row * kb + (long long)(h / rep) * kh;
    const T* kr = k + kvoff;
    const T* vr = v + kvoff;
    const unsigned char* hr = hidden ? hidden + (long long)row * keys : nullptr;
    // The slot is written before the step, never by the kernel ahead (pdl_wait), so it bounds
    // the prefetch; it is read again after the wait for the keys themselves.
    const int cached = slot ? (int)max(0LL, min((long long)keys, *slot)) : keys;
    T *pre_k = nullptr, *pre_v = nullptr;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // The cached keys and values but this step's do not depend on the kernel ahead (at most it
    // writes that one slot), and a prefetch to L2, the point of coherence, cannot leave a stale
    // line behind, so they are on their way before waiting for that kernel (see pdl_wait). Each
    // block prefetches the runs of keys its warps read.
    const long long run = (long long)warps * KW * dim * sizeof(T);
    for (long long start = rank * run; start < (long long)cached * dim * sizeof(T);
         start += splits * run) {
        const long long end = min(start + run, (long long)cached * dim * sizeof(T));
        for (long long o = start + threadIdx.x * 128LL; o < end; o += blockDim.x * 128LL) {
            asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(kr) + o));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(vr) + o));
        }
    }
    // Where the launch gave the room (decode_attention.rs, `LLAMA_ATTN_PRELOAD`), each warp also
    // copies its first pass's keys and values (one contiguous run each) into shared memory by
    // asynchronous copies: after the wait its first scores and value sums read shared memory,
    // not L2.
    // Room for both (2) or for the keys only (1).
    unsigned room;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(room));
    const unsigned rows = warps * KW * dim * sizeof(T), off = decode_preload_offset(warps, dim);
    const int held = room >= off * 4 + 2 * rows ? 2 : room >= off * 4 + rows ? 1 : 0;
    const int lead = ((int)rank * warps + (threadIdx.x >> 5)) * KW;
    if (held) {
        pre_k = reinterpret_cast<T*>(sh + off) + (threadIdx.x >> 5) * held * KW * dim;
        if (held == 2) pre_v = pre_k + KW * dim;
        const int elems = max(0, min(KW, cached - lead)) * dim;
        for (int c = 4 * lane; c < elems; c += 4 * 32) {
            copy_async<4 * sizeof(T)>(pre_k + c, kr + (long long)lead * dim + c);
            if (held == 2) copy_async<4 * sizeof(T)>(pre_v + c, vr + (long long)lead * dim + c);
        }
    }
#endif
    pdl_wait();
    pdl_trigger();
    if (pre_k) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("cp.async.wait_all;" ::: "memory");
#endif
        __syncwarp();
    }
    const long long row0 = (long long)pair * dim;
    float qv[PER], kx[PER], vx[PER];
    float s_extra = NEG_INF;
    bool extra = false;
    int limit = keys;
    if (slot) {
        const long long sl = *slot;
        limit = (int)max(0LL, min((long long)keys, sl));
        rotate_span<T, PER>(q + row0, tc + (long long)row * dim, ts + (long long)row * dim, lane,
                            qv);
        // Block 0 of the cluster scores the step's own key (and, for a group's first head,
        // writes it) when the slot is in the cache; the merge takes it unless the row hides it.
        const bool own = rank == 0 && sl >= 0 && sl < keys;
        extra = own && !(hr && hr[sl]);
        if (own) {
            const long long nrow = ((long long)row * (heads / rep) + h / rep) * dim;
            rotate_span<T, PER>(kn + nrow, tc + (long long)row * dim, ts + (long long)row * dim,
                                lane, kx);
            load_span<T, PER>(vn + nrow + lane * PER, vx);
            float a = 0.0f;
#pragma unroll
            for (int i = 0; i < PER; ++i) a += qv[i] * kx[i];
            s_extra = warp_sum(a) * scale;
            if (h % rep == 0 && threadIdx.x < 32) {
                T* kw = const_cast<T*>(kr) + sl * dim + lane * PER;
                T* vw = const_cast<T*>(vr) + sl * dim + lane * PER;
#pragma unroll
                for (int i = 0; i < PER; ++i) {
                    store(kw, i, kx[i]);
                    store(vw, i, vx[i]);
                }
            }
        }
    } else {
        load_span<T, PER>(q + row0 + lane * PER, qv);
    }
    decode_attention_rows<T, PER, KW>(qv, kr, vr, hr, out + row0, limit, scale, part, wm, blk,
                                      rank, splits, extra, s_extra, vx, pre_k, pre_v);
}

// One kernel per head dimension (the registers of a lane's share of a row) and keys per warp
// pass: decode_attention_k{8,16,32}_d{32,64,128,256}.
#define DECODE_ATTENTION(SUFFIX, T, DIM, KW, NAME)                                                 \
    extern "C" __global__ void __launch_bounds__(512) NAME##_##SUFFIX(                             \
        const T* q, const T* k, const T* v, const unsigned char* hidden, T* out, int heads,        \
        int rep, int keys, long long kb, long long kh, float scale, const T* kn, const T* vn,      \
        const T* tc, const T* ts, const long long* slot) {                                         \
        decode_attention<T, DIM / 32, KW>(q, k, v, hidden, out, heads, rep, keys, kb, kh, scale,  \
                                          kn, vn, tc, ts, slot);                                   \
    }
#define DECODE_ATTENTION_KW(SUFFIX, T, DIM)                                                        \
    DECODE_ATTENTION(SUFFIX, T, DIM, 32, decode_attention_k32_d##DIM)                              \
    DECODE_ATTENTION(SUFFIX, T, DIM, 16, decode_attention_k16_d##DIM)                              \
    DECODE_ATTENTION(SUFFIX, T, DIM, 8, decode_attention_k8_d##DIM)
#define DECODE_ATTENTION_DIMS(SUFFIX, T)                                                           \
    DECODE_ATTENTION_KW(SUFFIX, T, 32)                                                             \
    DECODE_ATTENTION_KW(SUFFIX, T, 64)                                                             \
    DECODE_ATTENTION_KW(SUFFIX, T, 128)                                                            \
    DECODE_ATTENTION_KW(SUFFIX, T, 256)
DECODE_ATTENTION_DIMS(f32, float)
DECODE_ATTENTION_DIMS(bf16, bf16_t)
