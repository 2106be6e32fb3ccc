// The mean cross-entropy's two passes for CubeCL's CUDA backend (see mod.rs): one block per row of
// the `[n, vocab]` logits, the log-sum-exp in f32 with a running maximum. Compiled at run time by
// NVRTC, so the source includes no header. The targets arrive as f32 (exact below 2^24), because
// Burn's native loss saves float tensors only.

typedef unsigned short bf16_t;

#define NEG_INF __int_as_float(0xff800000)
#define QUIET_NAN __int_as_float(0x7fc00000)
#define THREADS 512

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const bf16_t* p, long long i) {
    return __uint_as_float(((unsigned)p[i]) << 16);
}
__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
// Rounded to nearest even, NaN kept.
__device__ __forceinline__ void store(bf16_t* p, long long i, float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p[i] = (bf16_t)0x7fc0u;
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (bf16_t)(u >> 16);
}

// (m, s) ⊕ (m2, s2) for s = Σ exp(x − m).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float mm = fmaxf(m, m2);
    if (mm == NEG_INF) return;
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

__device__ __forceinline__ void lse_add(float& m, float& s, float v) {
    if (v > m) {
        s = s * expf(m - v) + 1.0f;
        m = v;
    } else {
        s += expf(v - m);
    }
}

// The block's (m, s), every thread getting the result.
__device__ __forceinline__ void block_lse(float& m, float& s) {
    __shared__ float pm[32], ps[32];
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0) {
        pm[warp] = m;
        ps[warp] = s;
    }
    __syncthreads();
    m = NEG_INF;
    s = 0.0f;
    for (int w = 0; w < warps; ++w) lse_merge(m, s, pm[w], ps[w]);
}

// 16 bytes of a row (4 f32 or 8 bf16) widened to f32, and back (rounded as `store`).
__device__ __forceinline__ void load16(const float* p, float* v) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void load16(const bf16_t* p, float* v) {
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        v[2 * k] = __uint_as_float(w[k] << 16);
        v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}
__device__ __forceinline__ void store16(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store16(bf16_t* p, const float* v) {
    bf16_t h[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) store(h, k, v[k]);
    uint4 q;
    q.x = (unsigned)h[0] | ((unsigned)h[1] << 16);
    q.y = (unsigned)h[2] | ((unsigned)h[3] << 16);
    q.z = (unsigned)h[4] | ((unsigned)h[5] << 16);
    q.w = (unsigned)h[6] | ((unsigned)h[7] << 16);
    *reinterpret_cast<uint4*>(p) = q;
}

// Whether a row is read and written 16 bytes at a time: it starts 16-byte aligned and holds whole
// 16-byte pieces (a 32,000-entry vocabulary does in both dtypes). One load per element of the
// row otherwise.
template <typename T>
__device__ __forceinline__ bool whole16(const T* row, int vocab) {
    return vocab % (16 / sizeof(T)) == 0 && ((unsigned long long)row & 15) == 0;
}

// Forward: lse[row] and loss[row] = lse − logit[target] (NaN for a target outside the vocabulary).
template <typename T>
__device__ void cross_entropy_forward(const T* logits, const float* targets, float* lse,
                                      float* loss, int vocab) {
    constexpr int N = 16 / sizeof(T);
    const long long row = blockIdx.x;
    const T* x = logits + row * vocab;
    float m = NEG_INF, s = 0.0f;
    if (whole16(x, vocab)) {
        // Each piece's own maximum first: one exponential per element, one merge per piece.
        for (int j = N * threadIdx.x; j < vocab; j += N * blockDim.x) {
            float v[N];
            load16(x + j, v);
            float mx = v[0];
#pragma unroll
            for (int k = 1; k < N; ++k) mx = fmaxf(mx, v[k]);
            if (mx == NEG_INF) continue;
            float sum = 0.0f;
#pragma unroll
            for (int k = 0; k < N; ++k) sum += expf(v[k] - mx);
            lse_merge(m, s, mx, sum);
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) lse_add(m, s, load(x, j));
    }
    block_lse(m, s);
    if (threadIdx.x == 0) {
        const float l = m + logf(s);
        const float tf = targets[row];
        const int t = (int)tf;
        lse[row] = l;
        loss[row] = (tf >= 0.0f && t < vocab && (float)t == tf) ? l - load(x, t) : QUIET_NAN;
    }
}

// Backward: d logits = (softmax − onehot(target)) · g / n, `g` read on the device.
template <typename T>
__device__ void cross_entropy_backward(const T* logits, const float* targets, const float* lse,
                                       const float* g, T* dlogits, int vocab, float inv_n) {
    constexpr int N = 16 / sizeof(T);
    const long long row = blockIdx.x;
    const T* x = logits + row * vocab;
    T* dx = dlogits + row * vocab;
    const float l = lse[row], scale = g[0] * inv_n;
    const int t = (int)targets[row];
    if (whole16(x, vocab) && whole16(dx, vocab)) {
        for (int j = N * threadIdx.x; j < vocab; j += N * blockDim.x) {
            float v[N];
            load16(x + j, v);
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = (expf(v[k] - l) - (j + k == t ? 1.0f : 0.0f)) * scale;
            store16(dx + j, v);
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x)
            store(dx, j, (expf(load(x, j) - l) - (j == t ? 1.0f : 0.0f)) * scale);
    }
}

// out[0] = the mean of x[0..n), one block: each thread sums a strided share, then the warps' sums
// in a fixed order, so the loss is the same bits run to run (CubeCL's `float_mean` of the row
// losses ran as one 380 µs launch per `125m` step, docs/performance.md attempt 61).
extern "C" __global__ void __launch_bounds__(THREADS) mean_f32(const float* x, float* out,
                                                             long long n) {
    __shared__ float part[THREADS / 32];
    float s = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += part[w];
        out[0] = total / (float)n;
    }
}

#define CROSS_ENTROPY(SUFFIX, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS) cross_entropy_forward_##SUFFIX(         \
        const T* logits, const float* targets, float* lse, float* loss, int vocab) {              \
        cross_entropy_forward<T>(logits, targets, lse, loss, vocab);                              \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(THREADS) cross_entropy_backward_##SUFFIX(        \
        const T* logits, const float* targets, const float* lse, const float* g, T* dlogits,      \
        int vocab, float inv_n) {                                                                 \
        cross_entropy_backward<T>(logits, targets, lse, g, dlogits, vocab, inv_n);                \
    }

CROSS_ENTROPY(f32, float)
CROSS_ENTROPY(bf16, bf16_t)
