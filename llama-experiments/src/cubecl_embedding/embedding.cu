// The token embedding's weight gradient for CubeCL's CUDA backend (see mod.rs for why and how it
// is launched): dw [vocab, dim] (f32) = Σ over tokens i of dy[i, :] added into row ids[i].
// `embedding_zero` clears dw, then `embedding_backward` adds each token's row with f32 atomics,
// one block per token. The atomics make the order of the additions into a row that several tokens
// share vary between runs (the last bits of such rows can differ; Burn's serial kernel, kept by
// LLAMA_EMBEDDING=decomposed, is bit-reproducible).

extern "C" __global__ void embedding_zero(float* dw, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        dw[i] = 0.0f;
}

// `ids` are the token ids as f32 (exact below 2^24; the launcher checks the vocabulary's size).
// An id outside [0, vocab) adds nothing.
extern "C" __global__ void embedding_backward(const float* dy, const float* ids, float* dw, int dim,
                                              int vocab) {
    const long long row = blockIdx.x;
    const float f = ids[row];
    if (!(f >= 0.0f && f < (float)vocab)) return;
    const float* src = dy + row * dim;
    float* dst = dw + (long long)(int)f * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) atomicAdd(dst + j, src[j]);
}
