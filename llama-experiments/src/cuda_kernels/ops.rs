//! The launchers: each checks its inputs (device, kind, shape, alignment), allocates the outputs
//! with torch and launches one kernel of `kernels.cu`, or returns `None` for the caller's
//! fallback.

use tch::{Kind, Tensor};

use crate::train::optim::AdamwScalars;

use super::{ELEMENT_BLOCK, element_grid, launch, loaded, named, ptr, ready, suffix, vec4};
use crate::row_kernels::row_block;

/// Mean cross-entropy of `logits [n, vocab]` against `targets [n]` (int64): the loss (`[1]`, f32)
/// and each row's log-sum-exp (`[n]`, f32) for [`cross_entropy_backward`].
pub fn cross_entropy_forward(logits: &Tensor, targets: &Tensor) -> Option<(Tensor, Tensor)> {
    let (logits, k) = ready(logits)?;
    let [n, vocab] = logits.size()[..] else {
        return None;
    };
    let targets = targets.to_kind(Kind::Int64).contiguous();
    if targets.size() != [n] || targets.device() != logits.device() || n == 0 {
        return None;
    }
    let opts = (Kind::Float, logits.device());
    let lse = Tensor::empty([n], opts);
    let rows = Tensor::empty([n], opts);
    let vec = vec4(&[&logits]) * i32::from(vocab % 4 == 0);
    let vocab = i32::try_from(vocab).ok()?;
    launch(
        &k,
        named("cross_entropy_forward", logits.kind())?,
        n as usize,
        512,
        &[
            &ptr(&logits),
            &ptr(&targets),
            &ptr(&lse),
            &ptr(&rows),
            &vocab,
            &vec,
        ],
    )?;
    Some((rows.mean(Kind::Float).reshape([1]), lse))
}

/// The logits' gradient for the loss's gradient `g` (`[1]`): `(softmax − onehot) · g / n`, in the
/// logits' dtype.
pub fn cross_entropy_backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    g: &Tensor,
) -> Option<Tensor> {
    let (logits, k) = ready(logits)?;
    let [n, vocab] = logits.size()[..] else {
        return None;
    };
    let targets = targets.to_kind(Kind::Int64).contiguous();
    let lse = lse.to_kind(Kind::Float).contiguous();
    let g = g
        .to_kind(Kind::Float)
        .to_device(logits.device())
        .contiguous();
    let dlogits = logits.empty_like();
    let inv_n = 1.0 / n as f32;
    let vec = vec4(&[&logits, &dlogits]) * i32::from(vocab % 4 == 0);
    let vocab = i32::try_from(vocab).ok()?;
    launch(
        &k,
        named("cross_entropy_backward", logits.kind())?,
        n as usize,
        512,
        &[
            &ptr(&logits),
            &ptr(&targets),
            &ptr(&lse),
            &ptr(&g),
            &ptr(&dlogits),
            &vocab,
            &inv_n,
            &vec,
        ],
    )?;
    Some(dlogits)
}

/// `silu(a) ⊙ b` in one kernel (`a`, `b` of one shape and kind).
pub fn swiglu_forward(a: &Tensor, b: &Tensor) -> Option<Tensor> {
    let (a, k) = ready(a)?;
    if b.size() != a.size() || b.kind() != a.kind() {
        return None;
    }
    let b = b.contiguous();
    let out = a.empty_like();
    let n = a.numel() as i64;
    let vec = vec4(&[&a, &b, &out]);
    launch(
        &k,
        named("swiglu_forward", a.kind())?,
        element_grid(n as usize / 4),
        ELEMENT_BLOCK,
        &[&ptr(&a), &ptr(&b), &ptr(&out), &n, &vec],
    )?;
    Some(out)
}

/// `(da, db)` of `silu(a) ⊙ b` for the output's gradient `g`, in one kernel.
pub fn swiglu_backward(a: &Tensor, b: &Tensor, g: &Tensor) -> Option<(Tensor, Tensor)> {
    let (a, k) = ready(a)?;
    if b.size() != a.size() || b.kind() != a.kind() || g.size() != a.size() {
        return None;
    }
    let b = b.contiguous();
    let g = g.to_kind(a.kind()).contiguous();
    let (da, db) = (a.empty_like(), a.empty_like());
    let n = a.numel() as i64;
    let vec = vec4(&[&a, &b, &g, &da, &db]);
    launch(
        &k,
        named("swiglu_backward", a.kind())?,
        element_grid(n as usize / 4),
        ELEMENT_BLOCK,
        &[&ptr(&a), &ptr(&b), &ptr(&g), &ptr(&da), &ptr(&db), &n, &vec],
    )?;
    Some((da, db))
}

/// The rotary embedding of `x [batch, heads, time, dim]` with the full-width tables `c`, `s`
/// (`[batch or 1, 1, time, dim]`, x's kind) of `llama_model::rotary`: `x c + swap(x) s`, or with
/// `backward` the inverse rotation `x c + swap(x s)` (x is then the output's gradient). The
/// result is contiguous; `x` may be any view with unit stride along `dim` (a transposed head
/// layout needs no copy).
pub fn rotary(x: &Tensor, c: &Tensor, s: &Tensor, backward: bool) -> Option<Tensor> {
    suffix(x.kind())?;
    let k = loaded(x.device())?;
    let [batch, heads, time, dim] = x.size()[..] else {
        return None;
    };
    let table_ok = |t: &Tensor| {
        let sz = t.size();
        t.kind() == x.kind()
            && t.device() == x.device()
            && sz.len() == 4
            && (sz[0] == batch || sz[0] == 1)
            && sz[1] == 1
            && sz[2] == time
            && sz[3] == dim
    };
    if !table_ok(c) || !table_ok(s) || c.size() != s.size() || dim % 2 != 0 {
        return None;
    }
    let x = if x.stride()[3] == 1 {
        x.shallow_clone()
    } else {
        x.contiguous()
    };
    let (c, s) = (c.contiguous(), s.contiguous());
    let y = Tensor::empty([batch, heads, time, dim], (x.kind(), x.device()));
    let n = y.numel() as i64;
    let st = x.stride();
    let cb = if c.size()[0] == 1 { 0 } else { c.stride()[0] };
    let ct = c.stride()[2];
    let ys = y.stride();
    let (heads, time, dim) = (
        i32::try_from(heads).ok()?,
        i32::try_from(time).ok()?,
        i32::try_from(dim).ok()?,
    );
    launch(
        &k,
        named("rotary", x.kind())?,
        // A thread per four pairs of elements (per pair where a row cannot be read by fours: the
        // kernel's grid-stride loop then walks the rest).
        element_grid(n as usize / 8),
        ELEMENT_BLOCK,
        &[
            &ptr(&x),
            &ptr(&c),
            &ptr(&s),
            &ptr(&y),
            &n,
            &heads,
            &time,
            &dim,
            &st[0],
            &st[1],
            &st[2],
            &cb,
            &ct,
            &ys[0],
            &ys[1],
            &ys[2],
            &i32::from(backward),
        ],
    )?;
    Some(y)
}

/// The RMSNorm kernels' name for an input of kind `x` and an output of kind `y`: the same kind,
/// or an f32 residual stream into a bf16 layer input.
fn rms_named(name: &str, x: Kind, y: Kind) -> Option<String> {
    match (x, y) {
        (Kind::Float, Kind::BFloat16) => Some(format!("{name}_f32_bf16")),
        _ if x == y => named(name, x),
        _ => None,
    }
}

/// RMSNorm of `x [n, dim]` with `gamma [dim]`: `y` (of kind `out`: x's, or bf16 from f32) and each
/// row's `r = 1/√(mean(x²)+ε)` (`[n]`, f32) for [`rms_norm_backward`].
pub fn rms_norm_forward(
    x: &Tensor,
    gamma: &Tensor,
    eps: f64,
    out: Kind,
) -> Option<(Tensor, Tensor)> {
    let (x, k) = ready(x)?;
    let name = rms_named("rms_norm_forward", x.kind(), out)?;
    let [n, dim] = x.size()[..] else {
        return None;
    };
    let block = row_block(dim as usize)?;
    if gamma.size() != [dim] || n == 0 {
        return None;
    }
    let gamma = gamma.to_kind(Kind::Float).contiguous();
    let y = Tensor::empty([n, dim], (out, x.device()));
    let r = Tensor::empty([n], (Kind::Float, x.device()));
    let (dim, eps) = (dim as i32, eps as f32);
    launch(
        &k,
        name,
        n as usize,
        block,
        &[&ptr(&x), &ptr(&gamma), &ptr(&y), &ptr(&r), &dim, &eps],
    )?;
    Some((y, r))
}

/// The residual update `h = x + δ` (x f32 `[n, dim]`, δ f32 or bf16) and the RMSNorm of `h` with
/// gain `gamma` in `out` (f32 or bf16), in one kernel: `(h, y)`, the same numbers as torch's
/// promoting add followed by [`rms_norm_forward`].
///
/// `x` is read before the kernel ahead has finished under programmatic dependent launch
/// (`add_rms_norm` in `kernels.cu`), so it must not be that kernel's output: as the residual
/// stream it never is (a sublayer's products lie between its writer and this update).
/// `LLAMA_NORM_EARLY=off` reads it after the wait.
pub fn add_rms_norm(
    x: &Tensor,
    delta: &Tensor,
    gamma: &Tensor,
    eps: f64,
    out: Kind,
) -> Option<(Tensor, Tensor)> {
    let (x, k) = ready(x)?;
    let [n, dim] = x.size()[..] else {
        return None;
    };
    let name = match (x.kind(), delta.kind(), out) {
        (Kind::Float, Kind::Float, Kind::Float) => "add_rms_norm_f32_f32",
        (Kind::Float, Kind::BFloat16, Kind::BFloat16) => "add_rms_norm_bf16_bf16",
        (Kind::Float, Kind::BFloat16, Kind::Float) => "add_rms_norm_bf16_f32",
        _ => return None,
    };
    let block = row_block(dim as usize)?;
    if delta.size() != [n, dim] || delta.device() != x.device() || gamma.size() != [dim] || n == 0 {
        return None;
    }
    let delta = delta.contiguous();
    let gamma = gamma.to_kind(Kind::Float).contiguous();
    let h = x.empty_like();
    let y = Tensor::empty([n, dim], (out, x.device()));
    let (dim, eps) = (dim as i32, eps as f32);
    static EARLY: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    let early =
        *EARLY.get_or_init(|| crate::op_registry::knob_on("LLAMA_NORM_EARLY", "off").into());
    launch(
        &k,
        name.to_string(),
        n as usize,
        block,
        &[
            &ptr(&x),
            &ptr(&delta),
            &ptr(&gamma),
            &ptr(&h),
            &ptr(&y),
            &dim,
            &eps,
            &early,
        ],
    )?;
    Some((h, y))
}

/// Blocks of the RMSNorm backward: enough to fill the card, few enough that summing their
/// `dγ` rows is cheap.
const ROW_GRID: usize = 1024;

/// `(dx, dγ)` of RMSNorm for the output's gradient `dy` (of the output's kind), from what
/// [`rms_norm_forward`] kept: `dx` in x's kind, `dγ` in f32.
pub fn rms_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    r: &Tensor,
) -> Option<(Tensor, Tensor)> {
    let (x, k) = ready(x)?;
    let [n, dim] = x.size()[..] else {
        return None;
    };
    let block = row_block(dim as usize)?;
    if dy.size() != x.size() || gamma.size() != [dim] || r.size() != [n] || n == 0 {
        return None;
    }
    let dy = match rms_named("rms_norm_backward", x.kind(), dy.kind()) {
        Some(_) => dy.contiguous(),
        None => dy.to_kind(x.kind()).contiguous(),
    };
    let name = rms_named("rms_norm_backward", x.kind(), dy.kind())?;
    let gamma = gamma.to_kind(Kind::Float).contiguous();
    let r = r.to_kind(Kind::Float).contiguous();
    let grid = (n as usize).min(ROW_GRID);
    let dx = x.empty_like();
    let partial = Tensor::empty([grid as i64, dim], (Kind::Float, x.device()));
    let dim32 = dim as i32;
    launch(
        &k,
        name,
        grid,
        block,
        &[
            &ptr(&dy),
            &ptr(&x),
            &ptr(&gamma),
            &ptr(&r),
            &ptr(&dx),
            &ptr(&partial),
            &n,
            &dim32,
        ],
    )?;
    Some((dx, partial.sum_dim_intlist(0, false, Kind::Float)))
}

/// One AdamW update of a flat f32 bucket in one kernel (its gradient f32 or bf16): new
/// `(p, m, v)`. `moments` is `None` on the first step; `factor` (`[1]`, f32, on the device)
/// scales the gradient first.
pub fn adamw(
    p: &Tensor,
    g: &Tensor,
    moments: Option<(&Tensor, &Tensor)>,
    factor: Option<&Tensor>,
    s: AdamwScalars,
) -> Option<(Tensor, Tensor, Tensor)> {
    // Declined before anything is allocated (libtorch's CPU asks on every bucket and step).
    loaded(p.device())?;
    let new = || Tensor::empty(p.size(), (Kind::Float, p.device()));
    let out = (new(), new(), new());
    adamw_into(p, g, moments, factor, s, (&out.0, &out.1, &out.2))?;
    Some(out)
}

/// [`adamw`] writing the new `(p, m, v)` into `out`: contiguous f32 tensors of `p`'s size that
/// overlap none of the inputs (views of a bucket's new flat vectors, so that each parameter
/// of a bucket can be updated where it lies, without concatenating the bucket first).
pub fn adamw_into(
    p: &Tensor,
    g: &Tensor,
    moments: Option<(&Tensor, &Tensor)>,
    factor: Option<&Tensor>,
    s: AdamwScalars,
    (po, mo, vo): (&Tensor, &Tensor, &Tensor),
) -> Option<()> {
    let name = match g.kind() {
        Kind::Float => "adamw_f32",
        Kind::BFloat16 => "adamw_f32_bf16",
        _ => return None,
    };
    if p.kind() != Kind::Float || p.size() != g.size() {
        return None;
    }
    let outputs_fit = [po, mo, vo].iter().all(|o| {
        o.kind() == Kind::Float
            && o.size() == p.size()
            && o.is_contiguous()
            && o.device() == p.device()
    });
    if !outputs_fit {
        return None;
    }
    let (p, k) = ready(p)?;
    let g = g.contiguous();
    let moments = match moments {
        Some((m, v)) => {
            if m.size() != p.size() || v.size() != p.size() || m.kind() != Kind::Float {
                return None;
            }
            Some((m.contiguous(), v.to_kind(Kind::Float).contiguous()))
        }
        None => None,
    };
    let factor = factor.map(|f| f.to_kind(Kind::Float).to_device(p.device()).contiguous());
    let n = p.numel() as i64;
    let (mp, vp) = moments.as_ref().map_or((0, 0), |(m, v)| (ptr(m), ptr(v)));
    let mut aligned = vec![&p, &g, po, mo, vo];
    if let Some((m, v)) = &moments {
        aligned.extend([m, v]);
    }
    let vec = vec4(&aligned);
    let f = |x: f64| x as f32;
    launch(
        &k,
        name.to_string(),
        element_grid(n as usize / 4),
        ELEMENT_BLOCK,
        &[
            &ptr(&p),
            &ptr(&g),
            &mp,
            &vp,
            &ptr(po),
            &ptr(mo),
            &ptr(vo),
            &n,
            &factor.as_ref().map_or(0, ptr),
            &f(s.beta1),
            &f(s.beta2),
            &f(s.lr / s.c1),
            &f(1.0 / s.c2.sqrt()),
            &f(s.eps),
            &f(1.0 - s.decay),
            &vec,
        ],
    )
}
