// Fused kernels for the libtorch backend on CUDA (see mod.rs for why they exist and how they are
// launched). Compiled at run time by NVRTC, so the source includes no header: bf16 is handled as
// its 16-bit pattern (the top half of an f32), rounded to nearest even on the way out as torch
// rounds.
//
// Each kernel comes in an f32 and a bf16 form (suffixes _f32, _bf16) over the same template, but
// AdamW (f32 only: master weights and moments) and RMSNorm's f32-to-bf16 pair (_f32_bf16). The
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

// One element of a rotary rotation, x·c + x_partner·s, rounded the same way by every kernel that
// rotates (rotary, rope_slot, decoding's attention): the product and the fused multiply-add are
// explicit, so the compiler cannot contract the sum the other way round in one of them.
__device__ __forceinline__ float rotate_one(float x, float c, float partner, float s) {
    return __fmaf_rn(x, c, __fmul_rn(partner, s));
}

// Four consecutive elements, for the 8- or 16-byte loads that use the memory bus fully (2-byte
// loads move half as much per instruction). Callers check 4-element alignment.
struct Four {
    float v[4];
};
__device__ __forceinline__ Four load4(const float* p, long long i) {
    const float4 q = *reinterpret_cast<const float4*>(p + i);
    Four f;
    f.v[0] = q.x; f.v[1] = q.y; f.v[2] = q.z; f.v[3] = q.w;
    return f;
}
__device__ __forceinline__ Four load4(const bf16_t* p, long long i) {
    const uint2 q = *reinterpret_cast<const uint2*>(p + i);
    Four f;
    f.v[0] = __uint_as_float(q.x << 16); f.v[1] = __uint_as_float(q.x & 0xffff0000u);
    f.v[2] = __uint_as_float(q.y << 16); f.v[3] = __uint_as_float(q.y & 0xffff0000u);
    return f;
}
__device__ __forceinline__ void store4(float* p, long long i, const Four& f) {
    float4 q;
    q.x = f.v[0]; q.y = f.v[1]; q.z = f.v[2]; q.w = f.v[3];
    *reinterpret_cast<float4*>(p + i) = q;
}
__device__ __forceinline__ void store4(bf16_t* p, long long i, const Four& f) {
    bf16_t h[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) store(h, k, f.v[k]);
    uint2 q;
    q.x = (unsigned int)h[0] | ((unsigned int)h[1] << 16);
    q.y = (unsigned int)h[2] | ((unsigned int)h[3] << 16);
    *reinterpret_cast<uint2*>(p + i) = q;
}

// Programmatic dependent launch (sm_90 and later; the launcher may set the attribute for the
// kernels in mod.rs's PDL_KERNELS, each of which calls pdl_wait before it reads anything the
// kernel ahead may write, and before any write): such a kernel may be scheduled while the kernel
// ahead of it on the stream still runs. `pdl_wait` holds it until that kernel has completed and
// its writes are visible, so everything after it reads and writes as under plain stream order;
// `pdl_trigger` then lets the next kernel be scheduled, so its blocks are resident (and a
// product's weight loads under way) when this one ends, instead of launching after it.
// Triggering only after waiting keeps at most one kernel ahead waiting on the card. Both are
// no-ops below sm_90 (compiled out) and for a launch without the attribute.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// The start of a PDL kernel that reads nothing before the kernel ahead has finished.
__device__ __forceinline__ void pdl_start() {
    pdl_wait();
    pdl_trigger();
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
__device__ __forceinline__ void lse_add(float& m, float& s, float v) {
    if (v > m) {
        s = s * expf(m - v) + 1.0f;
        m = v;
    } else {
        s += expf(v - m);
    }
}

// `vec`: rows start 4-element aligned and `vocab` is a multiple of 4 (four per load).
template <typename T>
__device__ void cross_entropy_forward(const T* logits, const long long* targets, float* lse,
                                      float* loss, int vocab, int vec) {
    const long long row = blockIdx.x;
    const T* x = logits + row * vocab;
    float m = NEG_INF, s = 0.0f;
    if (vec) {
        for (int j = 4 * threadIdx.x; j < vocab; j += 4 * blockDim.x) {
            const Four f = load4(x, j);
#pragma unroll
            for (int k = 0; k < 4; ++k) lse_add(m, s, f.v[k]);
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) lse_add(m, s, load(x, j));
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
                                       const float* g, T* dlogits, int vocab, float inv_n,
                                       int vec) {
    const long long row = blockIdx.x;
    const T* x = logits + row * vocab;
    T* dx = dlogits + row * vocab;
    const float l = lse[row], scale = g[0] * inv_n;
    const long long t = targets[row];
    if (vec) {
        for (int j = 4 * threadIdx.x; j < vocab; j += 4 * blockDim.x) {
            Four f = load4(x, j);
#pragma unroll
            for (int k = 0; k < 4; ++k)
                f.v[k] = (expf(f.v[k] - l) - (j + k == t ? 1.0f : 0.0f)) * scale;
            store4(dx, j, f);
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float p = expf(load(x, j) - l);
            store(dx, j, (p - (j == t ? 1.0f : 0.0f)) * scale);
        }
    }
}

// Element-wise kernels take four elements per thread and step (`vec`: every pointer 4-element
// aligned), then the last n % 4 one by one: `first`, `stride` and `n4` below.
#define GRID_STRIDE                                                                               \
    const long long stride = (long long)gridDim.x * blockDim.x;                                   \
    const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;                     \
    const long long n4 = vec ? n / 4 : 0;

__device__ __forceinline__ float silu_mul(float a, float b) { return a / (1.0f + expf(-a)) * b; }

// SwiGLU's gate, element-wise: out = silu(a) * b.
// Whether a pointer allows four-element loads (a caller may ask for them without knowing).
template <typename T>
__device__ __forceinline__ bool at4(const T* p) {
    return (unsigned long long)p % (4 * sizeof(T)) == 0;
}

template <typename T>
__device__ void swiglu_forward(const T* a, const T* b, T* out, long long n, int vec) {
    vec = vec && at4(a) && at4(b) && at4(out);
    GRID_STRIDE
    for (long long q = first; q < n4; q += stride) {
        Four x = load4(a, 4 * q);
        const Four y = load4(b, 4 * q);
#pragma unroll
        for (int k = 0; k < 4; ++k) x.v[k] = silu_mul(x.v[k], y.v[k]);
        store4(out, 4 * q, x);
    }
    for (long long i = 4 * n4 + first; i < n; i += stride) store(out, i, silu_mul(load(a, i), load(b, i)));
}

// Its backward: da = g * b * σ(a) * (1 + a * (1 - σ(a))), db = g * silu(a).
__device__ __forceinline__ void swiglu_grad(float x, float y, float d, float& da, float& db) {
    const float sig = 1.0f / (1.0f + expf(-x));
    da = d * y * sig * (1.0f + x * (1.0f - sig));
    db = d * x * sig;
}

template <typename T>
__device__ void swiglu_backward(const T* a, const T* b, const T* g, T* da, T* db, long long n,
                                int vec) {
    vec = vec && at4(a) && at4(b) && at4(g) && at4(da) && at4(db);
    GRID_STRIDE
    for (long long q = first; q < n4; q += stride) {
        const Four x = load4(a, 4 * q), y = load4(b, 4 * q), d = load4(g, 4 * q);
        Four ga, gb;
#pragma unroll
        for (int k = 0; k < 4; ++k) swiglu_grad(x.v[k], y.v[k], d.v[k], ga.v[k], gb.v[k]);
        store4(da, 4 * q, ga);
        store4(db, 4 * q, gb);
    }
    for (long long i = 4 * n4 + first; i < n; i += stride) {
        float ga, gb;
        swiglu_grad(load(a, i), load(b, i), load(g, i), ga, gb);
        store(da, i, ga);
        store(db, i, gb);
    }
}

// The rotary embedding of `x [batch, heads, time, dim]` (strides xb, xh, xt; unit stride within a
// head) with full-width tables `c = [cos, cos]`, `s = [-sin, sin]` (`[batch or 1, 1, time, dim]`,
// strides cb, ct), into `y` (strides yb, yh, yt; unit stride within a head). The rotation exchanges the two halves of each head:
//   forward  y = x c + swap(x) s,     backward  dx = g c + swap(g s)
// (a rotation's backward is the inverse rotation).
template <typename T>
__device__ __forceinline__ void rotate_pair(const T* xr, const T* c, const T* s, T* yr, int i,
                                            int half, long long tr, int backward) {
    const float x0 = load(xr, i), x1 = load(xr, i + half);
    const float s0 = load(s, tr + i), s1 = load(s, tr + i + half);
    store(yr, i, rotate_one(x0, load(c, tr + i), x1, backward ? s1 : s0));
    store(yr, i + half, rotate_one(x1, load(c, tr + i + half), x0, backward ? s0 : s1));
}

template <typename T>
__device__ void rotary(const T* x, const T* c, const T* s, T* y, long long n, int heads, int time,
                       int dim, long long xb, long long xh, long long xt, long long cb,
                       long long ct, long long yb, long long yh, long long yt, int backward) {
    // A thread per four pairs (i..i+3, i+half..i+half+3) where every row and table row allows
    // four-element loads, else per pair; both halves from one read of each operand; 32-bit index
    // arithmetic where the units fit (a 64-bit division is a long emulated sequence: with six
    // per element, one pair per thread and two-byte loads the kernel ran at ~5 % of an H200's
    // bandwidth, docs/performance.md attempt 55). The same arithmetic per element either way.
    const int half = dim / 2;
    const bool vec = half % 4 == 0 && xb % 4 == 0 && xh % 4 == 0 && xt % 4 == 0 && cb % 4 == 0 &&
                     ct % 4 == 0 && yb % 4 == 0 && yh % 4 == 0 && yt % 4 == 0 && at4(x) &&
                     at4(c) && at4(s) && at4(y);
    const int per = vec ? 4 : 1, row_units = half / per;
    const long long units = n / 2 / per;
    const bool narrow = units <= 0xffffffffLL;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < units;
         idx += (long long)gridDim.x * blockDim.x) {
        long long b;
        int i, t, h;
        if (narrow) {
            const unsigned u = (unsigned)idx, r = u / (unsigned)row_units, q = r / (unsigned)time;
            i = (int)(u - r * (unsigned)row_units) * per;
            t = (int)(r - q * (unsigned)time);
            h = (int)(q % (unsigned)heads);
            b = q / (unsigned)heads;
        } else {
            const long long row = idx / row_units;
            i = (int)(idx - row * row_units) * per;
            const long long q = row / time;
            t = (int)(row - q * time);
            h = (int)(q % heads);
            b = q / heads;
        }
        const T* xr = x + b * xb + h * xh + t * xt;
        const long long tr = b * cb + t * ct;
        T* yr = y + b * yb + h * yh + t * yt;
        if (vec) {
            const Four x0 = load4(xr, i), x1 = load4(xr, i + half);
            const Four c0 = load4(c, tr + i), c1 = load4(c, tr + i + half);
            const Four s0 = load4(s, tr + i), s1 = load4(s, tr + i + half);
            Four y0, y1;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                y0.v[k] = rotate_one(x0.v[k], c0.v[k], x1.v[k], backward ? s1.v[k] : s0.v[k]);
                y1.v[k] = rotate_one(x1.v[k], c1.v[k], x0.v[k], backward ? s0.v[k] : s1.v[k]);
            }
            store4(yr, i, y0);
            store4(yr, i + half, y1);
        } else {
            rotate_pair(xr, c, s, yr, i, half, tr, backward);
        }
    }
}

// AdamW on one flat f32 bucket (torch's update with decoupled decay, `train::optim`'s formula):
//   g ← g·factor,  m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,
//   p ← p·keep − lr_c1 · m / (√v · inv_root_c2 + ε)
// with keep = 1 − lr·λ, lr_c1 = lr / (1 − β₁ᵗ), inv_root_c2 = 1 / √(1 − β₂ᵗ). `factor` (the
// clipping's, on the device) may be null (1); `m`, `v` are null on the first step (zero). New
// values go to p_out, m_out, v_out: one pass where torch's foreach AdamW makes about eight.
__device__ __forceinline__ void adamw_one(float p, float g, float m, float v, float f, float b1,
                                          float b2, float lr_c1, float inv_root_c2, float eps,
                                          float keep, float& po, float& mo, float& vo) {
    g *= f;
    mo = b1 * m + (1.0f - b1) * g;
    vo = b2 * v + (1.0f - b2) * (g * g);
    po = p * keep - lr_c1 * (mo / (sqrtf(vo) * inv_root_c2 + eps));
}

// The gradient in f32, or in bf16 as a bf16 product's weight gradient comes (`adamw_f32_bf16`:
// no f32 copy of it is made first, see `llama_model::weight_cast`); widened exactly on load.
// `half` (or null): the new parameters rounded to bf16 as well, the copy the next forward pass's
// products read instead of casting the f32 values again (`adamw_f32_bf16_copy`).
template <typename G>
__device__ void adamw(const float* p, const G* g, const float* m, const float* v, float* p_out,
                      float* m_out, float* v_out, long long n, const float* factor, float b1,
                      float b2, float lr_c1, float inv_root_c2, float eps, float keep, int vec,
                      bf16_t* half) {
    // Four-element pieces only where every pointer allows them (a range of a bucket may not).
    vec = vec && at4(p) && at4(g) && at4(p_out) && at4(m_out) && at4(v_out) &&
          (!m || (at4(m) && at4(v))) && (!half || at4(half));
    GRID_STRIDE
    const float f = factor ? factor[0] : 1.0f;
    for (long long q = first; q < n4; q += stride) {
        const long long i = 4 * q;
        const Four pp = load4(p, i), gg = load4(g, i);
        Four mm, vv, po, mo, vo;
        if (m) { mm = load4(m, i); vv = load4(v, i); }
        else {
#pragma unroll
            for (int k = 0; k < 4; ++k) { mm.v[k] = 0.0f; vv.v[k] = 0.0f; }
        }
#pragma unroll
        for (int k = 0; k < 4; ++k)
            adamw_one(pp.v[k], gg.v[k], mm.v[k], vv.v[k], f, b1, b2, lr_c1, inv_root_c2, eps, keep,
                      po.v[k], mo.v[k], vo.v[k]);
        store4(p_out, i, po);
        store4(m_out, i, mo);
        store4(v_out, i, vo);
        if (half) store4(half, i, po);
    }
    for (long long i = 4 * n4 + first; i < n; i += stride) {
        float po, mo, vo;
        adamw_one(p[i], load(g, i), m ? m[i] : 0.0f, v ? v[i] : 0.0f, f, b1, b2, lr_c1,
                  inv_root_c2, eps, keep, po, mo, vo);
        p_out[i] = po;
        m_out[i] = mo;
        v_out[i] = vo;
        if (half) store(half, i, po);
    }
}

#define ADAMW(NAME, G)                                                                            \
    extern "C" __global__ void NAME(const float* p, const G* g, const float* m, const float* v,    \
                                    float* p_out, float* m_out, float* v_out, long long n,        \
                                    const float* factor, float b1, float b2, float lr_c1,         \
                                    float inv_root_c2, float eps, float keep, int vec) {          \
        adamw<G>(p, g, m, v, p_out, m_out, v_out, n, factor, b1, b2, lr_c1, inv_root_c2, eps,     \
                 keep, vec, nullptr);                                                             \
    }
ADAMW(adamw_f32, float)
ADAMW(adamw_f32_bf16, bf16_t)
extern "C" __global__ void adamw_f32_bf16_copy(const float* p, const bf16_t* g, const float* m,
                                               const float* v, float* p_out, float* m_out,
                                               float* v_out, long long n, const float* factor,
                                               float b1, float b2, float lr_c1, float inv_root_c2,
                                               float eps, float keep, int vec, bf16_t* half) {
    adamw<bf16_t>(p, g, m, v, p_out, m_out, v_out, n, factor, b1, b2, lr_c1, inv_root_c2, eps,
                  keep, vec, half);
}

// Columns per thread that a row kernel keeps in registers: dim <= RMS_COLS * blockDim.x.
#define RMS_COLS 8

// The columns a thread of a row kernel holds: two runs of four, quads `threadIdx.x` and
// `threadIdx.x + blockDim.x` of the row (this is run h's first column), so that a warp loads and
// stores 16-byte (f32) or 8-byte (bf16) pieces side by side. 2-byte and 4-byte accesses kept a
// row's kernel at about half the card's bandwidth (H200, 1b: 45 µs forward for 100 MB, ncu,
// docs/performance.md attempt 64).
__device__ __forceinline__ int quad_col(int h) { return 4 * (threadIdx.x + h * blockDim.x); }

// The thread's RMS_COLS columns of `row` (zeros past `dim`), by quads where `vec` (dim a multiple
// of 4 and the row 4-element aligned).
template <typename T>
__device__ __forceinline__ void load_cols(const T* row, int dim, bool vec, float v[RMS_COLS]) {
#pragma unroll
    for (int h = 0; h < RMS_COLS / 4; ++h) {
        const int j = quad_col(h);
        if (vec && j < dim) {
            const Four f = load4(row, j);
#pragma unroll
            for (int e = 0; e < 4; ++e) v[4 * h + e] = f.v[e];
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) v[4 * h + e] = j + e < dim ? load(row, j + e) : 0.0f;
        }
    }
}

template <typename T>
__device__ __forceinline__ void store_cols(T* row, int dim, bool vec, const float v[RMS_COLS]) {
#pragma unroll
    for (int h = 0; h < RMS_COLS / 4; ++h) {
        const int j = quad_col(h);
        if (vec && j < dim) {
            Four f;
#pragma unroll
            for (int e = 0; e < 4; ++e) f.v[e] = v[4 * h + e];
            store4(row, j, f);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (j + e < dim) store(row, j + e, v[4 * h + e]);
        }
    }
}

// Whether rows of `dim` elements from these pointers allow quads.
template <typename A, typename B>
__device__ __forceinline__ bool rows_at4(int dim, const A* a, const B* b) {
    return dim % 4 == 0 && at4(a) && at4(b);
}

// RMSNorm forward, one block per row of `x [n, dim]`: r = 1 / sqrt(mean(x²) + eps) (kept for the
// backward pass) and y = (x * r) * gamma, in f32 and rounded once to y's dtype (x's, or the next
// layer's compute dtype: the cast is then free).
template <typename TX, typename TY>
__device__ void rms_norm_forward(const TX* x, const float* gamma, TY* y, float* r, int dim,
                                 float eps) {
    const long long row = blockIdx.x;
    const bool vec = rows_at4(dim, x, y) && at4(gamma);
    float v[RMS_COLS], g[RMS_COLS];
    load_cols(x + row * dim, dim, vec, v);
    load_cols(gamma, dim, vec, g);
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) ss += v[k] * v[k];
    const float rr = rsqrtf(block_sum(ss) / dim + eps);
    if (threadIdx.x == 0) r[row] = rr;
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) v[k] = v[k] * rr * g[k];
    store_cols(y + row * dim, dim, vec, v);
}

// The residual update and the next RMSNorm in one pass (inference): h = x + δ in f32 (δ widened
// exactly, as torch's promoting add does) and y = (h r) γ exactly as rms_norm_forward computes
// it (same block size, same columns per thread, same sums), one block per row.
//
// Under programmatic dependent launch only δ (the sublayer's output, written by the kernel just
// ahead) has to wait: γ is a weight, and x is the residual stream, written a whole sublayer
// earlier (its products lie between), by a kernel that had completed before the one just ahead
// could pass its own wait and let this one start. So γ, and with `early` x, are loaded before
// the wait, off the chain of dependent memory round trips that bounds a decoded token. The
// caller passes `early` = 0 if x may come from the kernel just ahead.
template <typename TD, typename TY>
__device__ void add_rms_norm(const float* x, const TD* delta, const float* gamma, float* h, TY* y,
                             int dim, float eps, int early) {
    const long long row = blockIdx.x;
    const bool vec = rows_at4(dim, x, delta) && rows_at4(dim, h, y) && at4(gamma);
    float v[RMS_COLS], g[RMS_COLS], d[RMS_COLS];
    load_cols(gamma, dim, vec, g);
    if (early) load_cols(x + row * dim, dim, vec, v);
    pdl_start();
    if (!early) load_cols(x + row * dim, dim, vec, v);
    load_cols(delta + row * dim, dim, vec, d);
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) {
        v[k] += d[k];
        ss += v[k] * v[k];
    }
    store_cols(h + row * dim, dim, vec, v);
    const float rr = rsqrtf(block_sum(ss) / dim + eps);
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) v[k] = v[k] * rr * g[k];
    store_cols(y + row * dim, dim, vec, v);
}

#define ADD_RMS_NORM(SUFFIX, TD, TY)                                                              \
    extern "C" __global__ void __launch_bounds__(1024) add_rms_norm_##SUFFIX(                     \
        const float* x, const TD* delta, const float* gamma, float* h, TY* y, int dim,            \
        float eps, int early) {                                                                   \
        add_rms_norm<TD, TY>(x, delta, gamma, h, y, dim, eps, early);                             \
    }
ADD_RMS_NORM(f32_f32, float, float)
ADD_RMS_NORM(bf16_bf16, bf16_t, bf16_t)
ADD_RMS_NORM(bf16_f32, bf16_t, float)

// RMSNorm backward over rows `blockIdx.x, blockIdx.x + gridDim.x, ...`:
//   x̂ = x r,  t = dy γ,  dx = r (t - x̂ mean(t x̂)),
// and this block's share of dγ = Σ_rows dy x̂, written to dgamma_partial[blockIdx.x, :] (the
// caller sums the blocks' rows). dy in y's dtype, dx in x's. The next row's dy and x are loaded
// before this row's sum, so that a block has loads in flight through its reduction.
template <typename TX, typename TY>
__device__ void rms_norm_backward(const TY* dy, const TX* x, const float* gamma, const float* r,
                                  TX* dx, float* dgamma_partial, long long n, int dim) {
    const bool vec = rows_at4(dim, dy, x) && rows_at4(dim, dx, dgamma_partial) && at4(gamma);
    float acc[RMS_COLS], g[RMS_COLS], xv[RMS_COLS];
#pragma unroll
    for (int k = 0; k < RMS_COLS; ++k) acc[k] = 0.0f;
    long long row = blockIdx.x;
    if (row < n) {
        load_cols(dy + row * dim, dim, vec, g);
        load_cols(x + row * dim, dim, vec, xv);
    }
    for (; row < n; row += gridDim.x) {
        const float rr = r[row];
        // γ again each row (an L1 hit): kept in registers it pushed the kernel past 64 of them.
        float xh[RMS_COLS], t[RMS_COLS];
        load_cols(gamma, dim, vec, t);
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < RMS_COLS; ++k) {
            xh[k] = xv[k] * rr;
            t[k] *= g[k];
            acc[k] += g[k] * xh[k];
            dot += t[k] * xh[k];
        }
        const long long next = row + gridDim.x;
        if (next < n) {
            load_cols(dy + next * dim, dim, vec, g);
            load_cols(x + next * dim, dim, vec, xv);
        }
        const float c = block_sum(dot) / dim;
#pragma unroll
        for (int k = 0; k < RMS_COLS; ++k) t[k] = rr * (t[k] - xh[k] * c);
        store_cols(dx + row * dim, dim, vec, t);
    }
    store_cols(dgamma_partial + blockIdx.x * (long long)dim, dim, vec, acc);
}

#define FOR_DTYPES(MACRO) MACRO(f32, float) MACRO(bf16, bf16_t)

#define INSTANTIATE(SUFFIX, T)                                                                    \
    extern "C" __global__ void cross_entropy_forward_##SUFFIX(                                    \
        const T* logits, const long long* targets, float* lse, float* loss, int vocab, int vec) { \
        cross_entropy_forward<T>(logits, targets, lse, loss, vocab, vec);                         \
    }                                                                                             \
    extern "C" __global__ void cross_entropy_backward_##SUFFIX(                                   \
        const T* logits, const long long* targets, const float* lse, const float* g, T* dlogits,  \
        int vocab, float inv_n, int vec) {                                                        \
        cross_entropy_backward<T>(logits, targets, lse, g, dlogits, vocab, inv_n, vec);           \
    }                                                                                             \
    extern "C" __global__ void swiglu_forward_##SUFFIX(const T* a, const T* b, T* out,            \
                                                       long long n, int vec) {                    \
        pdl_start();                                                                              \
        swiglu_forward<T>(a, b, out, n, vec);                                                     \
    }                                                                                             \
    extern "C" __global__ void swiglu_backward_##SUFFIX(const T* a, const T* b, const T* g,       \
                                                        T* da, T* db, long long n, int vec) {     \
        swiglu_backward<T>(a, b, g, da, db, n, vec);                                              \
    }                                                                                             \
    extern "C" __global__ void rotary_##SUFFIX(                                                   \
        const T* x, const T* c, const T* s, T* y, long long n, int heads, int time, int dim,      \
        long long xb, long long xh, long long xt, long long cb, long long ct, long long yb,       \
        long long yh, long long yt, int backward) {                                               \
        pdl_start();                                                                              \
        rotary<T>(x, c, s, y, n, heads, time, dim, xb, xh, xt, cb, ct, yb, yh, yt, backward);     \
    }                                                                                             \
    RMS_NORM(SUFFIX, T, T)

// RMSNorm over x of type TX with its output (and the output's gradient) of type TY.
#define RMS_NORM(SUFFIX, TX, TY)                                                                  \
    extern "C" __global__ void __launch_bounds__(1024) rms_norm_forward_##SUFFIX(                 \
        const TX* x, const float* gamma, TY* y, float* r, int dim, float eps) {                   \
        pdl_start();                                                                              \
        rms_norm_forward<TX, TY>(x, gamma, y, r, dim, eps);                                       \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(1024) rms_norm_backward_##SUFFIX(                \
        const TY* dy, const TX* x, const float* gamma, const float* r, TX* dx,                    \
        float* dgamma_partial, long long n, int dim) {                                            \
        rms_norm_backward<TX, TY>(dy, x, gamma, r, dx, dgamma_partial, n, dim);                   \
    }

FOR_DTYPES(INSTANTIATE)
// The residual stream in f32 normalised into a bf16 layer input.
RMS_NORM(f32_bf16, float, bf16_t)

// Column sums of a row-major f32 `x [rows, cols]` into `out [cols]`, for RMSNorm's per-block
// partial rows of the gain's gradient on CubeCL (whose own sum over the rows of such a small
// matrix took ~120 µs). A block of 32 x 8 threads per 32 columns: each of the 8 row groups walks
// every 8th row (a warp reads 32 neighbouring columns of a row at once), then the groups' sums
// meet in shared memory in a fixed order.
extern "C" __global__ void __launch_bounds__(256) column_sum_f32(const float* x, float* out,
                                                                 int rows, int cols) {
    __shared__ float part[8][33];
    const int c = blockIdx.x * 32 + (threadIdx.x & 31), g = threadIdx.x >> 5;
    float s = 0.0f;
    if (c < cols)
        for (int r = g; r < rows; r += 8) s += x[(long long)r * cols + c];
    part[g][threadIdx.x & 31] = s;
    __syncthreads();
    if (g == 0 && c < cols) {
        float t = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) t += part[k][threadIdx.x & 31];
        out[c] = t;
    }
}
