//! Products with a few rows (decoding's projections: one row per sequence and token).
//!
//! At one to eight rows a projection only streams its weight from memory; a general matrix
//! product library picks tiles for larger shapes and reached 30–47 % of an H200's bandwidth on the
//! `1b` preset's 2,048-wide projections, half of a decoded token's time. A backend with a kernel
//! made for this shape registers it with [`register_native`] (inference only: the registry is
//! keyed by the plain backend, never by `Autodiff<_>`); [`matmul`] uses it for up to
//! [`MAX_ROWS`] rows and the backend's `matmul` otherwise.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// Most rows the native product is asked for.
pub const MAX_ROWS: usize = 8;

/// `(x [rows, k], w [k, n])` → `x · w` `[rows, n]` in x's dtype, or `None` to use `matmul` for
/// these inputs.
pub type NativeGemv<B> = fn(FloatTensor<B>, FloatTensor<B>) -> Option<FloatTensor<B>>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes [`matmul`] on backend `B` run `native` for up to [`MAX_ROWS`] rows.
pub fn register_native<B: Backend>(native: NativeGemv<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

/// `x [rows, k] · w [k, n]`.
pub fn matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    if x.dims()[0] <= MAX_ROWS
        && let Some(f) = REGISTRY.native::<NativeGemv<B>>(TypeId::of::<B>())
    {
        let prim = |t: &Tensor<B, 2>| t.clone().into_primitive().tensor();
        if let Some(y) = f(prim(&x), prim(&w)) {
            return Tensor::from_primitive(TensorPrimitive::Float(y));
        }
    }
    x.matmul(w)
}
