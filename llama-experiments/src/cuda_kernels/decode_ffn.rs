//! The launcher of decoding's feed-forward sublayer in one kernel (`decode_ffn.cu`).

use tch::{Kind, Tensor};

use super::gemv::parts;
use super::{launch, loaded, ptr, row_block};

/// Threads per block (`DFFN_THREADS` in `decode_ffn.cu`).
const THREADS: u32 = 512;
/// Most columns of either product (`DFFN_MAX_COLS`: the row kept in shared memory).
const MAX_COLS: i64 = 16_384;

/// The leading dimension of `w [k, n]` when it is the transposed view of an out-major `[n, k]`
/// matrix the products read (strides `[1, ldw]`, 16-byte aligned rows), else `None`.
fn out_major(w: &Tensor, k: i64, n: i64) -> Option<i64> {
    let st = w.stride();
    let ldw = st[1];
    (w.kind() == Kind::BFloat16
        && w.size() == [k, n]
        && st[0] == 1
        && ldw >= k
        && ldw % 8 == 0
        && ptr(w).is_multiple_of(16))
    .then_some(ldw)
}

/// The pre-norm SwiGLU feed-forward sublayer of one decoded row: `(h, y)` with `h = x + δ`
/// (f32 `[1, dim]`; δ bf16) and `y = (silu(a W₁) ⊙ a W₃) W₂` (bf16) for `a = rms_norm(h) · γ`,
/// in one kernel with the bits of the separate ones (`add_rms_norm`, `gemv`, `swiglu_forward`).
/// `w_gu` is the stacked gate/up weight (`[dim, 2 · hidden]`, gate first) and `w_down`
/// (`[hidden, dim]`), both transposed views of out-major matrices as the one-row product takes
/// them. `None` for anything else, or when the kernel cannot run (the caller runs the separate
/// kernels).
pub fn decode_ffn(
    x: &Tensor,
    delta: &Tensor,
    gamma: &Tensor,
    eps: f64,
    w_gu: &Tensor,
    w_down: &Tensor,
    out: Kind,
) -> Option<(Tensor, Tensor)> {
    if out != Kind::BFloat16 || x.kind() != Kind::Float || delta.kind() != Kind::BFloat16 {
        return None;
    }
    let &[1, dim] = &x.size()[..] else {
        return None;
    };
    let &[_, gu] = &w_gu.size()[..] else {
        return None;
    };
    let hidden = gu / 2;
    let device = x.device();
    if delta.size() != [1, dim]
        || gamma.size() != [dim]
        || [
            delta.device(),
            gamma.device(),
            w_gu.device(),
            w_down.device(),
        ]
        .iter()
        .any(|d| *d != device)
        || dim <= 0
        || hidden <= 0
        || dim % 8 != 0
        || hidden % 8 != 0
        || dim > MAX_COLS
        || hidden > MAX_COLS
    {
        return None;
    }
    let ldw_gu = out_major(w_gu, dim, 2 * hidden)?;
    let ldw_down = out_major(w_down, hidden, dim)?;
    let norm_threads = row_block(dim as usize)?;
    let k = loaded(device)?;
    let f = k.functions.get("decode_ffn_bf16")?;
    // A grid barrier needs every block resident at once: at most what the device holds.
    let per_sm = f
        .occupancy_max_active_blocks_per_multiprocessor(THREADS, 0, None)
        .ok()?;
    let grid = k.sms * per_sm as usize;
    if grid == 0 {
        return None;
    }
    let (x, delta) = (x.contiguous(), delta.contiguous());
    let gamma = gamma.to_kind(Kind::Float).contiguous();
    let h = x.empty_like();
    let gu = Tensor::empty([2 * hidden], (Kind::BFloat16, device));
    let y = Tensor::empty([1, dim], (Kind::BFloat16, device));
    let (parts_gu, parts_down) = (parts(dim) as i32, parts(hidden) as i32);
    let (dim, hidden, eps, norm_threads) =
        (dim as i32, hidden as i32, eps as f32, norm_threads as i32);
    launch(
        &k,
        "decode_ffn_bf16".to_string(),
        grid,
        THREADS as usize,
        &[
            &ptr(&x),
            &ptr(&delta),
            &ptr(&gamma),
            &ptr(w_gu),
            &ldw_gu,
            &ptr(w_down),
            &ldw_down,
            &ptr(&h),
            &ptr(&gu),
            &ptr(&y),
            &dim,
            &hidden,
            &eps,
            &norm_threads,
            &parts_gu,
            &parts_down,
        ],
    )?;
    Some((h, y))
}
