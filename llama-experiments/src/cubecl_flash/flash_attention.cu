// Flash attention (FlashAttention-2's algorithm) for bf16 tensors on tensor cores, forward and
// backward, for CubeCL's CUDA backend (see mod.rs for why and how they are launched). Compiled at
// run time by NVRTC for sm_80 or later, so the source includes no header: the tensor-core
// instructions (mma.sync m16n8k16, ldmatrix) are written as inline PTX. The compiled source is
// this file followed by flash_attention_sm90.cu (Hopper's wgmma kernels and the entry points).
//
// Layout: q, k, v, o and the output's gradient are [B, H, T, D] with any batch, head and row
// strides (in elements, multiples of 8) and contiguous rows, except that k and v may have H / G
// heads (grouped-query attention: query head h reads key/value head h / G in place; dk and dv are
// still one per query head, [B, H, T, D]). o, dq, dk and dv are written through their strides
// (the launcher allocates them time-major), `lse2` and `dsum` contiguous. Scores, softmax
// statistics and accumulators are f32; the probabilities enter the products rounded to bf16, as
// in FlashAttention-2. `lse2` is each query row's log-sum-exp in base 2 of the scaled scores
// (`scale2 = log2(e) / sqrt(D)`), which the backward pass uses to recompute the
// probabilities; `dsum` is the softmax backward's row term Σ_d dO·O.
//
// A warp owns 16 rows (queries in the forward and dq kernels, keys in the dk/dv kernel) and walks
// the other side's 64-row tiles through shared memory; a block is ROWS_<KERNEL>_D<D> / 16 warps
// (the launcher reads those defines: grid T / rows, 2·rows threads). Fragments follow PTX's
// m16n8k16 layout: lane = 4·g + t holds rows g and g+8, columns 2t and 2t+1 of each 8-wide tile.

typedef unsigned short bf16_t;

#define NEG_INF __int_as_float(0xff800000)
// Shared-memory rows are padded by 8 elements (16 bytes) so that ldmatrix's eight row addresses
// fall in different banks.
#define PAD 8

// A shared-memory pointer as ldmatrix and cp.async take it. The builtin (not a cvta in inline
// PTX) lets the compiler fold each fragment's constant offset into the instruction's address.
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldsm4(unsigned* r, const bf16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldsm4t(unsigned* r, const bf16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// c (16x8, f32) += a (16x16, bf16, row-major) · b (16x8, bf16, column-major).
__device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 rounded to nearest even into one bf16 pair, `lo` in the low half.
__device__ __forceinline__ unsigned pack(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float lo_of(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi_of(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

// The A fragment (16x16) at rows r0.., columns c0.. of a shared tile with row stride `s`.
__device__ __forceinline__ void frag_a(unsigned* a, const bf16_t* tile, int s, int r0, int c0) {
    const int l = threadIdx.x & 31, i = l >> 3, r = l & 7;
    ldsm4(a, tile + (r0 + (i & 1) * 8 + r) * s + c0 + (i >> 1) * 8);
}

// B fragments (16x8) of the two n-tiles n0 and n0+8 over k0..k0+15, from a tile stored [n][k]:
// b[0], b[1] for n0 and b[2], b[3] for n0+8.
__device__ __forceinline__ void frag_b_nk(unsigned* b, const bf16_t* tile, int s, int n0, int k0) {
    const int l = threadIdx.x & 31, i = l >> 3, r = l & 7;
    ldsm4(b, tile + (n0 + (i >> 1) * 8 + r) * s + k0 + (i & 1) * 8);
}

// The same from a tile stored [k][n] (transposed on the way out of shared memory).
__device__ __forceinline__ void frag_b_kn(unsigned* b, const bf16_t* tile, int s, int k0, int n0) {
    const int l = threadIdx.x & 31, i = l >> 3, r = l & 7;
    ldsm4t(b, tile + (k0 + (i & 1) * 8 + r) * s + n0 + (i >> 1) * 8);
}

// The A fragment of k-step kk from an accumulator in C layout (two 8-wide tiles per 16 columns).
__device__ __forceinline__ void frag_from_c(unsigned* a, const float (*c)[4], int kk) {
    a[0] = pack(c[2 * kk][0], c[2 * kk][1]);
    a[1] = pack(c[2 * kk][2], c[2 * kk][3]);
    a[2] = pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// Rows r0..r0+ROWS-1 of a [T, D] matrix (row stride `rs` elements) into a shared tile with row
// stride D+PAD, zeros past T. 16-byte loads: rows start 16-byte aligned (checked by the launcher).
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(bf16_t* tile, const bf16_t* src, long long rs, int r0,
                                          int T) {
    constexpr int CH = D / 8;
    for (int c = threadIdx.x; c < ROWS * CH; c += blockDim.x) {
        const int r = c / CH, col = (c % CH) * 8;
        uint4 v = {0u, 0u, 0u, 0u};
        if (r0 + r < T) v = *reinterpret_cast<const uint4*>(src + (long long)(r0 + r) * rs + col);
        *reinterpret_cast<uint4*>(tile + r * (D + PAD) + col) = v;
    }
}

// The same through cp.async (Ampere and later): the copies run while the warps compute on the
// other stage; rows past T are zero-filled (a source size of 0 reads nothing).
template <int D, int ROWS>
__device__ __forceinline__ void load_tile_async(bf16_t* tile, const bf16_t* src, long long rs,
                                                int r0, int T) {
    constexpr int CH = D / 8;
    for (int c = threadIdx.x; c < ROWS * CH; c += blockDim.x) {
        const int r = c / CH, col = (c % CH) * 8;
        const bool in = r0 + r < T;
        const bf16_t* from = in ? src + (long long)(r0 + r) * rs + col : src;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(
                         smem_u32(tile + r * (D + PAD) + col)),
                     "l"(from), "r"(in ? 16 : 0)
                     : "memory");
    }
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Copy stages: two (the next tiles load while the warps compute on these) where they fit the
// 48 KB of static shared memory, one for D = 128.
template <int D>
struct Stages {
    static constexpr int N = D <= 64 ? 2 : 1;
};

// s (16 x 8·NT, C layout) = a (16 x D, A fragments) · tileᵀ, the tile stored [n][D].
template <int D, int NT>
__device__ __forceinline__ void scores(float (*s)[4], const unsigned (*a)[4], const bf16_t* tile) {
#pragma unroll
    for (int j = 0; j < NT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            unsigned b[4];
            frag_b_nk(b, tile, D + PAD, np * 16, kk * 16);
            mma(s[2 * np], a[kk], b[0], b[1]);
            mma(s[2 * np + 1], a[kk], b[2], b[3]);
        }
    }
}

// acc (16 x D, C layout) += p (16 x 16·KS, C layout, rounded to bf16) · tile, the tile stored [k][D].
template <int D, int KS>
__device__ __forceinline__ void accumulate(float (*acc)[4], const float (*p)[4], const bf16_t* tile) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        unsigned a[4];
        frag_from_c(a, p, kk);
#pragma unroll
        for (int np = 0; np < D / 16; ++np) {
            unsigned b[4];
            frag_b_kn(b, tile, D + PAD, kk * 16, np * 16);
            mma(acc[2 * np], a, b[0], b[1]);
            mma(acc[2 * np + 1], a, b[2], b[3]);
        }
    }
}

// Writes a warp's 16 x D accumulator (rows row0 and row0+8 of this lane) times `mul[r]` as bf16
// rows of a [T, D] matrix with row stride `rs`.
template <int D>
__device__ __forceinline__ void store_rows(bf16_t* dst, long long rs, const float (*acc)[4],
                                           int row0, int T, const float* mul) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        if (row >= T) continue;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<unsigned*>(dst + (long long)row * rs + n * 8 + 2 * t) =
                pack(acc[n][2 * r] * mul[r], acc[n][2 * r + 1] * mul[r]);
    }
}

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// 2^x in one instruction (exp2f adds range checks and scaling around it); ftz: results below
// 2^-126, far below what a softmax's sums can tell from zero, are 0.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// The largest and the sum of row r's (0: the lane's row g, 1: g + 8) elements of a C-layout
// tile, each as a tree: a chain of NT dependent operations would wait on each one's latency.
template <int NT>
__device__ __forceinline__ float row_max(const float (*s)[4], int r) {
    float v[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) v[j] = fmaxf(s[j][2 * r], s[j][2 * r + 1]);
#pragma unroll
    for (int w = NT / 2; w >= 1; w /= 2)
#pragma unroll
        for (int j = 0; j < w; ++j) v[j] = fmaxf(v[j], v[j + w]);
    return v[0];
}
template <int NT>
__device__ __forceinline__ float row_sum(const float (*s)[4], int r) {
    float v[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) v[j] = s[j][2 * r] + s[j][2 * r + 1];
#pragma unroll
    for (int w = NT / 2; w >= 1; w /= 2)
#pragma unroll
        for (int j = 0; j < w; ++j) v[j] += v[j + w];
    return v[0];
}

// Sets to −∞ the scores (rows from row0, columns from col0: queries and keys, or keys and queries
// with KEY_ROWS) of keys past T or, when causal, after the query; queries past T see nothing
// either. Called only for tiles that have such scores, so the index arithmetic is not paid on
// the others.
template <int NT, bool KEY_ROWS = false>
__device__ __forceinline__ void hide(float (*s)[4], int row0, int col0, int T, int causal) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int col = col0 + j * 8 + 2 * t + (e & 1), row = row0 + (e >> 1) * 8;
            const bool after = KEY_ROWS ? row > col : col > row;
            if (col >= T || row >= T || (causal && after)) s[j][e] = NEG_INF;
        }
}

// One key tile of the forward's online softmax for a warp's 16 rows: the running maxima `m`
// (kept scaled: scale2 > 0 keeps the order) and partial sums `l` updated, the accumulator
// rescaled, and the scores `s` turned into the tile's unnormalised probabilities.
template <int NT, int D>
__device__ __forceinline__ void online_softmax(float (*s)[4], float* m, float* l, float (*acc)[4],
                                               float scale2) {
    float base[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float mx = fmaxf(m[r], quad_max(row_max<NT>(s, r)) * scale2);
        // A row with nothing visible yet keeps a zero base (no inf - inf).
        base[r] = mx == NEG_INF ? 0.0f : mx;
        alpha[r] = ex2(m[r] - base[r]);
        m[r] = mx;
    }
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = ex2(fmaf(s[j][e], scale2, -base[e >> 1]));
    // The lanes of a quad keep partial row sums (they scale alike); reduced at the end.
    l[0] = l[0] * alpha[0] + row_sum<NT>(s, 0);
    l[1] = l[1] * alpha[1] + row_sum<NT>(s, 1);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        acc[n][0] *= alpha[0];
        acc[n][1] *= alpha[0];
        acc[n][2] *= alpha[1];
        acc[n][3] *= alpha[1];
    }
}

// The forward's end for a warp's rows row0 and row0 + 8: each row's log-sum-exp (base 2) and
// its output, the accumulator over the row's sum.
template <int D>
__device__ __forceinline__ void finish_forward(float* lse2, bf16_t* o, long long ost,
                                               const float (*acc)[4], float* m, float* l, int row0,
                                               int T) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] = quad_sum(l[r]);
        inv[r] = 1.0f / l[r];
        const int row = row0 + 8 * r;
        if ((threadIdx.x & 3) == 0 && row < T) lse2[row] = m[r] + log2f(l[r]);
    }
    store_rows<D>(o, ost, acc, row0, T, inv);
}


#define BLOCK 64  // rows per tile of the side a block walks
#define CHUNK 16  // queries per step of the dk/dv kernel

// Rows a block owns. 128 for the forward kernel at D = 64: each key and value tile read from L2
// then serves twice the queries (eight warps; faster at the 125m shape on an H200, slower for the
// backward kernels, docs/performance.md attempt 59).
#define ROWS_FWD_D64 128
#define ROWS_DQ_D64 64
#define ROWS_DKDV_D64 64
#define ROWS_FWD_D128 64
#define ROWS_DQ_D128 64
#define ROWS_DKDV_D128 64
// Blocks per SM the registers must allow (__launch_bounds__'s second argument; 0: no bound). At
// D = 64 two 8-warp forward blocks and four dk/dv blocks (128 registers, no spills) ran faster
// than the compiler's own choice; the dq kernel spills under 128.
#define MINB_FWD_D64 2
#define MINB_DQ_D64 0
#define MINB_DKDV_D64 4
#define MINB_FWD_D128 0
#define MINB_DQ_D128 0
#define MINB_DKDV_D128 0

// Shared memory of a kernel: ST stages of two BLOCK-row tiles, also holding the block's own
// ROWS-row tiles while they are read into registers (one at a time).
template <int D, int ROWS, int ST>
struct Smem {
    static constexpr int TILE = BLOCK * (D + PAD);
    static constexpr int N = (2 * ST * BLOCK > ROWS ? 2 * ST * BLOCK : ROWS) * (D + PAD);
};

// Forward: o = softmax(q kᵀ / √D) v and lse2, one block per (64 queries, head, batch entry).
template <int D, int ROWS>
__device__ void flash_forward(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o,
                              float* lse2, int H, int G, int T, long long qsb, long long qsh,
                              long long qst, long long ksb, long long ksh, long long kst,
                              long long vsb, long long vsh, long long vst, long long osb,
                              long long osh, long long ost, float scale2, int causal) {
    constexpr int ST = Stages<D>::N;
    typedef Smem<D, ROWS, ST> SM;
    __shared__ __align__(16) bf16_t sm[SM::N];
    auto ks = [&](int st) { return sm + st * SM::TILE; };
    auto vs = [&](int st) { return sm + (ST + st) * SM::TILE; };
    const int b = blockIdx.z, h = blockIdx.y;
    const int nq = (T + ROWS - 1) / ROWS;
    const int qblk = nq - 1 - blockIdx.x;  // the longest causal rows first
    const int q0 = qblk * ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
    q += b * qsb + h * qsh;
    k += b * ksb + h / G * ksh;
    v += b * vsb + h / G * vsh;
    const long long bh = (long long)b * H + h;
    const int w0 = q0 + warp * 16;  // the warp's first query

    // The warp's query fragments, through the stages' memory.
    load_tile<D, ROWS>(sm, q, qst, q0, T);
    __syncthreads();
    unsigned qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) frag_a(qf[kk], sm, D + PAD, warp * 16, kk * 16);
    __syncthreads();

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    const int row0 = w0 + g;
    int nk = (T + BLOCK - 1) / BLOCK;
    if (causal && (q0 + ROWS - 1) / BLOCK + 1 < nk) nk = (q0 + ROWS - 1) / BLOCK + 1;

    load_tile_async<D, BLOCK>(ks(0), k, kst, 0, T);
    load_tile_async<D, BLOCK>(vs(0), v, vst, 0, T);
    cp_commit();
    for (int kb = 0; kb < nk; ++kb) {
        const int k0 = kb * BLOCK, cur = ST == 2 ? (kb & 1) : 0;
        if (ST == 2) {
            if (kb + 1 < nk) {
                load_tile_async<D, BLOCK>(ks(cur ^ 1), k, kst, k0 + BLOCK, T);
                load_tile_async<D, BLOCK>(vs(cur ^ 1), v, vst, k0 + BLOCK, T);
            }
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        // A tile after all of the warp's rows adds nothing (the block's other warps see some).
        if (!causal || k0 <= w0 + 15) {
        float s[BLOCK / 8][4];
        scores<D, BLOCK / 8>(s, qf, ks(cur));
        // Only tiles past T or across the diagonal (for this warp's rows) hide keys.
        if (k0 + BLOCK > T || (causal && k0 + BLOCK - 1 > w0)) hide<BLOCK / 8>(s, row0, k0, T, causal);
        online_softmax<BLOCK / 8, D>(s, m, l, acc, scale2);
        accumulate<D, BLOCK / 16>(acc, s, vs(cur));
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
        if (ST == 1 && kb + 1 < nk) {
            load_tile_async<D, BLOCK>(ks(0), k, kst, k0 + BLOCK, T);
            load_tile_async<D, BLOCK>(vs(0), v, vst, k0 + BLOCK, T);
            cp_commit();
        }
    }
    finish_forward<D>(lse2 + bh * T, o + b * osb + h * osh, ost, acc, m, l, row0, T);
}


// Backward, first kernel: dsum = Σ_d dO·O per query row and dq = scale · dS k, one block per (64
// queries, head, batch entry). Runs before the dk/dv kernel, which reads dsum.
template <int D, int ROWS>
__device__ void flash_backward_dq(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                  const bf16_t* o, const bf16_t* dout, const float* lse2,
                                  float* dsum, bf16_t* dq, int H, int G, int T, long long qsb,
                                  long long qsh, long long qst, long long ksb, long long ksh,
                                  long long kst, long long vsb, long long vsh, long long vst,
                                  long long dsb, long long dsh, long long dst, long long osb,
                                  long long osh, long long ost, long long gsb, long long gsh,
                                  long long gst, float scale2, float scale, int causal) {
    constexpr int ST = Stages<D>::N;
    typedef Smem<D, ROWS, ST> SM;
    __shared__ __align__(16) bf16_t sm[SM::N];
    auto ks = [&](int st) { return sm + st * SM::TILE; };
    auto vs = [&](int st) { return sm + (ST + st) * SM::TILE; };
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
    const int row0 = w0 + g;

    // The query and output-gradient fragments, one tile at a time through the stages' memory.
    unsigned qf[D / 16][4], df[D / 16][4];
    load_tile<D, ROWS>(sm, q, qst, q0, T);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) frag_a(qf[kk], sm, D + PAD, warp * 16, kk * 16);
    __syncthreads();
    load_tile<D, ROWS>(sm, dout, dst, q0, T);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) frag_a(df[kk], sm, D + PAD, warp * 16, kk * 16);
    // dsum for the lane's two rows: a quarter of the row per lane of the quad.
    float ds_row[2], lse_row[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        float sum = 0.0f;
        if (row < T) {
            const bf16_t* dr = sm + (warp * 16 + g + 8 * r) * (D + PAD);
#pragma unroll
            for (int c = t * (D / 4); c < (t + 1) * (D / 4); c += 8) {
                const uint4 ov = *reinterpret_cast<const uint4*>(o + (long long)row * ost + c);
                const uint4 dv = *reinterpret_cast<const uint4*>(dr + c);
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
    __syncthreads();  // the tiles are in registers: the stages are free

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    int nk = (T + BLOCK - 1) / BLOCK;
    if (causal && (q0 + ROWS - 1) / BLOCK + 1 < nk) nk = (q0 + ROWS - 1) / BLOCK + 1;
    load_tile_async<D, BLOCK>(ks(0), k, kst, 0, T);
    load_tile_async<D, BLOCK>(vs(0), v, vst, 0, T);
    cp_commit();
    for (int kb = 0; kb < nk; ++kb) {
        const int k0 = kb * BLOCK, cur = ST == 2 ? (kb & 1) : 0;
        if (ST == 2) {
            if (kb + 1 < nk) {
                load_tile_async<D, BLOCK>(ks(cur ^ 1), k, kst, k0 + BLOCK, T);
                load_tile_async<D, BLOCK>(vs(cur ^ 1), v, vst, k0 + BLOCK, T);
            }
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        if (!causal || k0 <= w0 + 15) {
        float p[BLOCK / 8][4], dp[BLOCK / 8][4];
        scores<D, BLOCK / 8>(p, qf, ks(cur));
        scores<D, BLOCK / 8>(dp, df, vs(cur));
        // Rows past T have zero gradients, so only keys past T or across the diagonal matter.
        if (k0 + BLOCK > T || (causal && k0 + BLOCK - 1 > w0)) hide<BLOCK / 8>(p, row0, k0, T, causal);
#pragma unroll
        for (int j = 0; j < BLOCK / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                p[j][e] = ex2(fmaf(p[j][e], scale2, -lse_row[r])) * (dp[j][e] - ds_row[r]);
            }
        accumulate<D, BLOCK / 16>(acc, p, ks(cur));
        }
        __syncthreads();
        if (ST == 1 && kb + 1 < nk) {
            load_tile_async<D, BLOCK>(ks(0), k, kst, k0 + BLOCK, T);
            load_tile_async<D, BLOCK>(vs(0), v, vst, k0 + BLOCK, T);
            cp_commit();
        }
    }
    const float mul[2] = {scale, scale};
    store_rows<D>(dq + b * gsb + h * gsh, gst, acc, row0, T, mul);
}


// Backward, second kernel: dk = scale · dSᵀ q and dv = Pᵀ dO, one block per (64 keys, head,
// batch entry), walking the query tiles that see its keys.
template <int D, int ROWS>
__device__ void flash_backward_dkdv(const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                    const bf16_t* dout, const float* lse2, const float* dsum,
                                    bf16_t* dk, bf16_t* dv, int H, int G, int T, long long qsb,
                                    long long qsh, long long qst, long long ksb, long long ksh,
                                    long long kst, long long vsb, long long vsh, long long vst,
                                    long long dsb, long long dsh, long long dst, long long gsb,
                                    long long gsh, long long gst, float scale2, float scale,
                                    int causal) {
    constexpr int ST = Stages<D>::N;
    typedef Smem<D, ROWS, ST> SM;
    __shared__ __align__(16) bf16_t sm[SM::N];
    __shared__ float lse_s[ST][BLOCK], dsum_s[ST][BLOCK];
    auto qs = [&](int st) { return sm + st * SM::TILE; };
    auto os = [&](int st) { return sm + (ST + st) * SM::TILE; };
    const int b = blockIdx.z, h = blockIdx.y;
    const int k0 = blockIdx.x * ROWS;  // key block 0 sees every query: the longest first
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    q += b * qsb + h * qsh;
    k += b * ksb + h / G * ksh;
    v += b * vsb + h / G * vsh;
    dout += b * dsb + h * dsh;
    const long long bh = (long long)b * H + h;
    const int key0 = k0 + warp * 16 + g;

    unsigned kf[D / 16][4], vf[D / 16][4];
    load_tile<D, ROWS>(sm, k, kst, k0, T);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) frag_a(kf[kk], sm, D + PAD, warp * 16, kk * 16);
    __syncthreads();
    load_tile<D, ROWS>(sm, v, vst, k0, T);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) frag_a(vf[kk], sm, D + PAD, warp * 16, kk * 16);
    __syncthreads();
    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.0f;

    const int first = causal ? k0 : 0;
    const int n = (T - first + BLOCK - 1) / BLOCK;
    // One query tile and its rows' statistics into stage `st`.
    auto issue = [&](int i0, int st) {
        load_tile_async<D, BLOCK>(qs(st), q, qst, i0, T);
        load_tile_async<D, BLOCK>(os(st), dout, dst, i0, T);
        if (threadIdx.x < BLOCK) {
            const int i = i0 + threadIdx.x;
            lse_s[st][threadIdx.x] = i < T ? lse2[bh * T + i] : 0.0f;
            dsum_s[st][threadIdx.x] = i < T ? dsum[bh * T + i] : 0.0f;
        }
        cp_commit();
    };
    issue(first, 0);
    for (int it = 0; it < n; ++it) {
        const int i0 = first + it * BLOCK, cur = ST == 2 ? (it & 1) : 0;
        if (ST == 2) {
            if (it + 1 < n) {
                issue(i0 + BLOCK, cur ^ 1);
            } else {
                cp_commit();
            }
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        // 16 queries at a time: the probabilities and their gradient for a chunk take 16
        // registers where a whole tile took 64, and the kernel then fits three blocks per SM
        // (two before; 15 % faster at the 125m shape, docs/performance.md attempt 57).
#pragma unroll
        for (int ch = 0; ch < BLOCK / CHUNK; ++ch) {
            const int c0 = i0 + ch * CHUNK;
            if (causal && c0 + CHUNK - 1 < k0 + warp * 16) continue;  // none sees these keys
            const bf16_t* qt = qs(cur) + ch * CHUNK * (D + PAD);
            const bf16_t* ot = os(cur) + ch * CHUNK * (D + PAD);
            // Pᵀ and dPᵀ: rows are this warp's keys, columns the chunk's queries.
            float p[CHUNK / 8][4], dp[CHUNK / 8][4];
            scores<D, CHUNK / 8>(p, kf, qt);
            scores<D, CHUNK / 8>(dp, vf, ot);
            if (c0 + CHUNK > T || k0 + ROWS > T || (causal && k0 + warp * 16 + 15 > c0))
                hide<CHUNK / 8, true>(p, key0, c0, T, causal);
            const float* ls = lse_s[cur] + ch * CHUNK;
            const float* dss = dsum_s[cur] + ch * CHUNK;
#pragma unroll
            for (int j = 0; j < CHUNK / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    p[j][e] = ex2(fmaf(p[j][e], scale2, -ls[j * 8 + 2 * t + (e & 1)]));
            accumulate<D, CHUNK / 16>(dva, p, ot);
#pragma unroll
            for (int j = 0; j < CHUNK / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) p[j][e] *= dp[j][e] - dss[j * 8 + 2 * t + (e & 1)];
            accumulate<D, CHUNK / 16>(dka, p, qt);
        }
        __syncthreads();
        if (ST == 1 && it + 1 < n) issue(i0 + BLOCK, 0);
    }
    const float one[2] = {1.0f, 1.0f}, mul[2] = {scale, scale};
    store_rows<D>(dk + b * gsb + h * gsh, gst, dka, key0, T, mul);
    store_rows<D>(dv + b * gsb + h * gsh, gst, dva, key0, T, one);
}
