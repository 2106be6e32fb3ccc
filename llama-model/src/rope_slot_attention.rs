//! A decode step's attention with its rotation and cache write folded in, as one backend kernel.
//!
//! In a static-shape decode step (`Llama::decode_step`) each layer rotates the new token's query
//! and key, writes the key and value at a device-side cache slot ([`crate::rope_slot`]: one
//! kernel) and then attends over the cache ([`crate::decode_attention`]: a second). A backend
//! whose attention kernel can do the first itself registers it with [`register_native`]: one
//! dependent kernel fewer per layer, and the cache past the slot (not written yet) is not read.
//! [`try_rope_slot_attention`] hands the inputs back everywhere else, and when the cache has no
//! slot set (prefill, eager decoding) or the dtypes differ; the caller then runs the two.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn::tensor::{Bool, Tensor, TensorPrimitive};

use crate::cache::LayerCache;
use crate::dispatch::{ErasedNative, Registry};
use crate::position::RopeAngles;
use crate::rope_slot::slot_inputs;

/// `(q [b, h, 1, d], k [b, hkv, 1, d], v [b, hkv, 1, d]` unrotated, `c, s [b, 1, 1, d]` (the
/// rotary operation's full-width tables), `k_cache, v_cache [b, hkv, capacity, d]`, `slot [1]`,
/// `hidden [b, 1, 1, capacity]` or `None`) → `softmax(q kᵀ / √d) v` `[b, h, 1, d]` over the
/// cached positions below `slot` and the step's own rotated key, having written that key and
/// `v` at `slot` in the caches' own memory; or `None` (nothing written) for the separate
/// operations.
pub type NativeRopeSlotAttention<B> = fn(
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    IntTensor<B>,
    Option<BoolTensor<B>>,
) -> Option<FloatTensor<B>>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes [`try_rope_slot_attention`] on backend `B` run `native`.
pub fn register_native<B: Backend>(native: NativeRopeSlotAttention<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

type Qkv<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// The attention output of one decoded position per row (`q, k, v` as the projections give them,
/// before rotation), by the backend's kernel where it has one and the cache writes a slot; else
/// the inputs back, nothing written.
pub fn try_rope_slot_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    rope: &RopeAngles<B>,
    cache: &LayerCache<B>,
    hidden: Option<&Tensor<B, 4, Bool>>,
) -> Result<Tensor<B, 4>, Qkv<B>> {
    let Some(f) = REGISTRY.native::<NativeRopeSlotAttention<B>>(TypeId::of::<B>()) else {
        return Err((q, k, v));
    };
    let Some(([q_, k_, v_, c, s, kc, vc], slot)) = slot_inputs((&q, &k, &v), rope, cache) else {
        return Err((q, k, v));
    };
    let hidden = hidden.map(|m| m.clone().into_primitive());
    match f(q_, k_, v_, c, s, kc, vc, slot, hidden) {
        Some(out) => Ok(Tensor::from_primitive(TensorPrimitive::Float(out))),
        None => Err((q, k, v)),
    }
}
