// A row's next token drawn from its logits in one kernel: the definition of
// `llama_model::sampler` (greedy = the first largest logit; else w = exp((l - max) / T), top-k
// keeping the logits that reach the k-th largest, top-p the weights that reach the one at which
// the descending running sum first reaches p·Σw, then the first token in vocabulary order where
// the kept weights' running sum passes u·Σ). Written with tensor operations it was ~100 small
// kernels, a sort among them, after which torch's host waited for the device: ~0.9 ms a token
// on an H200, where this is one launch that never makes the host wait.
//
// One block of 1024 threads per row. Each warp owns a contiguous segment of the row and reads it
// 32 consecutive entries at a time, so reads coalesce and a warp's scan walks vocabulary order.
// The k-th largest logit and the top-p threshold are found by radix selection over the values'
// bits, 8 bits a pass (counts for top-k, f64 sums of weights for top-p), not by sorting. Sums
// are f64 (the host reference's precision); the weights are f32 as the tensor path's are.
//
// logits f32 [rows, n] contiguous; u f32 [rows] (read only when temperature > 0); out int64
// [rows]; top_k <= 0 or >= n: no top-k; top_p >= 1: no top-p.

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)

// Order-preserving key of a float: larger float, larger unsigned key.
__device__ __forceinline__ unsigned int sample_key(float f) {
    const unsigned int b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float sample_unkey(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum of `v` over the block (1024 threads), returned to every thread.
__device__ double block_sum_f64(double v) {
    __shared__ double partial[SAMPLE_WARPS + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum_f64(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double t = warp_sum_f64(partial[lane]);
        if (lane == 0) partial[SAMPLE_WARPS] = t;
    }
    __syncthreads();
    const double total = partial[SAMPLE_WARPS];
    __syncthreads();
    return total;
}

struct SampleRow {
    const float* l;
    int start, end;  // this warp's segment [start, end)
};

// The weight of entry j (0 where dropped by top-k).
__device__ __forceinline__ float sample_weight(const SampleRow& r, int j, float top, float t,
                                               float kth) {
    const float l = r.l[j];
    return l < kth ? 0.0f : expf((l - top) / t);
}

// Radix selection over 8-bit digits, most significant first: the key K with
// `above(K) < want <= above(K) + at(K)`, `at` a count (top-k) or the weights' sum (top-p) of the
// entries whose key is K. `value(j, key)` gives entry j's key and amount (0: not a candidate).
// Each warp fills its own histogram (f32: exact for counts, and a warp's segment is a few hundred
// weights), so only a warp's own lanes contend for a bucket; the 32 are then added in f64.
// (One shared f64 histogram took ~100 µs a pass over a 32,000-token row: nearly every weight
// shares its exponent byte, so the adds to that bucket ran one at a time.)
// (At file scope: one copy for both uses, 34 KB.)
__shared__ float sample_hist[SAMPLE_WARPS][256];
__shared__ double sample_total[256];
__shared__ unsigned int sample_chosen;
__shared__ double sample_rest;

template <typename F>
__device__ unsigned int radix_select(const SampleRow& r, double want, F value) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned int prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = lane; b < 256; b += 32) sample_hist[warp][b] = 0.0f;
        __syncwarp();
        for (int j = r.start + lane; j < r.end; j += 32) {
            unsigned int key;
            const float amount = value(j, key);
            if (amount > 0.0f && (key & mask) == prefix)
                atomicAdd(&sample_hist[warp][(key >> shift) & 255u], amount);
        }
        __syncthreads();
        if (threadIdx.x < 256) {
            double t = 0.0;
            for (int w = 0; w < SAMPLE_WARPS; ++w) t += sample_hist[w][threadIdx.x];
            sample_total[threadIdx.x] = t;
        }
        __syncthreads();
        if (warp == 0) {
            // Lane l holds buckets 255 - 8l down to 248 - 8l; the lanes' sums scanned from the
            // top give each lane the amount above its buckets.
            double mine = 0.0;
            for (int i = 0; i < 8; ++i) mine += sample_total[255 - 8 * lane - i];
            double incl = mine;
            for (int o = 1; o < 32; o <<= 1) {
                const double up = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += up;
            }
            double above = incl - mine;
            // The first bucket from the top where the running amount reaches `want`; the lowest
            // non-empty one when rounding leaves it short.
            const unsigned int reach = __ballot_sync(0xffffffffu, mine > 0.0 && incl >= want);
            const unsigned int any = __ballot_sync(0xffffffffu, mine > 0.0);
            const int owner = reach ? __ffs(reach) - 1 : (any ? 31 - __clz(any) : 31);
            if (lane == owner) {
                int pick = -1;
                double run = above;
                for (int i = 0; reach && i < 8; ++i) {
                    const int b = 255 - 8 * lane - i;
                    if (sample_total[b] > 0.0 && run + sample_total[b] >= want) {
                        pick = b;
                        break;
                    }
                    run += sample_total[b];
                }
                if (pick < 0) {
                    for (int i = 0; i < 8; ++i)
                        if (sample_total[255 - 8 * lane - i] > 0.0) pick = 255 - 8 * lane - i;
                    pick = max(pick, 0);
                    run = above;
                    for (int b = 255 - 8 * lane; b > pick; --b) run += sample_total[b];
                }
                sample_chosen = (unsigned int)pick;
                sample_rest = want - run;
            }
        }
        __syncthreads();
        prefix |= sample_chosen << shift;
        mask |= 255u << shift;
        want = sample_rest;
        __syncthreads();
    }
    return prefix;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows_f32(const float* logits, const float* u, long long* out, int n, float t,
                    int top_k, float top_p) {
    __shared__ float best_v[SAMPLE_WARPS];
    __shared__ int best_i[SAMPLE_WARPS];
    __shared__ double seg_sum[SAMPLE_WARPS];
    __shared__ int found, last_live;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // Warp segments: a multiple of 32 entries each.
    const int seg = ((n + SAMPLE_WARPS - 1) / SAMPLE_WARPS + 31) / 32 * 32;
    SampleRow r;
    r.l = logits + (long long)blockIdx.x * n;
    r.start = min(n, warp * seg);
    r.end = min(n, r.start + seg);

    // The largest logit and its first index.
    float bv = NEG_INF;
    int bi = n;
    for (int j = r.start + lane; j < r.end; j += 32) {
        const float l = r.l[j];
        if (l > bv || (l == bv && j < bi)) {
            bv = l;
            bi = j;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        best_v[warp] = bv;
        best_i[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < SAMPLE_WARPS; ++w)
            if (best_v[w] > best_v[0] || (best_v[w] == best_v[0] && best_i[w] < best_i[0])) {
                best_v[0] = best_v[w];
                best_i[0] = best_i[w];
            }
        found = n;
        last_live = -1;
    }
    __syncthreads();
    const float top = best_v[0];
    if (!(t > 0.0f)) {
        if (threadIdx.x == 0) out[blockIdx.x] = best_i[0] < n ? best_i[0] : 0;
        return;
    }

    // Top-k: the k-th largest logit (counted with multiplicity).
    float kth = NEG_INF;
    if (top_k > 0 && top_k < n) {
        const unsigned int k = radix_select(r, (double)top_k, [&](int j, unsigned int& key) {
            key = sample_key(r.l[j]);
            return 1.0f;
        });
        kth = sample_unkey(k);
    }

    // Top-p: the largest weight whose own and larger weights sum to p·Σw.
    float cut = 0.0f;
    if (top_p < 1.0f) {
        double total = 0.0;
        for (int j = r.start + lane; j < r.end; j += 32) total += sample_weight(r, j, top, t, kth);
        total = block_sum_f64(total);
        const unsigned int k =
            radix_select(r, (double)top_p * total, [&](int j, unsigned int& key) {
                const float w = sample_weight(r, j, top, t, kth);
                key = __float_as_uint(w);  // w >= 0: its bits order as it does
                return w;
            });
        cut = __uint_as_float(k);
    }

    // The kept weights' sums per warp segment, and the last kept token.
    double s = 0.0;
    int last = -1;
    for (int j = r.start + lane; j < r.end; j += 32) {
        const float w = sample_weight(r, j, top, t, kth);
        if (w > 0.0f && w >= cut) {
            s += w;
            last = j;
        }
    }
    s = warp_sum_f64(s);
    for (int o = 16; o > 0; o >>= 1) last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
    if (lane == 0) {
        seg_sum[warp] = s;
        atomicMax(&last_live, last);
    }
    __syncthreads();
    double before = 0.0, total = 0.0;
    for (int w = 0; w < SAMPLE_WARPS; ++w) {
        if (w < warp) before += seg_sum[w];
        total += seg_sum[w];
    }
    const double target = (double)u[blockIdx.x] * total;
    // The warp whose segment holds the crossing walks it 32 entries at a time.
    if (before <= target && target < before + seg_sum[warp]) {
        double run = before;
        for (int base = r.start; base < r.end; base += 32) {
            const int j = base + lane;
            double w = 0.0;
            if (j < r.end) {
                const float wf = sample_weight(r, j, top, t, kth);
                if (wf > 0.0f && wf >= cut) w = wf;
            }
            double incl = w;
            for (int o = 1; o < 32; o <<= 1) {
                const double up = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += up;
            }
            const unsigned int past = __ballot_sync(0xffffffffu, w > 0.0 && run + incl > target);
            if (past) {
                if (lane == 0) atomicMin(&found, base + __ffs(past) - 1);
                break;
            }
            run += __shfl_sync(0xffffffffu, incl, 31);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const int j = found < n ? found : last_live;
        out[blockIdx.x] = j >= 0 ? j : best_i[0];
    }
}
