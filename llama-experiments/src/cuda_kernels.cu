// Fused element-wise kernels for the libtorch backend on CUDA (see cuda_kernels.rs for why they
// exist and how they are launched). Compiled at run time by NVRTC, so the source includes no
// header: bf16 is handled as its 16-bit pattern (the top half of an f32), rounded to nearest even
// on the way out as torch rounds.
//
// Every kernel comes in an f32 and a bf16 form (suffixes _f32, _bf16) over the same template. The
// statistics (sums, maxima, exponentials) are always f32.

typedef unsigned short bf16_t;

// math.h's INFINITY and NAN are not defined without headers.
#define NEG_INF __int_as_float(0xff800000)
#define QUIET_NAN __int_as_float(0x7fc00000)

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const bf16_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16_t* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p[i] = (bf16_t)0x7fc0u;  // NaN stays NaN
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    p[i] = (bf16_t)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum of `v` over the block, returned to every thread. Block size: a multiple of 32, <= 1024.
__device__ float block_sum(float v) {
    __shared__ float partial[33];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < warps ? partial[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) partial[32] = t;
    }
    __syncthreads();
    const float total = partial[32];
    __syncthreads();  // `partial` is reused by the next call
    return total;
}

// Merges two (max, Σ exp(x - max)) pairs of an online log-sum-exp.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float mm = fmaxf(m, m2);
    if (mm == NEG_INF) return;  // both empty
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

__device__ void block_lse(float& m, float& s) {
    __shared__ float pm[32], ps[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    if (lane == 0) { pm[warp] = m; ps[warp] = s; }
    __syncthreads();
    m = NEG_INF;
    s = 0.0f;
    for (int w = 0; w < warps; ++w) lse_merge(m, s, pm[w], ps[w]);
    __syncthreads();
}

// Cross-entropy forward, one block per row of `logits [n, vocab]`: the row's log-sum-exp (kept
// for the backward pass) and its loss `lse - logits[target]` (NaN for a target outside the
// vocabulary, so that bad data shows instead of reading out of bounds).
template <typename T>
__device__ void cross_entropy_forward(const T* logits, const long long* targets, float* lse,
                                      float* loss, int vocab) {
    const long long row = blockIdx.x;
    const T* x = logits + row * vocab;
    float m = NEG_INF, s = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float v = load(x, j);
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    block_lse(m, s);
    if (threadIdx.x == 0) {
        const float l = m + logf(s);
        const long long t = targets[row];
        lse[row] = l;
        loss[row] = (t >= 0 && t < vocab) ? l - load(x, t) : QUIET_NAN;
    }
}

// Its backward, one block per row: d logits = (softmax - onehot(target)) * g / n, with `g` the
// loss's gradient read on the device (no host synchronisation).
template <typename T>
__device__ void cross_entropy_backward(const T* logits, const long long* targets, const float* lse,
                                       const float* g, T* dlogits, int vocab, float inv_n) {
    const long long row = blockIdx.x;
    const T* x = logits + row * vocab;
    T* dx = dlogits + row * vocab;
    const float l = lse[row], scale = g[0] * inv_n;
    const long long t = targets[row];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float p = expf(load(x, j) - l);
        store(dx, j, (p - (j == t ? 1.0f : 0.0f)) * scale);
    }
}

// SwiGLU's gate, element-wise: out = silu(a) * b.
template <typename T>
__device__ void swiglu_forward(const T* a, const T* b, T* out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = load(a, i);
        store(out, i, x / (1.0f + expf(-x)) * load(b, i));
    }
}

// Its backward: da = g * b * σ(a) * (1 + a * (1 - σ(a))), db = g * silu(a).
template <typename T>
__device__ void swiglu_backward(const T* a, const T* b, const T* g, T* da, T* db, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = load(a, i), y = load(b, i), d = load(g, i);
        const float sig = 1.0f / (1.0f + expf(-x));
        store(da, i, d * y * sig * (1.0f + x * (1.0f - sig)));
        store(db, i, d * x * sig);
    }
}

// Columns per thread that a row kernel keeps in registers: dim <= RMS_COLS * blockDim.x.
#define RMS_COLS 16

// RMSNorm forward, one block per row of `x [n, dim]`: r = 1 / sqrt(mean(x²) + eps) (kept for the
// backward pass) and y = (x * r) * gamma, in f32 and rounded once to x's dtype.
template <typename T>
__device__ void rms_norm_forward(const T* x, const float* gamma, T* y, float* r, int dim,
                                 float eps) {
    const long long row = blockIdx.x;
    const T* xr = x + row * dim;
    float v[RMS_COLS];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) {
        const int j = threadIdx.x + k * blockDim.x;
        v[k] = j < dim ? load(xr, j) : 0.0f;
        ss += v[k] * v[k];
    }
    const float rr = rsqrtf(block_sum(ss) / dim + eps);
    if (threadIdx.x == 0) r[row] = rr;
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) {
        const int j = threadIdx.x + k * blockDim.x;
        if (j < dim) store(y + row * dim, j, v[k] * rr * gamma[j]);
    }
}

// RMSNorm backward over rows `blockIdx.x, blockIdx.x + gridDim.x, ...`:
//   x̂ = x r,  t = dy γ,  dx = r (t - x̂ mean(t x̂)),
// and this block's share of dγ = Σ_rows dy x̂, written to dgamma_partial[blockIdx.x, :] (the
// caller sums the blocks' rows).
template <typename T>
__device__ void rms_norm_backward(const T* dy, const T* x, const float* gamma, const float* r,
                                  T* dx, float* dgamma_partial, long long n, int dim) {
    float acc[RMS_COLS];
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) acc[k] = 0.0f;
    for (long long row = blockIdx.x; row < n; row += gridDim.x) {
        const float rr = r[row];
        float xh[RMS_COLS], t[RMS_COLS];
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < RMS_COLS; ++k) {
            const int j = threadIdx.x + k * blockDim.x;
            const bool in = j < dim;
            const float g = in ? load(dy + row * dim, j) : 0.0f;
            xh[k] = in ? load(x + row * dim, j) * rr : 0.0f;
            t[k] = in ? g * gamma[j] : 0.0f;
            acc[k] += g * xh[k];
            dot += t[k] * xh[k];
        }
        const float c = block_sum(dot) / dim;
#pragma unroll
        for (int k = 0; k < RMS_COLS; ++k) {
            const int j = threadIdx.x + k * blockDim.x;
            if (j < dim) store(dx + row * dim, j, rr * (t[k] - xh[k] * c));
        }
    }
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) {
        const int j = threadIdx.x + k * blockDim.x;
        if (j < dim) dgamma_partial[blockIdx.x * (long long)dim + j] = acc[k];
    }
}

#define FOR_DTYPES(MACRO) MACRO(f32, float) MACRO(bf16, bf16_t)

#define INSTANTIATE(SUFFIX, T)                                                                    \
    extern "C" __global__ void cross_entropy_forward_##SUFFIX(                                    \
        const T* logits, const long long* targets, float* lse, float* loss, int vocab) {          \
        cross_entropy_forward<T>(logits, targets, lse, loss, vocab);                              \
    }                                                                                             \
    extern "C" __global__ void cross_entropy_backward_##SUFFIX(                                   \
        const T* logits, const long long* targets, const float* lse, const float* g, T* dlogits,  \
        int vocab, float inv_n) {                                                                 \
        cross_entropy_backward<T>(logits, targets, lse, g, dlogits, vocab, inv_n);                \
    }                                                                                             \
    extern "C" __global__ void swiglu_forward_##SUFFIX(const T* a, const T* b, T* out,            \
                                                       long long n) {                             \
        swiglu_forward<T>(a, b, out, n);                                                          \
    }                                                                                             \
    extern "C" __global__ void swiglu_backward_##SUFFIX(const T* a, const T* b, const T* g,       \
                                                        T* da, T* db, long long n) {              \
        swiglu_backward<T>(a, b, g, da, db, n);                                                   \
    }                                                                                             \
    extern "C" __global__ void rms_norm_forward_##SUFFIX(const T* x, const float* gamma, T* y,    \
                                                         float* r, int dim, float eps) {          \
        rms_norm_forward<T>(x, gamma, y, r, dim, eps);                                            \
    }                                                                                             \
    extern "C" __global__ void rms_norm_backward_##SUFFIX(                                        \
        const T* dy, const T* x, const float* gamma, const float* r, T* dx,                       \
        float* dgamma_partial, long long n, int dim) {                                            \
        rms_norm_backward<T>(dy, x, gamma, r, dx, dgamma_partial, n, dim);                        \
    }

FOR_DTYPES(INSTANTIATE)
