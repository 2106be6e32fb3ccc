//! Weight gradients split along the token dimension, for backends whose matmul does not split a
//! long reduction itself.
//!
//! A projection's weight gradient is `xᵀ·dy` with `x: [tokens, d_in]`: a small `[d_in, d_out]`
//! output reduced over all `tokens` (16,384 for a batch of 8 × 2048). cuBLAS splits such a
//! reduction across the card; CubeCL 0.10's matmul runs it on the few cubes that tile the small
//! output (36–192 on a 132-SM H200) and its weight gradients were most of a CubeCL training step
//! (docs/performance.md, "Where a CubeCL step goes"). Registered for a backend, [`crate::Precision`]
//! multiplies `[s, tokens/s, d_in]` by the (broadcast) weight instead of `[tokens, d_in]`: the
//! forward pass is the same products, and Burn's autodiff then computes the weight gradient as `s`
//! batched products summed afterwards, `s` times as many cubes. Backends with a splitting matmul
//! (libtorch) keep one product: the split costs them a `[s, d_in, d_out]` temporary and a sum.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;

use crate::dispatch::Registry;

/// The largest split per registered `Autodiff<I>`.
static REGISTRY: Registry<usize> = Registry::new();

/// Fewest rows a split keeps: below that a product is too small to use the card either.
const MIN_ROWS: usize = 512;

/// Output tiles of 128 × 128 a weight gradient should have once split: a few per SM of a large
/// card (132 on an H100/H200). Larger gradients are not split (`1b`'s feed-forward and every output
/// head already tile the card, and splitting them only adds the partial products' memory and sum).
const TARGET_TILES: usize = 512;

/// Makes `Autodiff<I>` split projections over up to `max_splits` (a power of two) row blocks.
pub fn register<I: Backend>(max_splits: usize) {
    REGISTRY.insert(TypeId::of::<Autodiff<I>>(), max_splits.max(1));
}

/// How many row blocks a projection of `rows` rows whose weight has `weight_elems` elements is
/// split into on `B`: the smallest power of two that gives the weight gradient [`TARGET_TILES`]
/// output tiles in all, within the registered maximum, dividing `rows` into blocks of at least
/// [`MIN_ROWS`]; `None` for one product.
pub fn splits<B: Backend>(rows: usize, weight_elems: usize) -> Option<usize> {
    let max = REGISTRY.get(TypeId::of::<B>())?;
    let tiles = weight_elems.div_ceil(128 * 128).max(1);
    let mut s = 1;
    while s * tiles < TARGET_TILES
        && s * 2 <= max
        && rows.is_multiple_of(s * 2)
        && rows / (s * 2) >= MIN_ROWS
    {
        s *= 2;
    }
    (s > 1).then_some(s)
}
