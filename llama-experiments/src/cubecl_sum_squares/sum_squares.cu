// Σ x² of a flat f32 or bf16 vector for CubeCL's CUDA backend (see mod.rs for why): each block
// sums the squares of its grid-stride share in f32 and writes one partial sum; the caller adds
// the partials. The grid depends only on the length, so the result is the same run to run.

typedef unsigned short bf16_t;

#define THREADS 256

__device__ __forceinline__ float sq_bf16x2(unsigned u) {
    const float lo = __uint_as_float(u << 16), hi = __uint_as_float(u & 0xffff0000u);
    return lo * lo + hi * hi;
}

__device__ __forceinline__ float block_sum(float s) {
    __shared__ float warps[THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = s;
    __syncthreads();
    s = threadIdx.x < THREADS / 32 ? warps[threadIdx.x] : 0.0f;
    if (threadIdx.x < 32)
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

// 16-byte loads where the vector starts 16-byte aligned (a CubeCL buffer does), then the tail.
extern "C" __global__ void __launch_bounds__(THREADS) sum_squares_f32(const float* x, long long n,
                                                                      float* partial) {
    const long long first = blockIdx.x * (long long)THREADS + threadIdx.x;
    const long long stride = (long long)gridDim.x * THREADS;
    const bool vec = ((unsigned long long)x & 15) == 0;
    const long long n4 = vec ? n / 4 : 0;
    float s = 0.0f;
    for (long long i = first; i < n4; i += stride) {
        const float4 v = reinterpret_cast<const float4*>(x)[i];
        s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    for (long long i = 4 * n4 + first; i < n; i += stride) s += x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void __launch_bounds__(THREADS) sum_squares_bf16(const bf16_t* x, long long n,
                                                                       float* partial) {
    const long long first = blockIdx.x * (long long)THREADS + threadIdx.x;
    const long long stride = (long long)gridDim.x * THREADS;
    const bool vec = ((unsigned long long)x & 15) == 0;
    const long long n8 = vec ? n / 8 : 0;
    float s = 0.0f;
    for (long long i = first; i < n8; i += stride) {
        const uint4 v = reinterpret_cast<const uint4*>(x)[i];
        s += sq_bf16x2(v.x) + sq_bf16x2(v.y) + sq_bf16x2(v.z) + sq_bf16x2(v.w);
    }
    for (long long i = 8 * n8 + first; i < n; i += stride) {
        const float f = __uint_as_float((unsigned)x[i] << 16);
        s += f * f;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
