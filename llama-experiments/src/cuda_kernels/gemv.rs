//! The launchers of the one-row products (`gemv.cu`): decoding's projections.

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
    let (x, k, n, ldw) = checked(x, w)?;
    launch_gemv("gemv_bf16", &x, w, k, n, ldw)
}

/// SwiGLU of the stacked gate and up products, `silu(x · w[:, :h]) ⊙ (x · w[:, h:])` `[1, h]`, in
/// one kernel: the same bits as [`gemv`] of each half followed by `swiglu_forward`. `w` `[k, 2h]`
/// as [`gemv`] takes it.
pub fn gemv_swiglu(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    let (x, k, n, ldw) = checked(x, w)?;
    if n % 2 != 0 {
        return None;
    }
    launch_gemv("gemv_swiglu_bf16", &x, w, k, n / 2, ldw)
}

/// `x` contiguous with `(k, n, ldw)` when `x [1, k]` and `w [k, n]` fit the kernels.
fn checked(x: &Tensor, w: &Tensor) -> Option<(Tensor, i64, i64, i64)> {
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
    let x = x.contiguous();
    ptr(&x).is_multiple_of(16).then_some((x, k, n, ldw))
}

/// Launches `name` over `outputs` outputs (one warp each).
fn launch_gemv(
    name: &str,
    x: &Tensor,
    w: &Tensor,
    k: i64,
    outputs: i64,
    ldw: i64,
) -> Option<Tensor> {
    let kern = loaded(x.device())?;
    let y = Tensor::empty([1, outputs], (Kind::BFloat16, x.device()));
    let blocks = usize::try_from(outputs).ok()?.div_ceil(OUTPUTS_PER_BLOCK);
    let (k, outputs) = (i32::try_from(k).ok()?, i32::try_from(outputs).ok()?);
    launch(
        &kern,
        name.to_string(),
        blocks,
        THREADS,
        &[&ptr(x), &ptr(w), &ptr(&y), &k, &outputs, &ldw],
    )?;
    Some(y)
}
