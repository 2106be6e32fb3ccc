//! The residual stream's update `x + δ`, with `δ` a sublayer's output in the compute dtype.
//!
//! Under bf16 compute the stream stays f32 (as autocast keeps it), so each sublayer's output is
//! cast and added: two kernels, twice per layer. A backend whose addition promotes mixed dtypes
//! in one kernel (torch's) registers it with [`register_native`] for inference (no autodiff);
//! everywhere else, and under autodiff, it is the cast and the sum.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// `(x, δ)` → `x + δ` in `x`'s dtype (δ converted exactly as a cast would), or `None` for the
/// cast and the sum.
pub type NativeResidual<B> = fn(FloatTensor<B>, FloatTensor<B>) -> Option<FloatTensor<B>>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes [`add`] on backend `B` run `native`.
pub fn register_native<B: Backend>(native: NativeResidual<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

/// `x + δ` in `x`'s dtype.
pub fn add<B: Backend, const D: usize>(x: Tensor<B, D>, delta: Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    if delta.dtype() == dtype {
        return x + delta;
    }
    if let Some(f) = REGISTRY.native::<NativeResidual<B>>(TypeId::of::<B>()) {
        let prim = |t: &Tensor<B, D>| t.clone().into_primitive().tensor();
        if let Some(y) = f(prim(&x), prim(&delta)) {
            return Tensor::from_primitive(TensorPrimitive::Float(y));
        }
    }
    x + delta.cast(dtype)
}
