// Products with few rows (decoding's projections): y[r, n] = Σ_k x[r, k] · w[k, n], bf16 in and
// out, sums in f32. Appended to kernels.cu (its bf16 helpers) before NVRTC compiles them.
//
// Why not cuBLAS: at one to eight rows a product only streams its weight, and on an H200 torch's
// cuBLAS reached 30–47 % of the memory bandwidth on the 2,048-wide products of the `1b` preset
// (2,048 × 2,048 in 5.9 µs against 1.75 µs; its split-K form adds a reduction kernel), which made
// them half of a decoded token. Here every block streams a 64-column tile of `w` over a slice of
// `k` with four 16-byte loads in flight per thread, and the slices of a tile are added by the
// last of its blocks to finish (in slice order: the result does not depend on the timing), so a
// product is one kernel with enough blocks to fill the card.
//
// Grid: tiles × splits blocks (blockIdx.x = split · tiles + tile), GEMV_THREADS threads each.
// `n` and `ldw` multiples of 8, `w` 16-byte aligned; `x` contiguous [rows, k]; `partial` holds
// splits × ROWS × n floats (unused with one split).

#define GEMV_COLS 64
#define GEMV_THREADS 256
#define GEMV_UNROLL 4
#define GEMV_MAX_TILES 4096

// Blocks of each tile that have finished, reset by the tile's last block (so zero between
// launches; launches on one stream run one after another).
__device__ unsigned int gemv_arrivals[GEMV_MAX_TILES];

__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
    const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

template <int ROWS>
__device__ void gemv(const bf16_t* x, const bf16_t* w, bf16_t* y, float* partial, int rows, int k,
                     int n, long long ldw, int tiles, int chunk) {
    __shared__ float red[(GEMV_THREADS / 32) * ROWS * GEMV_COLS];
    __shared__ bool last;
    const int tile = blockIdx.x % tiles, split = blockIdx.x / tiles, splits = gridDim.x / tiles;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int col = tile * GEMV_COLS + (tid & 7) * 8;
    const bool live = col < n;
    const int k0 = split * chunk, k1 = min(k, k0 + chunk);
    float acc[ROWS][8];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][j] = 0.0f;
    for (int kk = k0 + (tid >> 3); kk < k1; kk += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int kr = kk + 32 * u;
            wv[u] = (live && kr < k1) ? *reinterpret_cast<const uint4*>(w + kr * ldw + col)
                                      : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int kr = kk + 32 * u;
            if (kr >= k1) break;
            float wf[8];
            unpack8(wv[u], wf);
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const float xv = r < rows ? load(x, (long long)r * k + kr) : 0.0f;
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[r][j] += xv * wf[j];
            }
        }
    }
    // Lanes l, l ^ 8, l ^ 16, l ^ 24 hold the same columns: add them, then the warps.
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float a = acc[r][j];
            a += __shfl_xor_sync(0xffffffffu, a, 8);
            a += __shfl_xor_sync(0xffffffffu, a, 16);
            acc[r][j] = a;
        }
    if (lane < 8) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int j = 0; j < 8; ++j) red[(warp * ROWS + r) * GEMV_COLS + lane * 8 + j] = acc[r][j];
    }
    __syncthreads();
    const int outs = rows * GEMV_COLS;
    for (int i = tid; i < outs; i += GEMV_THREADS) {
        const int r = i / GEMV_COLS, c = i % GEMV_COLS, nc = tile * GEMV_COLS + c;
        float s = 0.0f;
        for (int wp = 0; wp < GEMV_THREADS / 32; ++wp) s += red[(wp * ROWS + r) * GEMV_COLS + c];
        if (nc >= n) continue;
        if (splits == 1)
            store(y, (long long)r * n + nc, s);
        else
            partial[((long long)split * ROWS + r) * n + nc] = s;
    }
    if (splits == 1) return;
    // The last block of the tile adds the slices' sums (threadfence: this block's partial sums
    // are visible before its arrival is counted).
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(&gemv_arrivals[tile], 1u) == (unsigned int)(splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int i = tid; i < outs; i += GEMV_THREADS) {
        const int r = i / GEMV_COLS, nc = tile * GEMV_COLS + i % GEMV_COLS;
        if (nc >= n) continue;
        float s = 0.0f;
        for (int sp = 0; sp < splits; ++sp) s += __ldcg(partial + ((long long)sp * ROWS + r) * n + nc);
        store(y, (long long)r * n + nc, s);
    }
    if (tid == 0) gemv_arrivals[tile] = 0;
}

#define GEMV(R)                                                                                   \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS)                                     \
        gemv_r##R##_bf16(const bf16_t* x, const bf16_t* w, bf16_t* y, float* partial, int rows,  \
                         int k, int n, long long ldw, int tiles, int chunk) {                      \
        gemv<R>(x, w, y, partial, rows, k, n, ldw, tiles, chunk);                                 \
    }
GEMV(1)
GEMV(2)
GEMV(4)
GEMV(8)
