//! The launcher of the few-row products (`gemv.cu`): decoding's projections.

use tch::{Kind, Tensor};

use super::{launch, launch_shared, loaded, ptr, ready, row_block};

/// Warps per block when each output takes one (eight outputs).
const WARPS: usize = 8;
/// Columns one warp covers in one pass of loads (`GEMV_COLS` in `gemv.cu`).
const WARP_COLS: i64 = 2048;
/// Most warps per output (a block holds at most 1,024 threads).
const MAX_PARTS: i64 = 32;

/// Warps per output for rows of `k` columns: one pass of loads each (`k / 2,048` rounded up),
/// or one warp for every row under `LLAMA_GEMV_SPLIT=off`.
fn parts(k: i64) -> i64 {
    static SPLIT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let split = *SPLIT.get_or_init(|| crate::backend::knob_on("LLAMA_GEMV_SPLIT", "off"));
    match split {
        true => (k + WARP_COLS - 1) / WARP_COLS,
        false => 1,
    }
    .clamp(1, MAX_PARTS)
}

/// `x [1, k] · w [k, n]`, bf16 in and out (f32 sums), in one kernel that streams the weight at
/// close to the memory bandwidth (one row only: more were slower than cuBLAS, see `gemv.cu`);
/// rows longer than 2,048 columns split over several warps (`LLAMA_GEMV_SPLIT=auto|off`).
/// `w` must be the transposed view of an `[n, k]` matrix (strides `[1, ldw]`: each output's
/// weights contiguous, as `Llama::with_inference_weights` stores them for a backend with this
/// kernel), possibly a row slice of a taller one. `None` for anything else (the caller multiplies
/// with torch).
pub fn gemv(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    if x.kind() != Kind::BFloat16 || x.size().first() != Some(&1) {
        return None;
    }
    let shape = Shape::of(w, x.size()[1..].iter().product(), x.device())?;
    let kern = loaded(x.device())?;
    let x = x.contiguous();
    if !ptr(&x).is_multiple_of(16) {
        return None;
    }
    let y = Tensor::empty([1, shape.n], (Kind::BFloat16, x.device()));
    let (blocks, threads) = shape.grid()?;
    let (k, n, ldw, parts) = shape.args()?;
    launch(
        &kern,
        "gemv_bf16".to_string(),
        blocks,
        threads,
        &[&ptr(&x), &ptr(w), &ptr(&y), &k, &n, &ldw, &parts],
    )?;
    Some(y)
}

/// The product's shape: `w` `[k, n]` bf16, the transposed view of `[n, k]` rows `ldw` apart.
struct Shape {
    k: i64,
    n: i64,
    ldw: i64,
}

impl Shape {
    fn of(w: &Tensor, k: i64, device: tch::Device) -> Option<Self> {
        let (ws, st) = (w.size(), w.stride());
        let &[wk, n] = &ws[..] else {
            return None;
        };
        let ldw = st[1];
        let fits = w.kind() == Kind::BFloat16
            && w.device() == device
            && wk == k
            && k > 0
            && n > 0
            && k % 8 == 0
            && st[0] == 1
            && ldw >= k
            && ldw % 8 == 0
            && ptr(w).is_multiple_of(16);
        fits.then_some(Self { k, n, ldw })
    }

    /// `(blocks, threads)`.
    fn grid(&self) -> Option<(usize, usize)> {
        let parts = parts(self.k) as usize;
        let per_block = (WARPS / parts).max(1);
        let blocks = usize::try_from(self.n).ok()?.div_ceil(per_block);
        Some((blocks, 32 * parts * per_block))
    }

    /// The kernel's `k, n, ldw, parts`.
    fn args(&self) -> Option<(i32, i32, i64, i32)> {
        Some((
            i32::try_from(self.k).ok()?,
            i32::try_from(self.n).ok()?,
            self.ldw,
            i32::try_from(parts(self.k)).ok()?,
        ))
    }
}

/// The RMSNorm of the residual stream folded into the one-row product that reads it: with
/// `h = x + δ` (or `x` without δ), `(h, rms_norm(h) · γ · w)` bit for bit as
/// [`super::add_rms_norm`] (or [`super::rms_norm_forward`]) into bf16 followed by [`gemv`], in
/// one kernel (`gemv_norm_bf16`). `x` f32 `[1, k]`, `δ` bf16 `[1, k]`, `γ` `[k]`, `w` as
/// [`gemv`] takes it; `h` is `x` itself without δ. `None` for anything else.
pub fn gemv_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    gamma: &Tensor,
    eps: f64,
    w: &Tensor,
) -> Option<(Tensor, Tensor)> {
    let (x, kern) = ready(x)?;
    let &[1, k] = &x.size()[..] else {
        return None;
    };
    if x.kind() != Kind::Float || gamma.size() != [k] || gamma.device() != x.device() {
        return None;
    }
    if let Some(d) = delta
        && (d.kind() != Kind::BFloat16 || d.size() != [1, k] || d.device() != x.device())
    {
        return None;
    }
    let shape = Shape::of(w, k, x.device())?;
    let norm_threads = row_block(k as usize)?;
    let delta = delta.map(|d| d.contiguous());
    let gamma = gamma.to_kind(Kind::Float).contiguous();
    let h = match delta {
        Some(_) => x.empty_like(),
        None => x.shallow_clone(),
    };
    let y = Tensor::empty([1, shape.n], (Kind::BFloat16, x.device()));
    let (groups, threads) = shape.grid()?;
    let shared = u32::try_from(2 * k).ok()?;
    // At most the blocks resident at once (each computes the norm once, then takes groups of
    // outputs in turn; `gemv_norm_bf16`).
    let per_sm = kern
        .functions
        .get("gemv_norm_bf16")?
        .occupancy_max_active_blocks_per_multiprocessor(threads as u32, shared as usize, None)
        .ok()?;
    let blocks = groups.min(kern.sms * per_sm as usize);
    if blocks == 0 {
        return None;
    }
    let (kk, n, ldw, parts) = shape.args()?;
    let (eps, norm_threads) = (eps as f32, i32::try_from(norm_threads).ok()?);
    let delta_ptr = delta.as_ref().map_or(0, ptr);
    launch_shared(
        &kern,
        "gemv_norm_bf16".to_string(),
        blocks,
        threads,
        shared,
        &[
            &ptr(&x),
            &delta_ptr,
            &ptr(&gamma),
            &eps,
            &norm_threads,
            &ptr(&h),
            &ptr(w),
            &ptr(&y),
            &kk,
            &n,
            &ldw,
            &parts,
        ],
    )?;
    Some((h, y))
}
