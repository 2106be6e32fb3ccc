//! The launcher of the few-row products (`gemv.cu`): decoding's projections.

use tch::{Kind, Tensor};

use super::{launch, loaded, ptr};

/// Warps per block when each output takes one (eight outputs).
const WARPS: usize = 8;
/// Columns one warp covers in one pass of loads (`GEMV_COLS` in `gemv.cu`).
const WARP_COLS: i64 = 1024;
/// Most warps per output (a block holds at most 1,024 threads).
const MAX_PARTS: i64 = 32;

/// Warps per output for rows of `k` columns: one pass of loads each (`k / 1,024` rounded up),
/// or one warp for every row under `LLAMA_GEMV_SPLIT=off`.
fn parts(k: i64) -> i64 {
    static SPLIT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let split = *SPLIT.get_or_init(|| crate::op_registry::knob_on("LLAMA_GEMV_SPLIT", "off"));
    match split {
        true => (k + WARP_COLS - 1) / WARP_COLS,
        false => 1,
    }
    .clamp(1, MAX_PARTS)
}

/// Whether the grid holds only the blocks resident at once, each taking several groups of
/// outputs (`LLAMA_GEMV_GRID=auto`, the default), or one block per group (`waves`).
fn resident_grid() -> bool {
    static RESIDENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RESIDENT.get_or_init(|| crate::op_registry::knob_on("LLAMA_GEMV_GRID", "waves"))
}

/// `x [1, k] · w [k, n]`, bf16 in and out (f32 sums), in one kernel that streams the weight at
/// close to the memory bandwidth (one row only: more were slower than cuBLAS, see `gemv.cu`);
/// rows longer than 1,024 columns split over several warps (`LLAMA_GEMV_SPLIT=auto|off`).
/// `w` must be the transposed view of an `[n, k]` matrix (strides `[1, ldw]`: each output's
/// weights contiguous, as `Llama::with_inference_weights` stores them for a backend with this
/// kernel), possibly a row slice of a taller one. `None` for anything else (the caller multiplies
/// with torch).
pub fn gemv(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    launch_gemv(x, w, false)
}

/// SwiGLU's gate over one row's stacked gate and up projections, `silu(x · w[:, :n]) ⊙
/// (x · w[:, n..])` `[1, n]`, in one kernel (the gate in the product's epilogue; the same bits as
/// [`gemv`] followed by the separate gate kernel). `w` `[k, 2n]` as for [`gemv`]: the gate's
/// rows then the up projection's, as `FeedForward` stacks them.
pub fn gemv_swiglu(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    launch_gemv(x, w, true)
}

fn launch_gemv(x: &Tensor, w: &Tensor, gated: bool) -> Option<Tensor> {
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
        || (gated && n % 2 != 0)
    {
        return None;
    }
    let kern = loaded(x.device())?;
    let x = x.contiguous();
    if !ptr(&x).is_multiple_of(16) {
        return None;
    }
    let parts = parts(k);
    // Outputs (weight rows) per block; the gated kernel pairs each gate row with its up row.
    let per_block = match gated {
        false => (WARPS / parts as usize).max(1),
        true => (WARPS / parts as usize).max(2) & !1,
    };
    let threads = 32 * parts as usize * per_block;
    if threads > 1024 {
        return None;
    }
    let (outs, name) = match gated {
        false => (n, "gemv_bf16"),
        true => (n / 2, "gemv_swiglu_bf16"),
    };
    let y = Tensor::empty([1, outs], (Kind::BFloat16, x.device()));
    let groups =
        usize::try_from(outs)
            .ok()?
            .div_ceil(if gated { per_block / 2 } else { per_block });
    let blocks = match resident_grid() {
        true => kern
            .resident_blocks(name, threads)
            .map_or(groups, |r| r.min(groups)),
        false => groups,
    };
    let (k, outs, parts) = (
        i32::try_from(k).ok()?,
        i32::try_from(outs).ok()?,
        i32::try_from(parts).ok()?,
    );
    launch(
        &kern,
        name.to_string(),
        blocks,
        threads,
        &[&ptr(&x), &ptr(w), &ptr(&y), &k, &outs, &ldw, &parts],
    )?;
    Some(y)
}
