// Attention of one query per (row, head) against `keys` cached positions, for decoding: q
// [batch, heads, dim] (contiguous), k and v [batch, kv_heads, *, dim] (strides kb, kh between rows
// and heads, unit stride within a key and `dim` between keys; every row 4-element aligned),
// `hidden` [batch, keys] (1 = not visible; null: all visible), out [batch, heads, dim]
// contiguous. Head h reads kv head h / rep. Appended to kernels.cu (its helpers) before NVRTC
// compiles them. Replaces about a dozen kernels of the tensor-op form (product, scale, mask,
// softmax's five, casts, product, the grouped heads' copies).
//
// The keys are split over `splits` blocks per (row, head) (flash-decoding): at batch 1 there are
// only `heads` pairs, and one block per pair left most of the card idle and the kernel bound by
// its blocks' instructions (17 µs per layer at `1b`, 565 keys, on 32 of an H200's 132 SMs; ncu).
// Each block scores its `chunk` keys, takes their softmax against its own maximum and sums the
// values; with several splits it writes (output, max, sum) to `ws` and the last block of the pair
// to finish merges them in split order (the result does not depend on the timing).
//
// Grid: pairs × splits blocks (blockIdx.x = split · pairs + pair), at most ATTN_MAX_SPLITS
// splits; `dim` a multiple of 4 and
// `blockDim.x` a multiple of 32 and of dim / 4. Dynamic shared memory: dim + chunk +
// (blockDim.x / (dim / 4)) · dim floats. `ws`: pairs × splits × (dim + 2) floats.

#define KEY_UNROLL 4
#define ATTN_MAX_PAIRS 65536
#define ATTN_MAX_SPLITS 256

// Splits of each pair that have finished, reset by the pair's last block.
__device__ unsigned int attn_arrivals[ATTN_MAX_PAIRS];

__device__ float block_max(float v) {
    __shared__ float partial[33];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < warps ? partial[lane] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
        if (lane == 0) partial[32] = t;
    }
    __syncthreads();
    const float total = partial[32];
    __syncthreads();
    return total;
}

template <typename T>
__device__ void decode_attention(const T* q, const T* k, const T* v, const unsigned char* hidden,
                                 T* out, float* ws, int pairs, int heads, int rep, int keys,
                                 int chunk, int dim, long long kb, long long kh, float scale) {
    extern __shared__ float sh[];
    float* qs = sh;          // dim: the query in f32
    float* p = qs + dim;     // chunk: scores, then probabilities
    float* part = p + chunk; // groups × dim: partial outputs
    __shared__ bool last;
    __shared__ float merge_m[ATTN_MAX_SPLITS], merge_l[ATTN_MAX_SPLITS];
    const int pair = blockIdx.x % pairs, split = blockIdx.x / pairs, splits = gridDim.x / pairs;
    const int row = pair / heads, h = pair % heads;
    const int tid = threadIdx.x, bs = blockDim.x;
    const int k0 = split * chunk, n = min(keys, k0 + chunk) - k0;
    const T* qr = q + (long long)pair * dim;
    const long long kvoff = row * kb + (long long)(h / rep) * kh + (long long)k0 * dim;
    const T* kr = k + kvoff;
    const T* vr = v + kvoff;
    const unsigned char* hr = hidden ? hidden + (long long)row * keys + k0 : nullptr;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // The cached keys and values but this step's do not depend on the kernel ahead (it writes
    // that one slot), and a prefetch to L2, the point of coherence, cannot leave a stale line
    // behind, so the chunk is on its way before waiting for that kernel (see pdl_wait).
    const long long bytes = (long long)max(n, 0) * dim * sizeof(T);
    for (long long o = tid * 128LL; o < bytes; o += bs * 128LL) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(kr) + o));
        asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(vr) + o));
    }
#endif
    pdl_wait();
    pdl_trigger();
    for (int i = tid; i < dim; i += bs) qs[i] = load(qr, i);
    __syncthreads();
    const int chunks = dim / 4, groups = bs / chunks, g = tid / chunks, c = (tid % chunks) * 4;
    if (chunks <= 32) {
        // A group of dim / 4 threads per key (one coalesced row, the group's lanes in one warp),
        // KEY_UNROLL keys per group in flight, the dot products reduced by shuffles. The loop's
        // trip count is the same for every thread, as the full-warp shuffles need.
        const float q0 = qs[c], q1 = qs[c + 1], q2 = qs[c + 2], q3 = qs[c + 3];
        for (int base = 0; base < n; base += KEY_UNROLL * groups) {
            float acc[KEY_UNROLL];
#pragma unroll
            for (int u = 0; u < KEY_UNROLL; ++u) {
                const int j = base + u * groups + g;
                acc[u] = 0.0f;
                if (j < n) {
                    const Four x = load4(kr, (long long)j * dim + c);
                    acc[u] = x.v[0] * q0 + x.v[1] * q1 + x.v[2] * q2 + x.v[3] * q3;
                }
            }
#pragma unroll
            for (int u = 0; u < KEY_UNROLL; ++u) {
                float a = acc[u];
                for (int o = chunks / 2; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                const int j = base + u * groups + g;
                if (c == 0 && j < n) p[j] = (hr && hr[j]) ? NEG_INF : a * scale;
            }
        }
    } else {
        for (int j = tid; j < n; j += bs) {
            const long long base = (long long)j * dim;
            float acc = 0.0f;
            for (int cc = 0; cc < dim; cc += 4) {
                const Four x = load4(kr, base + cc);
                acc += x.v[0] * qs[cc] + x.v[1] * qs[cc + 1] + x.v[2] * qs[cc + 2] +
                       x.v[3] * qs[cc + 3];
            }
            p[j] = (hr && hr[j]) ? NEG_INF : acc * scale;
        }
    }
    __syncthreads();
    float m = NEG_INF;
    for (int j = tid; j < n; j += bs) m = fmaxf(m, p[j]);
    m = block_max(m);
    float sum = 0.0f;
    for (int j = tid; j < n; j += bs) {
        const float e = m == NEG_INF ? 0.0f : expf(p[j] - m);
        p[j] = e;
        sum += e;
    }
    sum = block_sum(sum);  // its barriers also publish p
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma unroll 4
    for (int j = g; j < n; j += groups) {
        const Four x = load4(vr, (long long)j * dim + c);
        const float pj = p[j];
        a0 += pj * x.v[0];
        a1 += pj * x.v[1];
        a2 += pj * x.v[2];
        a3 += pj * x.v[3];
    }
    part[g * dim + c] = a0;
    part[g * dim + c + 1] = a1;
    part[g * dim + c + 2] = a2;
    part[g * dim + c + 3] = a3;
    __syncthreads();
    float* mine = ws + ((long long)pair * splits + split) * (dim + 2);
    for (int i = tid; i < dim; i += bs) {
        float o = 0.0f;
        for (int gg = 0; gg < groups; ++gg) o += part[gg * dim + i];
        if (splits == 1)
            store(out, (long long)pair * dim + i, sum > 0.0f ? o / sum : 0.0f);
        else
            mine[i] = o;
    }
    if (splits == 1) return;
    if (tid == 0) {
        mine[dim] = m;
        mine[dim + 1] = sum;
    }
    // The last split of the pair merges (threadfence: this block's results are visible before
    // its arrival is counted).
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(&attn_arrivals[pair], 1u) == (unsigned int)(splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    // The splits' maxima and sums through shared memory (one load per thread), then each output
    // element's sum over the splits with independent loads.
    const float* all = ws + (long long)pair * splits * (dim + 2);
    for (int s = tid; s < splits; s += bs) {
        merge_m[s] = __ldcg(all + s * (dim + 2) + dim);
        merge_l[s] = __ldcg(all + s * (dim + 2) + dim + 1);
    }
    __syncthreads();
    float mx = NEG_INF;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, merge_m[s]);
    __syncthreads();
    for (int s = tid; s < splits; s += bs)
        merge_m[s] = merge_m[s] == NEG_INF ? 0.0f : expf(merge_m[s] - mx);
    __syncthreads();
    float l = 0.0f;
    for (int s = 0; s < splits; ++s) l += merge_m[s] * merge_l[s];
    for (int i = tid; i < dim; i += bs) {
        float o = 0.0f;
#pragma unroll 8
        for (int s = 0; s < splits; ++s) o += merge_m[s] * __ldcg(all + s * (dim + 2) + i);
        store(out, (long long)pair * dim + i, l > 0.0f ? o / l : 0.0f);
    }
    if (tid == 0) attn_arrivals[pair] = 0;
}

#define DECODE_ATTENTION(SUFFIX, T)                                                               \
    extern "C" __global__ void decode_attention_##SUFFIX(                                         \
        const T* q, const T* k, const T* v, const unsigned char* hidden, T* out, float* ws,       \
        int pairs, int heads, int rep, int keys, int chunk, int dim, long long kb, long long kh,  \
        float scale) {                                                                            \
        decode_attention<T>(q, k, v, hidden, out, ws, pairs, heads, rep, keys, chunk, dim, kb,    \
                            kh, scale);                                                           \
    }
DECODE_ATTENTION(f32, float)
DECODE_ATTENTION(bf16, bf16_t)
