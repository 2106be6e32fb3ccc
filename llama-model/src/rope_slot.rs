//! A decoded token's queries and keys rotated and its keys and values written to the KV cache
//! slot, as one backend kernel.
//!
//! A static-shape decode step (`Llama::decode_step`) rotates the new token's queries and keys and
//! writes its keys and values at a device-side cache slot: four tiny kernels per layer, whose time
//! is their launches (2–3 µs each on an H200, ncu). A backend with a kernel doing all four
//! registers it with [`register_native`] (inference: keyed by the plain backend);
//! [`try_rope_slot`] hands the inputs back everywhere else, and when the cache has no slot set
//! (prefill, eager decoding) or the dtypes differ.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::cache::LayerCache;
use crate::dispatch::{ErasedNative, Registry};
use crate::position::RopeAngles;

/// `(q [b, h, 1, d], k [b, hkv, 1, d], v [b, hkv, 1, d], c [b, 1, 1, d], s [b, 1, 1, d],
/// k_cache [b, hkv, capacity, d], v_cache, slot [1])` → the rotated queries, having written the
/// rotated keys (`x ⊙ c + swap(x) ⊙ s`, the rotary operation's full-width tables) and the values
/// at `slot` in the caches' own memory; or `None` (nothing written) for the separate operations.
pub type NativeRopeSlot<B> = fn(
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    IntTensor<B>,
) -> Option<FloatTensor<B>>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes [`try_rope_slot`] on backend `B` run `native`.
pub fn register_native<B: Backend>(native: NativeRopeSlot<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

type Qkv<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// A decode step's inputs to a kernel that rotates and writes the cache slot, as the backend's
/// primitives: `[q, k, v, c, s, k_cache, v_cache]` and the slot; `None` where the rotary tables or
/// the slot are absent or the dtypes differ. Shared with [`crate::rope_slot_attention`].
pub(crate) fn slot_inputs<B: Backend>(
    (q, k, v): (&Tensor<B, 4>, &Tensor<B, 4>, &Tensor<B, 4>),
    rope: &RopeAngles<B>,
    cache: &LayerCache<B>,
) -> Option<([FloatTensor<B>; 7], IntTensor<B>)> {
    let (Some((c, s)), Some(slot)) = (rope.full_tables(), cache.slot()) else {
        return None;
    };
    let (kc, vc) = cache.buffers();
    let all = [q, k, v, c, s, kc, vc];
    let dtype = q.dtype();
    if all.iter().any(|t| t.dtype() != dtype) {
        return None;
    }
    let prims = all.map(|t| t.clone().into_primitive().tensor());
    Some((prims, slot.clone().into_primitive()))
}

/// `(rotated q, all keys, all values)` as [`RopeAngles::apply`] and [`LayerCache::append`] give
/// them, by the backend's kernel where it has one and the cache writes a slot; else the inputs.
pub fn try_rope_slot<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    rope: &RopeAngles<B>,
    cache: &mut LayerCache<B>,
) -> Result<Qkv<B>, Qkv<B>> {
    let Some(f) = REGISTRY.native::<NativeRopeSlot<B>>(TypeId::of::<B>()) else {
        return Err((q, k, v));
    };
    let Some(([q_, k_, v_, c, s, kc, vc], slot)) = slot_inputs((&q, &k, &v), rope, cache) else {
        return Err((q, k, v));
    };
    match f(q_, k_, v_, c, s, kc, vc, slot) {
        Some(q) => {
            let (kc, vc) = cache.buffers();
            Ok((
                Tensor::from_primitive(TensorPrimitive::Float(q)),
                kc.clone(),
                vc.clone(),
            ))
        }
        None => Err((q, k, v)),
    }
}
