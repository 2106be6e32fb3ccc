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
// Grid: up to ceil(n / outputs per block) blocks of 32 · parts · outputs per block threads (at
// most GEMV_MAX_THREADS; gemv.rs picks them). `k` a multiple of 8,
// `ldw` a multiple of 8, `wt` and `x` 16-byte aligned. (Two to eight rows, each weight load
// multiplied by every row's input, were slower than cuBLAS's tensor-core products: 1b decode at
// batch 2, 4 and 8 took 1.83 / 2.64 / 4.37 ms per token against 1.78 / 1.91 / 2.44, H200.)

#define GEMV_MAX_THREADS 1024
// Four loads in flight per lane, each warp one pass over 1,024 columns: against eight loads over
// 2,048 columns, `1b` decoding took 1.13–1.15 against 1.22–1.29 ms per token on an H200 (fewer
// registers, so more resident warps, and twice the warps on each row; docs/performance.md,
// attempt 33).
#define GEMV_UNROLL 4

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

// One 16-byte load of weights. The weights stream through once, so they are read through the
// non-coherent path without a line in L1 (they are constant for the kernel's life): L1 then
// keeps `x`, which every warp of the block reads again. (`-DGEMV_CACHED_LOADS`,
// `LLAMA_GEMV_LOADS=cached`: plain loads, which allocate in L1 like `x`'s.)
__device__ __forceinline__ uint4 load_weights(const bf16_t* p) {
#if defined(GEMV_CACHED_LOADS) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 700
    return *reinterpret_cast<const uint4*>(p);
#else
    uint4 u;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w)
                 : "l"(p));
    return u;
#endif
}

// GEMV_UNROLL 16-byte loads of one weight row from column `base` (zeros from `end` on).
__device__ __forceinline__ void gemv_load(const bf16_t* wr, int base, int end, uint4* wv) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) {
        const int kk = base + 32 * 8 * u;
        wv[u] = kk < end ? load_weights(wr + kk) : make_uint4(0, 0, 0, 0);
    }
}

// Each output's row is split into `parts` spans of whole 8-column groups, one warp per span
// (consecutive warps of a block), so that a long row (the down projection's 5,632 columns at
// `1b`) is one pass of loads per warp instead of three in a row; the warps' sums are added in
// span order through shared memory (deterministic). Block: (8 / parts, at least 1) outputs, a
// group. A block takes groups `blockIdx.x, + gridDim.x, ...`: with one block per group (the
// grid in waves) that is one group; with as many blocks as are resident at once (gemv.rs,
// `LLAMA_GEMV_GRID`) each takes several, and issues the next group's first loads before it
// reduces and stores the current one, so the memory keeps streaming across a block's groups
// instead of a block draining and the next one launching. Either way each output is summed by
// the same lanes in the same order: the same bits.
//
// The weight is a decode step's constant, never written by the kernels ahead of a product, so
// under programmatic dependent launch (see pdl_wait) a warp issues its span's first loads and
// prefetches the rest of it (and with a resident grid its next group's span) into L2 before
// waiting for the kernel ahead: the stream of weights starts while that kernel (the norm,
// attention) still runs. Only `x` waits.
//
// GATED (SwiGLU's gate in the product's epilogue): `wt` holds the gate's n rows then the up
// projection's n, y = silu(x·gate) ⊙ (x·up) [n]. A group is per_block / 2 gate outputs and the
// same up outputs (rows n apart), so one block has both sums of each output; each is rounded to
// bf16 before the gate, as the separate product and swiglu kernels round them: the same bits as
// the two kernels, without the second one.
template <bool GATED>
__device__ void gemv(const bf16_t* x, const bf16_t* wt, bf16_t* y, int k, int n, long long ldw,
                     int parts) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int per_block = (blockDim.x >> 5) / parts;
    const int outs = GATED ? per_block / 2 : per_block;  // outputs of y per group
    const int groups = (n + outs - 1) / outs;
    const int part = warp % parts, slot = warp / parts;
    const int span = ((k + parts - 1) / parts + 7) & ~7;
    const int lo = min(k, part * span), hi = min(k, lo + span);
    // This warp's output of y in group g (n or more: none; whole warps), and its weight row.
    auto output = [&](int g) { return g * outs + (GATED ? slot % outs : slot); };
    auto row = [&](int g) { return output(g) + (GATED && slot >= outs ? n : 0); };
    int g = blockIdx.x;
    int col = output(g);
    bool live = col < n;
    const bf16_t* wr = wt + (long long)(live ? row(g) : 0) * ldw;
    uint4 wv[GEMV_UNROLL];
    if (live) {
        gemv_load(wr, lo + lane * 8, hi, wv);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        // One prefetch per 128-byte line (64 bf16) of the span past the first loads.
        for (int kk = lo + GEMV_COLS + lane * 64; kk < hi; kk += 32 * 64)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + kk));
        if (g + gridDim.x < groups && output(g + gridDim.x) < n) {
            const bf16_t* next = wt + (long long)row(g + gridDim.x) * ldw;
            for (int kk = lo + lane * 64; kk < hi; kk += 32 * 64)
                asm volatile("prefetch.global.L2 [%0];" ::"l"(next + kk));
        }
#endif
    }
    pdl_wait();
    pdl_trigger();
    for (;;) {
        float acc = 0.0f;
        if (live) {
            for (int base = lo + lane * 8; base < hi; base += GEMV_COLS) {
                if (base != lo + lane * 8) gemv_load(wr, base, hi, wv);
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; ++u) {
                    const int kk = base + 32 * 8 * u;
                    if (kk >= hi) break;
                    float wf[8], xf[8];
                    unpack8(wv[u], wf);
                    unpack8(*reinterpret_cast<const uint4*>(x + kk), xf);
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc += wf[j] * xf[j];
                }
            }
        }
        // The next group's first loads, in flight while this one is reduced and stored.
        const int gn = g + gridDim.x;  // the same in the whole block
        const bool liven = gn < groups && output(gn) < n;
        const bf16_t* wrn = wt + (long long)(liven ? row(gn) : 0) * ldw;
        if (liven) gemv_load(wrn, lo + lane * 8, hi, wv);
        acc = warp_sum(acc);
        if (parts == 1 && !GATED) {
            if (live && lane == 0) store(y, col, acc);
        } else {
            if (lane == 0) partial[warp] = acc;
            __syncthreads();
            // The sum of slot s: its warps' partials in span order.
            auto total = [&](int s) {
                float t = 0.0f;
                for (int p = 0; p < parts; ++p) t += partial[s * parts + p];
                return t;
            };
            if (!GATED) {
                if (live && part == 0 && lane == 0) store(y, col, total(slot));
            } else if (threadIdx.x < outs && g * outs + (int)threadIdx.x < n) {
                bf16_t a, b;  // rounded as the separate product stores them
                store(&a, 0, total(threadIdx.x));
                store(&b, 0, total(threadIdx.x + outs));
                store(y, g * outs + threadIdx.x, silu_mul(load(&a, 0), load(&b, 0)));
            }
        }
        if (gn >= groups) return;
        if (parts != 1 || GATED) __syncthreads();  // `partial` is written again
        g = gn;
        col = output(gn);
        live = liven;
        wr = wrn;
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_MAX_THREADS)
    gemv_bf16(const bf16_t* x, const bf16_t* wt, bf16_t* y, int k, int n, long long ldw,
              int parts) {
    gemv<false>(x, wt, y, k, n, ldw, parts);
}

// Block: an even number of slots (at least 2) of `parts` warps.
extern "C" __global__ void __launch_bounds__(GEMV_MAX_THREADS)
    gemv_swiglu_bf16(const bf16_t* x, const bf16_t* wt, bf16_t* y, int k, int n, long long ldw,
                     int parts) {
    gemv<true>(x, wt, y, k, n, ldw, parts);
}
