// The pre-norm SwiGLU feed-forward sublayer of one decoded row in one kernel:
//   h = x + δ                 (the attention's residual update; f32 stream, bf16 δ)
//   a = rms_norm(h) · γ       (bf16)
//   [g | u] = a · W_gu        (the stacked gate/up product, out-major: gemv.cu's form)
//   s = silu(g) · u           (bf16)
//   y = s · W_down            (out-major, long rows split over warps as gemv.cu splits them)
// with `h` and `y` (the block's update, left to the next norm) written out. Appended to kernels.cu
// and gemv.cu (their helpers) before NVRTC compiles them.
//
// Why one kernel: separately these are four kernels (add-and-norm, two one-row products, SwiGLU),
// 41 µs at `1b` in isolation on an H200 under ncu against 14 µs of weight bytes: the products
// ran in waves of one row per warp, each wave's loads drained before the next was issued (35-54 %
// of the bandwidth), and each kernel paid its launch. Here one persistent grid (every block
// resident: at most the blocks the device holds at once) runs the whole sublayer: each block
// computes the norm itself (the row is 8-12 KB, read from L2), keeps it in shared memory and
// streams its share of the gate/up rows, each warp keeping two rows in flight and a third
// prefetched into L2; one grid-wide barrier; each block builds `s` in shared memory from the gate/up
// outputs and streams its share of the down rows the same way. The first loads of each product
// are issued before waiting (for the kernel ahead, then at the barrier): weights are constants of
// a decode step. Every number is computed with the arithmetic and order of the separate kernels
// (the norm's sum over a virtual block of `norm_threads`, the products' per-lane sums and span
// order, SwiGLU's rounding), so the bits are theirs.
//
// Grid: at most the co-resident blocks of DFFN_THREADS threads (the launcher asks the occupancy).
// `norm_threads` at most DFFN_VIRTUAL * DFFN_THREADS.
// `dim`, `hidden` multiples of 8 and at most DFFN_MAX_COLS; weights and rows 16-byte aligned.

#define DFFN_THREADS 512
#define DFFN_WARPS (DFFN_THREADS / 32)
// Most columns of either product (bf16 elements of the shared row: 32 KB).
#define DFFN_MAX_COLS 16384
// The norm runs over a virtual block of up to DFFN_VIRTUAL * DFFN_THREADS threads (the separate
// kernel's block for rows of up to 8,192 columns).
#define DFFN_VIRTUAL 2

// The grid-wide barrier's arrival count and generation. Self-resetting (the last block to arrive
// zeroes the count before bumping the generation), so each launch starts from zero; launches on
// one device must not overlap (decoding runs them in stream order).
__device__ unsigned int dffn_barrier[2];

__device__ __forceinline__ unsigned int dffn_load_acquire(const unsigned int* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    unsigned int v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#else
    return *(const volatile unsigned int*)p;
#endif
}

// All blocks of the grid arrive before any leaves; writes before it are visible after it.
__device__ void dffn_grid_barrier() {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int gen = dffn_load_acquire(dffn_barrier + 1);
        __threadfence();
        if (atomicAdd(dffn_barrier, 1u) == gridDim.x - 1) {
            atomicExch(dffn_barrier, 0u);
            __threadfence();
            atomicAdd(dffn_barrier + 1, 1u);
        } else {
            while (dffn_load_acquire(dffn_barrier + 1) == gen) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
                __nanosleep(32);
#endif
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// 16 bytes of data written by other blocks of this launch: through L2 (not a stale L1 line).
__device__ __forceinline__ uint4 dffn_load_cg(const bf16_t* p) {
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// The split of one product's outputs over the grid: `parts` consecutive warps per output (the
// span of each as in gemv, at most GEMV_COLS columns: one pass of loads), DFFN_WARPS / parts
// outputs per block per round.
struct DffnSplit {
    int parts, per_block, slot, part, lo, hi;
    __device__ DffnSplit(int k, int parts_) : parts(parts_) {
        const int warp = threadIdx.x >> 5;
        per_block = DFFN_WARPS / parts;
        slot = warp / parts;
        part = warp % parts;
        const int span = ((k + parts - 1) / parts + 7) & ~7;
        lo = min(k, part * span);
        hi = min(k, lo + span);
    }
    // This warp's output in the round starting at `first`, or -1.
    __device__ int col(int first, int n) const {
        const int c = first + slot;
        return slot < per_block && c < n ? c : -1;
    }
    __device__ int first_round() const { return blockIdx.x * per_block; }
    __device__ int stride() const { return gridDim.x * per_block; }
};

// This warp's first loads of its span of row `col` (zeros for -1).
__device__ __forceinline__ void dffn_load(const bf16_t* wt, long long ldw, int col,
                                          const DffnSplit& s, uint4* wv) {
    const bf16_t* wr = wt + (long long)max(col, 0) * ldw;
    gemv_load(wr, s.lo + (threadIdx.x & 31) * 8, col >= 0 ? s.hi : s.lo, wv);
}

// Prefetches this warp's span of row `col` into L2 (one 128-byte line per lane and step).
__device__ __forceinline__ void dffn_prefetch(const bf16_t* wt, long long ldw, int col,
                                              const DffnSplit& s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (col < 0) return;
    const bf16_t* wr = wt + (long long)col * ldw;
    for (int kk = s.lo + (threadIdx.x & 31) * 64; kk < s.hi; kk += 32 * 64)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + kk));
#endif
}

// Sums one round's row `col` (loaded in `wv`) and stores it.
__device__ __forceinline__ void dffn_finish(const bf16_t* xs, const bf16_t* wt, bf16_t* y,
                                            long long ldw, int col, const DffnSplit& s,
                                            float* partial, uint4* wv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float acc = 0.0f;
    if (col >= 0) acc = gemv_span(xs, wt + (long long)col * ldw, s.lo, s.hi, wv);
    acc = warp_sum(acc);
    if (s.parts == 1) {
        if (col >= 0 && lane == 0) store(y, col, acc);
        return;
    }
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (col >= 0 && s.part == 0 && lane == 0) {
        float t = 0.0f;
        for (int p = 0; p < s.parts; ++p) t += partial[warp + p];
        store(y, col, t);
    }
    __syncthreads();
}

// y[col] = xs · wt[col, :] for this block's outputs (xs in shared memory), `a` holding the first
// round's loads. Two rounds' rows are in flight per warp at any time (the registers `a` and `b`
// in turn: the next round's loads go out before the current round is summed), and the one after
// them is prefetched into L2: one-row products in waves drain the memory between waves
// (gemv_bf16 reached 35-54 % of the bandwidth at 23-46 MB).
__device__ __forceinline__ void dffn_product(const bf16_t* xs, const bf16_t* wt, bf16_t* y,
                                             int n, long long ldw, const DffnSplit& s,
                                             float* partial, uint4* a) {
    const int stride = s.stride();
    uint4 b[GEMV_UNROLL];
    for (int first = s.first_round(); first < n; first += 2 * stride) {
        dffn_load(wt, ldw, s.col(first + stride, n), s, b);
        dffn_prefetch(wt, ldw, s.col(first + 2 * stride, n), s);
        dffn_finish(xs, wt, y, ldw, s.col(first, n), s, partial, a);
        if (first + stride >= n) break;  // the same for the whole block
        dffn_load(wt, ldw, s.col(first + 2 * stride, n), s, a);
        dffn_prefetch(wt, ldw, s.col(first + 3 * stride, n), s);
        dffn_finish(xs, wt, y, ldw, s.col(first + stride, n), s, partial, b);
    }
}

extern "C" __global__ void __launch_bounds__(DFFN_THREADS, 1)
    decode_ffn_bf16(const float* x, const bf16_t* delta, const float* gamma, const bf16_t* w_gu,
                    long long ldw_gu, const bf16_t* w_down, long long ldw_down, float* h,
                    bf16_t* gu, bf16_t* y, int dim, int hidden, float eps, int norm_threads,
                    int parts_gu, int parts_down) {
    __shared__ __align__(16) bf16_t row[DFFN_MAX_COLS];
    __shared__ float partial[32 + 1];
    const DffnSplit up(dim, parts_gu), down(hidden, parts_down);
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;

    // Weights first: they do not depend on the kernel ahead.
    uint4 wv[GEMV_UNROLL];
    dffn_load(w_gu, ldw_gu, up.col(up.first_round(), 2 * hidden), up, wv);
    pdl_wait();

    // h = x + δ and its norm with add_rms_norm's arithmetic: thread t + i·DFFN_THREADS of a
    // virtual block of `norm_threads`, its warps' sums added as block_sum adds them (the
    // virtual warps past the block add zeros, as block_sum pads).
    float v[DFFN_VIRTUAL][RMS_COLS];
#pragma unroll
    for (int i = 0; i < DFFN_VIRTUAL; ++i) {
        const int vt = t + i * DFFN_THREADS;
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < RMS_COLS; ++k) {
            const int j = vt + k * norm_threads;
            const bool in = vt < norm_threads && j < dim;
            v[i][k] = in ? x[j] + load(delta, j) : 0.0f;
            if (in && blockIdx.x == 0) h[j] = v[i][k];
            ss += v[i][k] * v[i][k];
        }
        ss = warp_sum(ss);
        if (lane == 0) partial[warp + i * DFFN_WARPS] = ss;
    }
    __syncthreads();
    if (warp == 0) {
        const float s = warp_sum(partial[lane]);
        if (lane == 0) partial[32] = s;
    }
    __syncthreads();
    const float rr = rsqrtf(partial[32] / dim + eps);
#pragma unroll
    for (int i = 0; i < DFFN_VIRTUAL; ++i) {
        const int vt = t + i * DFFN_THREADS;
#pragma unroll
        for (int k = 0; k < RMS_COLS; ++k) {
            const int j = vt + k * norm_threads;
            if (vt < norm_threads && j < dim) store(row, j, v[i][k] * rr * gamma[j]);
        }
    }
    __syncthreads();

    dffn_product(row, w_gu, gu, 2 * hidden, ldw_gu, up, partial, wv);
    // The down product's first loads go out before the barrier (its weights are constants too).
    dffn_load(w_down, ldw_down, down.col(down.first_round(), dim), down, wv);
    dffn_grid_barrier();
    pdl_trigger();

    // s = silu(g) · u, rounded to bf16 as the SwiGLU kernel stores it.
    for (int j = 8 * t; j < hidden; j += 8 * DFFN_THREADS) {
        float g[8], u[8];
        unpack8(dffn_load_cg(gu + j), g);
        unpack8(dffn_load_cg(gu + hidden + j), u);
#pragma unroll
        for (int i = 0; i < 8; ++i) store(row, j + i, silu_mul(g[i], u[i]));
    }
    __syncthreads();

    dffn_product(row, w_down, y, dim, ldw_down, down, partial, wv);
}
