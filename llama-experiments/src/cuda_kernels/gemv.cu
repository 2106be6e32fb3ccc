// Products of one row (decoding's projections at batch 1): y[n] = Σ_k x[k] · wt[n, k], the weight
// stored as [out, in] (each output's weights one contiguous row, as torch's Linear keeps them),
// bf16 in and out, sums in f32. Appended to kernels.cu (its bf16 helpers and warp_sum) before
// NVRTC compiles them.
//
// Why not cuBLAS: at one row a product only streams its weight, and on an H200 torch's
// cuBLAS reached 30–47 % of the memory bandwidth on the 2,048-wide projections of the `1b`
// preset (2,048 × 2,048 in 5.9 µs against 1.75 µs), half of a decoded token. One warp per output
// reads that output's weight row whole and contiguous (8 bf16 per lane per load, GEMV_UNROLL
// loads in flight), so the memory streams long runs, and the warp's lanes add their sums by
// shuffles: no second pass, no atomics, the same bits every run. (A first form with 64-column
// tiles of an [in, out] weight read 128 bytes per row per block and was no faster than cuBLAS.)
//
// Grid: ceil(n / outputs per block) blocks of 32 · parts · outputs per block threads (at most
// GEMV_MAX_THREADS; gemv.rs picks them). `k` a multiple of 8,
// `ldw` a multiple of 8, `wt` and `x` 16-byte aligned. (Two to eight rows, each weight load
// multiplied by every row's input, were slower than cuBLAS's tensor-core products: 1b decode at
// batch 2, 4 and 8 took 1.83 / 2.64 / 4.37 ms per token against 1.78 / 1.91 / 2.44, H200.)

#define GEMV_MAX_THREADS 1024
#define GEMV_UNROLL 8

__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
    const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// Columns one warp covers per pass (GEMV_UNROLL loads of 8 bf16 per lane).
#define GEMV_COLS (32 * 8 * GEMV_UNROLL)

// GEMV_UNROLL 16-byte loads of one weight row from column `base` (zeros from `end` on).
__device__ __forceinline__ void gemv_load(const bf16_t* wr, int base, int end, uint4* wv) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) {
        const int kk = base + 32 * 8 * u;
        wv[u] = kk < end ? *reinterpret_cast<const uint4*>(wr + kk) : make_uint4(0, 0, 0, 0);
    }
}

// Each output's row is split into `parts` spans of whole 8-column groups, one warp per span
// (consecutive warps of a block), so that a long row (the down projection's 5,632 columns at
// `1b`) is one pass of loads per warp instead of three in a row; the warps' sums are added in
// span order through shared memory (deterministic). Block: (8 / parts, at least 1) outputs.
struct GemvWarp {
    int lane, warp, col, part, lo, hi;
    bool live;  // whole warps
    const bf16_t* wr;
    // The warp's share of output group `group` (the block's outputs when launched one group
    // per block).
    __device__ GemvWarp(const bf16_t* wt, int k, int n, long long ldw, int parts, int group) {
        lane = threadIdx.x & 31;
        warp = threadIdx.x >> 5;
        const int per_block = (blockDim.x >> 5) / parts;
        col = group * per_block + warp / parts;
        part = warp % parts;
        const int span = ((k + parts - 1) / parts + 7) & ~7;
        lo = min(k, part * span);
        hi = min(k, lo + span);
        live = col < n;
        wr = wt + (long long)(live ? col : 0) * ldw;
    }
};

// The weight is a decode step's constant, never written by the kernels ahead of a product, so
// under programmatic dependent launch (see pdl_wait) a warp issues its span's first loads and
// prefetches the rest of it into L2 before waiting for the kernel ahead: the stream of weights
// starts while that kernel (the norm, attention) still runs. Only `x` waits.
__device__ __forceinline__ void gemv_issue(const GemvWarp& g, uint4* wv) {
    if (!g.live) return;
    gemv_load(g.wr, g.lo + g.lane * 8, g.hi, wv);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // One prefetch per 128-byte line (64 bf16) of the span past the first loads.
    for (int kk = g.lo + GEMV_COLS + g.lane * 64; kk < g.hi; kk += 32 * 64)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(g.wr + kk));
#endif
}

// Prefetches the warp's whole span into L2 (one 128-byte line per lane and step).
__device__ __forceinline__ void gemv_prefetch(const GemvWarp& g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (!g.live) return;
    for (int kk = g.lo + g.lane * 64; kk < g.hi; kk += 32 * 64)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(g.wr + kk));
#endif
}

// The warp's sum over its span (the first loads in `wv`), the spans added, y[col] stored.
// `x` may be in global or shared memory. Ends with the block synchronised when the spans are
// added through shared memory (a block may call it again).
__device__ void gemv_finish(const GemvWarp& g, const bf16_t* x, bf16_t* y, int parts,
                            uint4* wv) {
    __shared__ float partial[32];
    float acc = 0.0f;
    if (g.live) {
        for (int base = g.lo + g.lane * 8; base < g.hi; base += GEMV_COLS) {
            if (base != g.lo + g.lane * 8) gemv_load(g.wr, base, g.hi, wv);
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) {
                const int kk = base + 32 * 8 * u;
                if (kk >= g.hi) break;
                float wf[8], xf[8];
                unpack8(wv[u], wf);
                unpack8(*reinterpret_cast<const uint4*>(x + kk), xf);
#pragma unroll
                for (int j = 0; j < 8; ++j) acc += wf[j] * xf[j];
            }
        }
    }
    acc = warp_sum(acc);
    if (parts == 1) {
        if (g.live && g.lane == 0) store(y, g.col, acc);
        return;
    }
    if (g.lane == 0) partial[g.warp] = acc;
    __syncthreads();
    if (g.live && g.part == 0 && g.lane == 0) {
        float t = 0.0f;
        for (int p = 0; p < parts; ++p) t += partial[g.warp + p];
        store(y, g.col, t);
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(GEMV_MAX_THREADS)
    gemv_bf16(const bf16_t* x, const bf16_t* wt, bf16_t* y, int k, int n, long long ldw,
              int parts) {
    const GemvWarp g(wt, k, n, ldw, parts, blockIdx.x);
    uint4 wv[GEMV_UNROLL];
    gemv_issue(g, wv);
    pdl_start();
    gemv_finish(g, x, y, parts, wv);
}

// The RMSNorm of the f32 residual stream folded into the product that reads it (decoding):
//   h = x + δ (δ bf16; with δ null, h = x and nothing is written),  a = rms_norm(h) · γ (bf16),
//   y = a · wt
// `h` is written by block 0; every block computes `a` itself into shared memory (the row is a
// few KB, read from L2) instead of a separate add-and-norm kernel writing it for the product to
// read back: one kernel and one dependency fewer per norm. The numbers are add_rms_norm's (and
// rms_norm_forward's without δ) bit for bit: its arithmetic over a virtual block of
// `norm_threads` threads (the separate kernel's block), thread v of which this block's thread
// v mod blockDim.x plays, its warps' sums added as block_sum adds them. So that the norm is
// computed once per block rather than once per group of outputs, the grid is at most the blocks
// resident at once, each taking groups blockIdx.x, + gridDim.x, ... (gemv_bf16's blocks) in
// turn, with the next group's rows prefetched into L2 while it sums the current one. Dynamic
// shared memory: k bf16. `norm_threads` a multiple of 32, at most 1,024, with
// k <= RMS_COLS * norm_threads.
extern "C" __global__ void __launch_bounds__(GEMV_MAX_THREADS)
    gemv_norm_bf16(const float* x, const bf16_t* delta, const float* gamma, float eps,
                   int norm_threads, float* h, const bf16_t* wt, bf16_t* y, int k, int n,
                   long long ldw, int parts) {
    extern __shared__ __align__(16) bf16_t row[];
    __shared__ float sums[33];
    const int groups = (n + (blockDim.x >> 5) / parts - 1) / ((blockDim.x >> 5) / parts);
    GemvWarp g(wt, k, n, ldw, parts, blockIdx.x);
    uint4 wv[GEMV_UNROLL];
    gemv_issue(g, wv);
    if (blockIdx.x + gridDim.x < groups)
        gemv_prefetch(GemvWarp(wt, k, n, ldw, parts, blockIdx.x + gridDim.x));
    pdl_wait();
    if (threadIdx.x < 32) sums[threadIdx.x] = 0.0f;
    __syncthreads();
    for (int v0 = 0; v0 < norm_threads; v0 += blockDim.x) {
        const int vt = v0 + threadIdx.x;
        float ss = 0.0f;
#pragma unroll
        for (int c = 0; c < RMS_COLS; ++c) {
            const int j = vt + c * norm_threads;
            float v = 0.0f;
            if (vt < norm_threads && j < k) {
                v = delta ? x[j] + load(delta, j) : x[j];
                if (delta && blockIdx.x == 0) h[j] = v;
            }
            ss += v * v;
        }
        ss = warp_sum(ss);
        if ((threadIdx.x & 31) == 0 && vt < norm_threads) sums[vt >> 5] = ss;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        const float t = warp_sum(sums[threadIdx.x]);
        if (threadIdx.x == 0) sums[32] = t;
    }
    __syncthreads();
    const float rr = rsqrtf(sums[32] / k + eps);
    for (int vt = threadIdx.x; vt < norm_threads; vt += blockDim.x) {
#pragma unroll
        for (int c = 0; c < RMS_COLS; ++c) {
            const int j = vt + c * norm_threads;
            if (j < k) {
                const float v = delta ? x[j] + load(delta, j) : x[j];
                store(row, j, v * rr * gamma[j]);
            }
        }
    }
    __syncthreads();
    pdl_trigger();
    for (int group = blockIdx.x; group < groups; group += gridDim.x) {
        if (group != blockIdx.x) {
            g = GemvWarp(wt, k, n, ldw, parts, group);
            gemv_issue(g, wv);
            if (group + gridDim.x < groups)
                gemv_prefetch(GemvWarp(wt, k, n, ldw, parts, group + gridDim.x));
        }
        gemv_finish(g, row, y, parts, wv);
    }
}
