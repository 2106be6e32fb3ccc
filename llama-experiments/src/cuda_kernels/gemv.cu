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
// Grid: ceil(n / 8) blocks of GEMV_THREADS threads (8 warps, 8 outputs). `k` a multiple of 8,
// `ldw` a multiple of 8, `wt` and `x` 16-byte aligned. (Two to eight rows, each weight load
// multiplied by every row's input, were slower than cuBLAS's tensor-core products: 1b decode at
// batch 2, 4 and 8 took 1.83 / 2.64 / 4.37 ms per token against 1.78 / 1.91 / 2.44, H200.)

#define GEMV_THREADS 256
#define GEMV_UNROLL 8

__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
    const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// The dot products of x with ROWS weight rows (each `k` long), summed over the warp: every lane
// gets the sums. The rows' loads are interleaved, so ROWS · GEMV_UNROLL are in flight.
template <int ROWS>
__device__ void row_dots(const bf16_t* x, const bf16_t* const* wr, int k, int lane, float* out) {
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;
    for (int base = lane * 8; base < k; base += 32 * 8 * GEMV_UNROLL) {
        uint4 wv[ROWS][GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int kk = base + 32 * 8 * u;
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                wv[r][u] = kk < k ? *reinterpret_cast<const uint4*>(wr[r] + kk)
                                  : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int kk = base + 32 * 8 * u;
            if (kk >= k) break;
            float xf[8];
            unpack8(*reinterpret_cast<const uint4*>(x + kk), xf);
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                float wf[8];
                unpack8(wv[r][u], wf);
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[r] += wf[j] * xf[j];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) out[r] = warp_sum(acc[r]);
}

// x rounded to bf16 and back, as a bf16 store and load would.
__device__ __forceinline__ float round_bf16(float x) {
    bf16_t b;
    store(&b, 0, x);
    return load(&b, 0);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_bf16(const bf16_t* x, const bf16_t* wt, bf16_t* y, int k, int n, long long ldw) {
    const int lane = threadIdx.x & 31;
    const int col = (blockIdx.x * GEMV_THREADS + threadIdx.x) >> 5;
    if (col >= n) return;  // whole warps
    const bf16_t* rows[1] = {wt + (long long)col * ldw};
    float acc[1];
    row_dots<1>(x, rows, k, lane, acc);
    if (lane == 0) store(y, col, acc[0]);
}

// SwiGLU's gate and up products with the gate applied: y[c] = silu(a) · b with a and b the
// products of x with rows c and h + c of the stacked [gate; up] weight, each rounded to bf16 first
// as the separate products' outputs are, so the bits are those of gemv_bf16 and swiglu_forward.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
    gemv_swiglu_bf16(const bf16_t* x, const bf16_t* wt, bf16_t* y, int k, int h, long long ldw) {
    const int lane = threadIdx.x & 31;
    const int col = (blockIdx.x * GEMV_THREADS + threadIdx.x) >> 5;
    if (col >= h) return;  // whole warps
    const bf16_t* rows[2] = {wt + (long long)col * ldw, wt + (long long)(h + col) * ldw};
    float acc[2];
    row_dots<2>(x, rows, k, lane, acc);
    if (lane == 0) store(y, col, silu_mul(round_bf16(acc[0]), round_bf16(acc[1])));
}
