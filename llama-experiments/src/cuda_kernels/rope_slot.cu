// A decoded token's queries and keys rotated and its keys and values written to the KV cache at a
// device-side slot, in one kernel (four before: two rotations, two slot writes, 2–3 µs each on an
// H200 whatever their size). Appended to kernels.cu (its helpers) before NVRTC compiles them.
//
// q [b, h, d], k and v [b, hkv, d] (one position, contiguous), tables c and s [b, d] (the rotary
// operation's full-width ones: [cos, cos] and [−sin, sin]), q_out [b, h, d]; the caches
// [b, hkv, capacity, d] with strides kcb, kch between rows and heads and d between positions;
// `slot` one int64 on the device. The rotation is the rotary kernel's expression, so the bits
// match it. One thread per element of q, k and v.
template <typename T>
__device__ void rope_slot(const T* q, const T* k, const T* v, const T* c, const T* s, T* q_out,
                          T* kc, T* vc, const long long* slot, int b, int h, int hkv, int d,
                          long long kcb, long long kch) {
    const long long nq = (long long)b * h * d, nk = (long long)b * hkv * d;
    const int half = d / 2;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < nq + 2 * nk;
         idx += (long long)gridDim.x * blockDim.x) {
        if (idx < nq) {
            const int i = (int)(idx % d);
            const long long row = idx / ((long long)h * d);
            const long long base = idx - i;
            const int j = i < half ? i + half : i - half;
            const long long tr = row * d;
            store(q_out, idx,
                  rotate_one(load(q, base + i), load(c, tr + i), load(q, base + j), load(s, tr + i)));
            continue;
        }
        const bool is_k = idx < nq + nk;
        const long long e = idx - nq - (is_k ? 0 : nk);
        const int i = (int)(e % d);
        const long long rh = e / d, row = rh / hkv, head = rh % hkv;
        const long long at = row * kcb + head * kch + slot[0] * d + i;
        if (is_k) {
            const int j = i < half ? i + half : i - half;
            const long long tr = row * d;
            store(kc, at, rotate_one(load(k, e), load(c, tr + i), load(k, e - i + j), load(s, tr + i)));
        } else {
            vc[at] = v[e];
        }
    }
}

#define ROPE_SLOT(SUFFIX, T)                                                                      \
    extern "C" __global__ void rope_slot_##SUFFIX(                                                \
        const T* q, const T* k, const T* v, const T* c, const T* s, T* q_out, T* kc, T* vc,       \
        const long long* slot, int b, int h, int hkv, int d, long long kcb, long long kch) {      \
        pdl_start();                                                                              \
        rope_slot<T>(q, k, v, c, s, q_out, kc, vc, slot, b, h, hkv, d, kcb, kch);                 \
    }
ROPE_SLOT(f32, float)
ROPE_SLOT(bf16, bf16_t)
