// The flash kernels' second part (see flash_attention.cu, which comes first in the compiled
// source): Hopper's wgmma versions of the head-dim-64 kernels, compiled only for sm_90a, and the
// kernels' entry points, which pick them there and the mma.sync kernels elsewhere.

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Hopper's warp-group products (wgmma), compiled only for sm_90a (NVRTC's `compute_90a`, which
// the launcher picks on compute capability 9.0): four warps issue one asynchronous 64 x N x 16
// product whose B operand (and A's, when not in registers) is read from shared memory through a
// descriptor. The accumulators and register A operands keep mma.sync's per-warp fragment layout
// (warp w of the group holds rows 16w..16w+15), so the softmax code is shared with the
// mma.sync kernels. A register A operand must be computed afresh before each product: the query
// fragments loaded once and reused by the scores of every key tile were read, from the second
// tile on, out of registers ptxas had given to the probabilities (NVRTC 13 on an H200,
// docs/performance.md attempt 70), so the queries are a shared-memory operand.
#define WGMMA 1

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Writes to shared memory by ordinary or cp.async stores become visible to wgmma's reads (the
// async proxy) only through this fence, executed by the writing threads before the barrier.
__device__ __forceinline__ void fence_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// The descriptor of a tile of 128-byte rows in the 128-byte swizzle (16-byte chunk c of row r
// stored at chunk c ^ (r % 8); the tile 1024-byte aligned): 8-row groups 1024 bytes apart. Both
// offsets are 1024 bytes: for K-major operands the leading offset is unused (a product's 16
// columns lie within one row), for MN-major ones (V, read transposed) one of the two steps over
// the 8-row groups of K and the other is unused (N = 64 is one row).
__device__ __forceinline__ unsigned long long sw128_desc(const bf16_t* p) {
    return (unsigned long long)((smem_u32(p) & 0x3FFFF) >> 4) | (64ull << 16) | (64ull << 32) |
           (1ull << 62);
}

// The compiler sees a wgmma's registers as written when the instruction is issued, not when it
// completes, and knows nothing of the fence: these empty statements pin the instructions that
// write an operand before the fence and those that read a result after the wait.
template <int N>
__device__ __forceinline__ void pin(float (*d)[4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}
template <int N>
__device__ __forceinline__ void pin(unsigned (*a)[4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[i][e])::"memory");
}

#define WG_D32(d)                                                                             \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),  \
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]),             \
        "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),             \
        "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),             \
        "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]),             \
        "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])

// d (64 x 64, f32; this warp's 16 rows in C layout) (+)= a (64 x 16, bf16, this warp's A
// fragment in registers) · B (16 x 64 from shared memory; TB = 1: stored [k][n], read transposed).
// `acc` = 0 overwrites d.
template <int TB>
__device__ __forceinline__ void wgmma_rs(float (*d)[4], const unsigned* a, unsigned long long b,
                                         int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
        "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
        : WG_D32(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB), "r"(acc));
}

// The same with A (64 x 16) from shared memory too.
__device__ __forceinline__ void wgmma_ss(float (*d)[4], unsigned long long a, unsigned long long b,
                                         int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
        "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : WG_D32(d)
        : "l"(a), "l"(b), "r"(acc));
}

// s (64 x 64, f32) = a · bᵀ for two 64-row tiles of 128-byte rows in shared memory (128-byte
// swizzled): four products issued, to be committed by the caller.
__device__ __forceinline__ void wg_scores(float (*s)[4], const bf16_t* a, const bf16_t* b) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_ss(s, sw128_desc(a + kk * 16), sw128_desc(b + kk * 16), kk);
}

// acc (64 x 64) += p (this warp's 16 x 64 rows in C layout, rounded to bf16) · tile (64 x 64,
// stored [k][n], swizzled, read transposed), committed; WAIT: and waited for.
template <bool WAIT>
__device__ __forceinline__ void wg_accumulate(float (*acc)[4], const float (*p)[4],
                                              const bf16_t* tile) {
    unsigned pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) frag_from_c(pa[kk], p, kk);
    pin<4>(pa);
    pin<8>(acc);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs<1>(acc, pa[kk], sw128_desc(tile + kk * 16 * 64), 1);
    wg_commit();
    if (WAIT) {
        wg_wait<0>();
        pin<8>(acc);
    }
}

// Rows r0..r0+ROWS-1 of a [T, 64] bf16 matrix into a tile of 128-byte rows in the 128-byte
// swizzle, through cp.async, zeros past T.
template <int ROWS>
__device__ __forceinline__ void load_tile_sw128(bf16_t* tile, const bf16_t* src, long long rs,
                                                int r0, int T) {
    for (int c = threadIdx.x; c < ROWS * 8; c += blockDim.x) {
        const int r = c >> 3, ch = c & 7;
        const bool in = r0 + r < T;
        const bf16_t* from = in ? src + (long long)(r0 + r) * rs + ch * 8 : src;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(
                         smem_u32(tile + r * 64 + ((ch ^ (r & 7)) << 3))),
                     "l"(from), "r"(in ? 16 : 0)
                     : "memory");
    }
}

// Rows r0.. of two [T, 64] matrices (keys and values, or queries and output gradients) into
// tiles `a` and `b`, as load_tile_sw128.
template <int ROWS>
__device__ __forceinline__ void load_tiles_sw128(bf16_t* a, const bf16_t* asrc, long long ars,
                                                 bf16_t* b, const bf16_t* bsrc, long long brs,
                                                 int r0, int T) {
    load_tile_sw128<ROWS>(a, asrc, ars, r0, T);
    load_tile_sw128<ROWS>(b, bsrc, brs, r0, T);
}

// Of a two-stage pipeline: commits the copies just issued (the next stage's, or none), waits for
// the current stage's, and makes them visible to the tensor cores (the async proxy) and to every
// thread of the block.
__device__ __forceinline__ void stage_ready() {
    cp_commit();
    cp_wait<1>();
    fence_async_smem();
    __syncthreads();
}
#endif

// The wgmma dk/dv kernel (168 registers) fits three blocks per SM; four spill.
#ifdef WGMMA
#define MINB_DKDV_WG_D64 3
#define MINB_DKDV_OF(D) MINB_DKDV_WG_D##D
#define MINB_DKDV_WG_D128 MINB_DKDV_D128
#else
#define MINB_DKDV_OF(D) MINB_DKDV_D##D
#endif

#ifdef WGMMA
// The forward kernel at D = 64 on sm_90a: as `flash_forward`, but each warp group (64 queries)
// computes its scores and output with wgmma, the key and value tiles read by the tensor cores
// straight from shared memory (no ldmatrix through registers); the query fragments and the
// probabilities are the register A operands.
template <int ROWS>
__device__ void flash_forward_wg(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o,
                                 float* lse2, int H, int G, int T, long long qsb, long long qsh,
                                 long long qst, long long ksb, long long ksh, long long kst,
                                 long long vsb, long long vsh, long long vst, long long osb,
                                 long long osh, long long ost, float scale2, int causal) {
    constexpr int D = 64, TILE = BLOCK * D;
    static_assert(ROWS % 64 == 0, "warp groups of 64 queries");
    // Two stages of a key and a value tile and the block's queries, 128-byte swizzled.
    __shared__ __align__(1024) bf16_t sm[4 * TILE + ROWS * D];
    bf16_t* qs = sm + 4 * TILE;
    auto ks = [&](int st) { return sm + st * TILE; };
    auto vs = [&](int st) { return sm + (2 + st) * TILE; };
    const int b = blockIdx.z, h = blockIdx.y;
    const int nq = (T + ROWS - 1) / ROWS;
    const int qblk = nq - 1 - blockIdx.x;  // the longest causal rows first
    const int q0 = qblk * ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
    q += b * qsb + h * qsh;
    k += b * ksb + h / G * ksh;
    v += b * vsb + h / G * vsh;
    const long long bh = (long long)b * H + h;
    const int w0 = q0 + warp * 16;          // the warp's first query
    const int wg0 = q0 + (warp >> 2) * 64;  // its warp group's

    // The group's queries: the A operand of its score products, from shared memory.
    const bf16_t* qg = qs + (warp >> 2) * 64 * D;

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    const int row0 = w0 + g;
    int nk = (T + BLOCK - 1) / BLOCK;
    if (causal && (q0 + ROWS - 1) / BLOCK + 1 < nk) nk = (q0 + ROWS - 1) / BLOCK + 1;

    load_tile_sw128<ROWS>(qs, q, qst, q0, T);
    load_tiles_sw128<BLOCK>(ks(0), k, kst, vs(0), v, vst, 0, T);
    cp_commit();
    for (int kb = 0; kb < nk; ++kb) {
        const int k0 = kb * BLOCK, cur = kb & 1;
        if (kb + 1 < nk)
            load_tiles_sw128<BLOCK>(ks(cur ^ 1), k, kst, vs(cur ^ 1), v, vst, k0 + BLOCK, T);
        stage_ready();
        // A tile after all of the group's rows adds nothing (wgmma is issued by whole groups).
        if (!causal || k0 <= wg0 + 63) {
            float s[BLOCK / 8][4];
            wg_fence();
            wg_scores(s, qg, ks(cur));
            wg_commit();
            wg_wait<0>();
            pin<BLOCK / 8>(s);
            if (k0 + BLOCK > T || (causal && k0 + BLOCK - 1 > w0))
                hide<BLOCK / 8>(s, row0, k0, T, causal);
            online_softmax<BLOCK / 8, D>(s, m, l, acc, scale2);
            wg_accumulate<true>(acc, s, vs(cur));
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }
    finish_forward<D>(lse2 + bh * T, o + b * osb + h * osh, ost, acc, m, l, row0, T);
}
#endif

// The forward kernel of head dim D: wgmma's at D = 64 where compiled for sm_90a.
template <int D, int ROWS>
__device__ __forceinline__ void forward_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                               bf16_t* o, float* lse2, int H, int G, int T,
                                               long long qsb, long long qsh, long long qst,
                                               long long ksb, long long ksh, long long kst,
                                               long long vsb, long long vsh, long long vst,
                                               long long osb, long long osh, long long ost,
                                               float scale2, int causal) {
#ifdef WGMMA
    if constexpr (D == 64) {
        flash_forward_wg<ROWS>(q, k, v, o, lse2, H, G, T, qsb, qsh, qst, ksb, ksh, kst, vsb, vsh,
                               vst, osb, osh, ost, scale2, causal);
    } else
#endif
    {
        flash_forward<D, ROWS>(q, k, v, o, lse2, H, G, T, qsb, qsh, qst, ksb, ksh, kst, vsb, vsh,
                               vst, osb, osh, ost, scale2, causal);
    }
}

#ifdef WGMMA
// The dq kernel at D = 64 on sm_90a: as `flash_backward_dq`, with the scores and the
// probabilities' gradient (q and dO against the key and value tiles) and dq's update (dS
// against the key tile) as wgmma products; queries and output gradients stay in shared memory.
template <int ROWS>
__device__ void flash_backward_dq_wg(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                     const bf16_t* o, const bf16_t* dout, const float* lse2,
                                     float* dsum, bf16_t* dq, int H, int G, int T, long long qsb,
                                     long long qsh, long long qst, long long ksb, long long ksh,
                                     long long kst, long long vsb, long long vsh, long long vst,
                                     long long dsb, long long dsh, long long dst, long long osb,
                                     long long osh, long long ost, long long gsb, long long gsh,
                                     long long gst, float scale2, float scale, int causal) {
    constexpr int D = 64, TILE = BLOCK * D;
    static_assert(ROWS % 64 == 0, "warp groups of 64 queries");
    // Two stages of a key and a value tile, the block's queries and output gradients.
    __shared__ __align__(1024) bf16_t sm[4 * TILE + 2 * ROWS * D];
    bf16_t* qs = sm + 4 * TILE;
    bf16_t* dos = qs + ROWS * D;
    auto ks = [&](int st) { return sm + st * TILE; };
    auto vs = [&](int st) { return sm + (2 + st) * TILE; };
    const int b = blockIdx.z, h = blockIdx.y;
    const int nq = (T + ROWS - 1) / ROWS;
    const int qblk = nq - 1 - blockIdx.x;
    const int q0 = qblk * ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    q += b * qsb + h * qsh;
    k += b * ksb + h / G * ksh;
    v += b * vsb + h / G * vsh;
    dout += b * dsb + h * dsh;
    const long long bh = (long long)b * H + h;
    o += b * osb + h * osh;
    const int w0 = q0 + warp * 16;
    const int wg0 = q0 + (warp >> 2) * 64;
    const int row0 = w0 + g;
    const bf16_t* qg = qs + (warp >> 2) * 64 * D;
    const bf16_t* dg = dos + (warp >> 2) * 64 * D;

    load_tile_sw128<ROWS>(qs, q, qst, q0, T);
    load_tile_sw128<ROWS>(dos, dout, dst, q0, T);
    cp_commit();
    int nk = (T + BLOCK - 1) / BLOCK;
    if (causal && (q0 + ROWS - 1) / BLOCK + 1 < nk) nk = (q0 + ROWS - 1) / BLOCK + 1;
    load_tiles_sw128<BLOCK>(ks(0), k, kst, vs(0), v, vst, 0, T);
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    // dsum for the lane's two rows: a quarter of the row (16-byte chunks 2t and 2t+1) per lane.
    float ds_row[2], lse_row[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r, rl = row - q0;
        float sum = 0.0f;
        if (row < T) {
#pragma unroll
            for (int c2 = 0; c2 < 2; ++c2) {
                const int ch = 2 * t + c2;
                const uint4 ov = *reinterpret_cast<const uint4*>(o + (long long)row * ost + ch * 8);
                const uint4 dv =
                    *reinterpret_cast<const uint4*>(dos + rl * 64 + ((ch ^ (rl & 7)) << 3));
                sum += lo_of(ov.x) * lo_of(dv.x) + hi_of(ov.x) * hi_of(dv.x);
                sum += lo_of(ov.y) * lo_of(dv.y) + hi_of(ov.y) * hi_of(dv.y);
                sum += lo_of(ov.z) * lo_of(dv.z) + hi_of(ov.z) * hi_of(dv.z);
                sum += lo_of(ov.w) * lo_of(dv.w) + hi_of(ov.w) * hi_of(dv.w);
            }
        }
        ds_row[r] = quad_sum(sum);
        lse_row[r] = row < T ? lse2[bh * T + row] : 0.0f;
        if (t == 0 && row < T) dsum[bh * T + row] = ds_row[r];
    }

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int kb = 0; kb < nk; ++kb) {
        const int k0 = kb * BLOCK, cur = kb & 1;
        if (kb + 1 < nk)
            load_tiles_sw128<BLOCK>(ks(cur ^ 1), k, kst, vs(cur ^ 1), v, vst, k0 + BLOCK, T);
        stage_ready();
        if (!causal || k0 <= wg0 + 63) {
            float p[BLOCK / 8][4], dp[BLOCK / 8][4];
            wg_fence();
            wg_scores(p, qg, ks(cur));
            wg_scores(dp, dg, vs(cur));
            wg_commit();
            wg_wait<0>();
            pin<BLOCK / 8>(p);
            pin<BLOCK / 8>(dp);
            // Rows past T have zero gradients: only keys past T or across the diagonal matter.
            if (k0 + BLOCK > T || (causal && k0 + BLOCK - 1 > w0))
                hide<BLOCK / 8>(p, row0, k0, T, causal);
#pragma unroll
            for (int j = 0; j < BLOCK / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = e >> 1;
                    p[j][e] = ex2(fmaf(p[j][e], scale2, -lse_row[r])) * (dp[j][e] - ds_row[r]);
                }
            wg_accumulate<true>(acc, p, ks(cur));
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }
    const float mul[2] = {scale, scale};
    store_rows<D>(dq + b * gsb + h * gsh, gst, acc, row0, T, mul);
}
#endif

// The dq kernel of head dim D: wgmma's at D = 64 where compiled for sm_90a.
template <int D, int ROWS>
__device__ __forceinline__ void dq_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                          const bf16_t* o, const bf16_t* dout, const float* lse2,
                                          float* dsum, bf16_t* dq, int H, int G, int T,
                                          long long qsb, long long qsh, long long qst,
                                          long long ksb, long long ksh, long long kst,
                                          long long vsb, long long vsh, long long vst,
                                          long long dsb, long long dsh, long long dst,
                                          long long osb, long long osh, long long ost,
                                          long long gsb, long long gsh, long long gst,
                                          float scale2, float scale, int causal) {
#ifdef WGMMA
    if constexpr (D == 64) {
        flash_backward_dq_wg<ROWS>(q, k, v, o, dout, lse2, dsum, dq, H, G, T, qsb, qsh, qst, ksb,
                                   ksh, kst, vsb, vsh, vst, dsb, dsh, dst, osb, osh, ost, gsb, gsh,
                                   gst, scale2, scale, causal);
    } else
#endif
    {
        flash_backward_dq<D, ROWS>(q, k, v, o, dout, lse2, dsum, dq, H, G, T, qsb, qsh, qst, ksb,
                                   ksh, kst, vsb, vsh, vst, dsb, dsh, dst, osb, osh, ost, gsb, gsh,
                                   gst, scale2, scale, causal);
    }
}

#ifdef WGMMA
// The dk/dv kernel at D = 64 on sm_90a: as `flash_backward_dkdv`, one warp group per 64 keys,
// each query tile whole (no chunks: wgmma's accumulators are the registers' main use) with Sᵀ
// and dPᵀ (the key and value tiles against q and dO) and the dV and dK updates (Pᵀ and dSᵀ
// against dO and q) as wgmma products. The rows' statistics are read from global memory (L1):
// the six tiles fill the 48 KB of static shared memory.
template <int ROWS>
__device__ void flash_backward_dkdv_wg(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                       const bf16_t* dout, const float* lse2, const float* dsum,
                                       bf16_t* dk, bf16_t* dv, int H, int G, int T, long long qsb,
                                       long long qsh, long long qst, long long ksb, long long ksh,
                                       long long kst, long long vsb, long long vsh, long long vst,
                                       long long dsb, long long dsh, long long dst, long long gsb,
                                       long long gsh, long long gst, float scale2, float scale,
                                       int causal) {
    constexpr int D = 64, TILE = BLOCK * D;
    static_assert(ROWS == 64, "one warp group of 64 keys");
    __shared__ __align__(1024) bf16_t sm[6 * TILE];
    const bf16_t* kt = sm;
    const bf16_t* vt = sm + TILE;
    auto qs = [&](int st) { return sm + (2 + st) * TILE; };
    auto os = [&](int st) { return sm + (4 + st) * TILE; };
    const int b = blockIdx.z, h = blockIdx.y;
    const int k0 = blockIdx.x * ROWS;  // key block 0 sees every query: the longest first
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    q += b * qsb + h * qsh;
    k += b * ksb + h / G * ksh;
    v += b * vsb + h / G * vsh;
    dout += b * dsb + h * dsh;
    const long long bh = (long long)b * H + h;
    lse2 += bh * T;
    dsum += bh * T;
    const int key0 = k0 + warp * 16 + g;

    load_tile_sw128<ROWS>(sm, k, kst, k0, T);
    load_tile_sw128<ROWS>(sm + TILE, v, vst, k0, T);
    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.0f;

    const int first = causal ? k0 : 0;
    const int n = (T - first + BLOCK - 1) / BLOCK;
    auto issue = [&](int i0, int st) {
        load_tiles_sw128<BLOCK>(qs(st), q, qst, os(st), dout, dst, i0, T);
    };
    issue(first, 0);
    cp_commit();
    for (int it = 0; it < n; ++it) {
        const int i0 = first + it * BLOCK, cur = it & 1;
        if (it + 1 < n) issue(i0 + BLOCK, cur ^ 1);
        stage_ready();
        // Pᵀ and dPᵀ: rows are the group's keys, columns the tile's queries.
        float p[BLOCK / 8][4], dp[BLOCK / 8][4];
        wg_fence();
        wg_scores(p, kt, qs(cur));
        wg_scores(dp, vt, os(cur));
        wg_commit();
        wg_wait<0>();
        pin<BLOCK / 8>(p);
        pin<BLOCK / 8>(dp);
        if (i0 + BLOCK > T || k0 + ROWS > T || (causal && k0 + warp * 16 + 15 > i0))
            hide<BLOCK / 8, true>(p, key0, i0, T, causal);
#pragma unroll
        for (int j = 0; j < BLOCK / 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int i = i0 + j * 8 + 2 * t + e;
                const float ls = i < T ? __ldg(lse2 + i) : 0.0f;
                p[j][e] = ex2(fmaf(p[j][e], scale2, -ls));
                p[j][e + 2] = ex2(fmaf(p[j][e + 2], scale2, -ls));
            }
        wg_accumulate<false>(dva, p, os(cur));
        // dSᵀ while the tensor cores take dV's products.
#pragma unroll
        for (int j = 0; j < BLOCK / 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int i = i0 + j * 8 + 2 * t + e;
                const float ds = i < T ? __ldg(dsum + i) : 0.0f;
                p[j][e] *= dp[j][e] - ds;
                p[j][e + 2] *= dp[j][e + 2] - ds;
            }
        wg_accumulate<false>(dka, p, qs(cur));
        wg_wait<0>();
        pin<D / 8>(dva);
        pin<D / 8>(dka);
        __syncthreads();  // every warp is done with this stage before it is refilled
    }
    const float one[2] = {1.0f, 1.0f}, mul[2] = {scale, scale};
    store_rows<D>(dk + b * gsb + h * gsh, gst, dka, key0, T, mul);
    store_rows<D>(dv + b * gsb + h * gsh, gst, dva, key0, T, one);
}
#endif

// The dk/dv kernel of head dim D: wgmma's at D = 64 where compiled for sm_90a.
template <int D, int ROWS>
__device__ __forceinline__ void dkdv_kernel(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                            const bf16_t* dout, const float* lse2,
                                            const float* dsum, bf16_t* dk, bf16_t* dv, int H,
                                            int G, int T, long long qsb, long long qsh,
                                            long long qst, long long ksb, long long ksh,
                                            long long kst, long long vsb, long long vsh,
                                            long long vst, long long dsb, long long dsh,
                                            long long dst, long long gsb, long long gsh,
                                            long long gst, float scale2, float scale, int causal) {
#ifdef WGMMA
    if constexpr (D == 64) {
        flash_backward_dkdv_wg<ROWS>(q, k, v, dout, lse2, dsum, dk, dv, H, G, T, qsb, qsh, qst,
                                     ksb, ksh, kst, vsb, vsh, vst, dsb, dsh, dst, gsb, gsh, gst,
                                     scale2, scale, causal);
    } else
#endif
    {
        flash_backward_dkdv<D, ROWS>(q, k, v, dout, lse2, dsum, dk, dv, H, G, T, qsb, qsh, qst,
                                     ksb, ksh, kst, vsb, vsh, vst, dsb, dsh, dst, gsb, gsh, gst,
                                     scale2, scale, causal);
    }
}

#define FLASH(D)                                                                                  \
    extern "C" __global__ void __launch_bounds__(2 * ROWS_FWD_D##D, MINB_FWD_D##D)               \
        flash_forward_d##D(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o,          \
                           float* lse2, int H, int G, int T, long long qsb, long long qsh,        \
                           long long qst, long long ksb, long long ksh, long long kst,            \
                           long long vsb, long long vsh, long long vst, long long osb,            \
                           long long osh, long long ost, float scale2, int causal) {              \
        forward_kernel<D, ROWS_FWD_D##D>(q, k, v, o, lse2, H, G, T, qsb, qsh, qst, ksb, ksh, kst, \
                                        vsb, vsh, vst, osb, osh, ost, scale2, causal);            \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(2 * ROWS_DQ_D##D, MINB_DQ_D##D)                 \
        flash_backward_dq_d##D(const bf16_t* q, const bf16_t* k, const bf16_t* v,                 \
                               const bf16_t* o, const bf16_t* dout, const float* lse2,            \
                               float* dsum, bf16_t* dq, int H, int G, int T, long long qsb,       \
                               long long qsh, long long qst, long long ksb, long long ksh,        \
                               long long kst, long long vsb, long long vsh, long long vst,        \
                               long long dsb, long long dsh, long long dst, long long osb,        \
                               long long osh, long long ost, long long gsb, long long gsh,        \
                               long long gst, float scale2, float scale, int causal) {            \
        dq_kernel<D, ROWS_DQ_D##D>(q, k, v, o, dout, lse2, dsum, dq, H, G, T, qsb, qsh,           \
                                           qst, ksb, ksh, kst, vsb, vsh, vst, dsb, dsh, dst, osb, \
                                           osh, ost, gsb, gsh, gst, scale2, scale, causal);       \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(2 * ROWS_DKDV_D##D, MINB_DKDV_OF(D))               \
        flash_backward_dkdv_d##D(const bf16_t* q, const bf16_t* k, const bf16_t* v,               \
                                 const bf16_t* dout, const float* lse2, const float* dsum,        \
                                 bf16_t* dk, bf16_t* dv, int H, int G, int T, long long qsb,      \
                                 long long qsh, long long qst, long long ksb, long long ksh,      \
                                 long long kst, long long vsb, long long vsh, long long vst,      \
                                 long long dsb, long long dsh, long long dst, long long gsb,      \
                                 long long gsh, long long gst, float scale2, float scale,         \
                                 int causal) {                                                    \
        dkdv_kernel<D, ROWS_DKDV_D##D>(q, k, v, dout, lse2, dsum, dk, dv, H, G, T, qsb,           \
                                               qsh, qst, ksb, ksh, kst, vsb, vsh, vst, dsb, dsh,  \
                                               dst, gsb, gsh, gst, scale2, scale, causal);        \
    }

FLASH(64)
FLASH(128)
