//! Products with a few rows (decoding's projections: one row per sequence and token).
//!
//! At one to eight rows a projection only streams its weight from memory; a general matrix
//! product library picks tiles for larger shapes and reached 30–47 % of an H200's bandwidth on the
//! `1b` preset's 2,048-wide projections, half of a decoded token's time. A backend with a kernel
//! made for this shape registers it with [`register_native`] (inference only: the registry is
//! keyed by the plain backend, never by `Autodiff<_>`); [`matmul`] uses it for up to
//! [`MAX_ROWS`] rows and the backend's `matmul` otherwise.
//!
//! Such a kernel reads each output's weights as one contiguous run, so a backend that registers
//! one gets its inference weights stored out-major (`[out, in]`, as torch's `Linear` keeps them)
//! by `Llama::with_inference_weights`: the model still sees `[in, out]` weights, as transposed
//! views ([`out_major`]), which the backend's `matmul` takes without copies.

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
    crate::product::matmul(x, w)
}

/// `(x [1, k], w [k, 2n])` → `silu(x · w[:, :n]) ⊙ (x · w[:, n..])` `[1, n]` in x's dtype (SwiGLU's
/// gate over stacked gate and up projections, in the product's epilogue), or `None` to run the
/// product and the gate apart.
pub type NativeGemvSwiglu<B> = fn(FloatTensor<B>, FloatTensor<B>) -> Option<FloatTensor<B>>;

static SWIGLU: Registry<ErasedNative> = Registry::new();

/// Makes [`swiglu`] on backend `B` run `native`.
pub fn register_native_swiglu<B: Backend>(native: NativeGemvSwiglu<B>) {
    SWIGLU.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

/// `silu(x · w[:, :n]) ⊙ (x · w[:, n..])` for one row `x [1, k]` and `w [k, 2n]`, where backend
/// `B` registered a kernel for it and it takes these inputs; `None` otherwise (the caller then
/// multiplies and gates apart).
pub fn swiglu<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if x.dims()[0] != 1 || !w.dims()[1].is_multiple_of(2) {
        return None;
    }
    let f = SWIGLU.native::<NativeGemvSwiglu<B>>(TypeId::of::<B>())?;
    let prim = |t: Tensor<B, 2>| t.into_primitive().tensor();
    f(prim(x), prim(w)).map(|y| Tensor::from_primitive(TensorPrimitive::Float(y)))
}

/// Whether backend `B` registered a native few-row product (and wants out-major weights).
pub fn registered<B: Backend>() -> bool {
    REGISTRY
        .native::<NativeGemv<B>>(TypeId::of::<B>())
        .is_some()
}

/// `w [in, out]` with the same values, as the transposed view of a contiguous `[out, in]` copy.
pub fn out_major<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    let [i, o] = w.dims();
    // Reshaping the transposed view to one dimension makes the backend copy it in that order.
    w.transpose().reshape([i * o]).reshape([o, i]).transpose()
}
