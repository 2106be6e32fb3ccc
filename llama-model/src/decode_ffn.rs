//! A pre-norm SwiGLU feed-forward sublayer of one decoded row as one backend kernel.
//!
//! Decoding a token at batch 1, the feed-forward sublayer is the residual update with its norm,
//! the stacked gate/up product, the gate and the down product: four kernels whose times are their
//! launches and memory round trips rather than their bytes (docs/performance.md, attempt 30). A
//! backend with a kernel that runs the whole sublayer registers it with [`register_native`]
//! (inference only: keyed by the plain backend, never `Autodiff<_>`); [`try_decode_ffn`] hands
//! the inputs back everywhere else, and the block then runs the separate operations.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// What the native kernel takes, as the backend's primitives.
pub struct DecodeFfnInputs<B: Backend> {
    /// The residual stream `[1, d]`.
    pub x: FloatTensor<B>,
    /// The attention's update of it `[1, d]`, in the compute dtype.
    pub delta: FloatTensor<B>,
    /// The norm's gain `[d]` and epsilon.
    pub gamma: FloatTensor<B>,
    pub eps: f64,
    /// The gate and up projections stacked, gate first: `[d, 2 · hidden]`.
    pub gate_up: FloatTensor<B>,
    /// The down projection `[hidden, d]`.
    pub down: FloatTensor<B>,
    /// The dtype of the norm's output and of the products (the compute dtype).
    pub out: DType,
}

/// `inputs` → `(h, y)` with `h = x + δ` in x's dtype and `y = w₂(silu(w₁ a) ⊙ w₃ a)` for
/// `a = rms_norm(h) · γ`, the same numbers as the separate operations; or `None` to run those.
pub type NativeDecodeFfn<B> = fn(DecodeFfnInputs<B>) -> Option<(FloatTensor<B>, FloatTensor<B>)>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes [`try_decode_ffn`] on backend `B` run `native`.
pub fn register_native<B: Backend>(native: NativeDecodeFfn<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

/// Whether backend `B` registered a native sublayer.
pub fn registered<B: Backend>() -> bool {
    REGISTRY
        .native::<NativeDecodeFfn<B>>(TypeId::of::<B>())
        .is_some()
}

/// The sublayer's `(h, y)` (see [`NativeDecodeFfn`]) for one row (`x`, `delta`: `[1, 1, d]`)
/// where `B` registered a native kernel and it takes these inputs; `None` otherwise.
pub fn try_decode_ffn<B: Backend>(
    x: &Tensor<B, 3>,
    delta: &Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    eps: f64,
    gate_up: Tensor<B, 2>,
    down: Tensor<B, 2>,
    out: DType,
) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
    let dims = x.dims();
    if dims[0] * dims[1] != 1 {
        return None;
    }
    let f = REGISTRY.native::<NativeDecodeFfn<B>>(TypeId::of::<B>())?;
    let flat = |t: &Tensor<B, 3>| t.clone().reshape([1, dims[2]]).into_primitive().tensor();
    let (h, y) = f(DecodeFfnInputs {
        x: flat(x),
        delta: flat(delta),
        gamma: gamma.into_primitive().tensor(),
        eps,
        gate_up: gate_up.into_primitive().tensor(),
        down: down.into_primitive().tensor(),
        out,
    })?;
    let back = |t| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t)).reshape(dims);
    Some((back(h), back(y)))
}
