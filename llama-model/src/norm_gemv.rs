//! A pre-norm sublayer's RMSNorm folded into the stacked one-row product that reads it
//! (decoding, inference only).
//!
//! Decoding a token, each norm of a pre-norm block is a tiny kernel ([`crate::add_norm`]) whose
//! output only feeds one stacked product (q/k/v, or gate/up: [`crate::stacked`]), and each such
//! kernel is one more launch and one more wait in the token's chain. A backend whose one-row
//! product can compute the norm itself registers that form with [`register_native`]: `h = x + δ`
//! (or `x`), `y = rms_norm(h) · γ · w` in one kernel, the same numbers as the norm and the product
//! apart. Everywhere else [`try_norm_gemv`] declines and the caller runs them as before.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// `(x [1, d] (the residual stream), δ [1, d] or none, γ [d], ε, w [d, n] (compute dtype))` →
/// `(h, rms_norm(h) · γ · w [1, n])` with `h = x + δ` (or `x`) in x's dtype and the norm's result
/// rounded to w's dtype before the product, as [`crate::add_norm::add_rms_norm_to`] and
/// [`crate::gemv::matmul`] compute them; or `None` for inputs the kernel does not take.
pub type NativeNormGemv<B> = fn(
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    FloatTensor<B>,
    f64,
    FloatTensor<B>,
) -> Option<(FloatTensor<B>, FloatTensor<B>)>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes [`try_norm_gemv`] on backend `B` run `native`.
pub fn register_native<B: Backend>(native: NativeNormGemv<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

/// `(h, rms_norm(h) · γ · w)` with `h = x + δ` (or `x`) for a single row, by the registered
/// kernel; `None` where none is registered, for more than one row, or where it declines.
pub fn try_norm_gemv<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    delta: Option<&Tensor<B, D>>,
    gamma: Tensor<B, 1>,
    eps: f64,
    w: Tensor<B, 2>,
) -> Option<(Tensor<B, D>, Tensor<B, D>)> {
    let f = REGISTRY.native::<NativeNormGemv<B>>(TypeId::of::<B>())?;
    let dims = x.dims();
    let d = dims[D - 1];
    if dims[..D - 1].iter().product::<usize>() != 1 {
        return None;
    }
    let n = w.dims()[1];
    let flat = |t: &Tensor<B, D>| t.clone().reshape([1, d]).into_primitive().tensor();
    let (h, y) = f(
        flat(x),
        delta.map(flat),
        gamma.into_primitive().tensor(),
        eps,
        w.into_primitive().tensor(),
    )?;
    let mut out = dims;
    out[D - 1] = n;
    let back = |t, shape| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t)).reshape(shape);
    Some((back(h, dims), back(y, out)))
}
