//! Attention of one new token per row against the KV cache, as one backend kernel.
//!
//! Decoding runs attention with a single query: written with tensor ops that is a product, a
//! scale, a mask, softmax's five passes, casts, a second product and, with grouped-query
//! attention, copies of the shared key/value heads: about a dozen kernels per layer and token, each
//! tiny, which is what a decoded token's time goes to once the host is out of the way (a CUDA
//! graph). A backend with a kernel doing it in one pass registers it with [`register_native`];
//! [`try_decode_attention`] hands the inputs back on every other backend (and under autodiff).

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{Bool, Tensor, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// `(q [b, h, 1, d], k [b, h_kv, t, d], v [b, h_kv, t, d], hidden [b, 1, 1, t] or None)` →
/// `softmax(q kᵀ / √d) v` `[b, h, 1, d]` in q's dtype, query head `i` reading key/value head
/// `i / (h / h_kv)`, `hidden` keys (`true`) left out; or `None` to use the tensor ops for these
/// inputs.
pub type NativeDecodeAttention<B> = fn(
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Option<BoolTensor<B>>,
) -> Option<FloatTensor<B>>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes single-query attention on backend `B` (no autodiff: decoding) run `native`.
pub fn register_native<B: Backend>(native: NativeDecodeAttention<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

/// The native kernel's output where `B` registered one and it takes these inputs (see
/// [`NativeDecodeAttention`]), else the inputs back.
#[allow(clippy::type_complexity)]
pub fn try_decode_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    hidden: Option<&Tensor<B, 4, Bool>>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let Some(f) = REGISTRY.native::<NativeDecodeAttention<B>>(TypeId::of::<B>()) else {
        return Err((q, k, v));
    };
    let prim = |t: &Tensor<B, 4>| t.clone().into_primitive().tensor();
    match f(
        prim(&q),
        prim(&k),
        prim(&v),
        hidden.map(|m| m.clone().into_primitive()),
    ) {
        Some(out) => Ok(Tensor::from_primitive(TensorPrimitive::Float(out))),
        None => Err((q, k, v)),
    }
}
