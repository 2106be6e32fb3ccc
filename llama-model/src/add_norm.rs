//! The residual update followed by the next RMSNorm, `h = x + δ` and `y = rms_norm(h)`, as one
//! backend kernel in inference.
//!
//! In a pre-norm stack every residual update is read straight back by a norm: the next
//! sublayer's, or the final one. Decoding a token, each is a tiny kernel whose time is its launch
//! (4 µs each on an H200 at `1b`, the add and the norm both, ncu), so a backend with a kernel that
//! does both registers it with [`register_native`] (inference only: keyed by the plain backend,
//! never `Autodiff<_>`). Everywhere else [`add_rms_norm_to`] is [`crate::residual::add`] and
//! [`crate::rms_norm::rms_norm_to`], the same operations as before.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};
use crate::residual;
use crate::rms_norm::rms_norm_to;

/// `(x [n, d], δ [n, d], γ [d], ε, y's dtype)` → `(x + δ` in x's dtype, `rms_norm(x + δ) · γ` in
/// the given dtype`)`, the same numbers as the add and the norm; or `None` to run those.
pub type NativeAddRmsNorm<B> = fn(
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    f64,
    DType,
) -> Option<(FloatTensor<B>, FloatTensor<B>)>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes [`add_rms_norm_to`] on backend `B` run `native`.
pub fn register_native<B: Backend>(native: NativeAddRmsNorm<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

/// `(h, y)` with `h = x + δ` in x's dtype ([`residual::add`]) and `y` its RMSNorm with gain `γ`
/// in `out` ([`rms_norm_to`]).
pub fn add_rms_norm_to<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    delta: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    eps: f64,
    out: DType,
) -> (Tensor<B, D>, Tensor<B, D>) {
    if let Some(f) = REGISTRY.native::<NativeAddRmsNorm<B>>(TypeId::of::<B>()) {
        let dims = x.dims();
        let d = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let flat = |t: &Tensor<B, D>| t.clone().reshape([rows, d]).into_primitive().tensor();
        let g = gamma.clone().into_primitive().tensor();
        if let Some((h, y)) = f(flat(&x), flat(&delta), g, eps, out) {
            let back = |t| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t)).reshape(dims);
            return (back(h), back(y));
        }
    }
    let h = residual::add(x, delta);
    let y = rms_norm_to(h.clone(), gamma, eps, out);
    (h, y)
}
