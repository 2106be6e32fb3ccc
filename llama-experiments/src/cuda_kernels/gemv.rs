//! The launcher of the few-row products (`gemv.cu`): decoding's projections.

use tch::{Kind, Tensor};

use super::{launch, loaded, ptr};

/// Threads per block (eight warps: eight outputs), as in `gemv.cu`.
const THREADS: usize = 256;
const OUTPUTS_PER_BLOCK: usize = THREADS / 32;

/// `x [1, k] · w [k, n]`, bf16 in and out (f32 sums), in one kernel that streams the weight at
/// close to the memory bandwidth (one row only: more were slower than cuBLAS, see `gemv.cu`).
/// `w` must be the transposed view of an `[n, k]` matrix (strides `[1, ldw]`: each output's
/// weights contiguous, as `Llama::with_inference_weights` stores them for a backend with this
/// kernel), possibly a row slice of a taller one. `None` for anything else (the caller multiplies
/// with torch).
pub fn gemv(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    if x.kind() != Kind::BFloat16 || w.kind() != Kind::BFloat16 || x.device() != w.device() {
        return None;
    }
    let (xs, ws, st) = (x.size(), w.size(), w.stride());
    let (&[1, k], &[wk, n]) = (&xs[..], &ws[..]) else {
        return None;
    };
    let ldw = st[1];
    if wk != k
        || k <= 0
        || n <= 0
        || k % 8 != 0
        || st[0] != 1
        || ldw < k
        || ldw % 8 != 0
        || !ptr(w).is_multiple_of(16)
    {
        return None;
    }
    let kern = loaded(x.device())?;
    let x = x.contiguous();
    if !ptr(&x).is_multiple_of(16) {
        return None;
    }
    let y = Tensor::empty([1, n], (Kind::BFloat16, x.device()));
    let blocks = usize::try_from(n).ok()?.div_ceil(OUTPUTS_PER_BLOCK);
    let (k, n) = (i32::try_from(k).ok()?, i32::try_from(n).ok()?);
    launch(
        &kern,
        "gemv_bf16".to_string(),
        blocks,
        THREADS,
        &[&ptr(&x), &ptr(w), &ptr(&y), &k, &n, &ldw],
    )?;
    Some(y)
}
