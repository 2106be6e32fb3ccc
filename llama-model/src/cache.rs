//! Key/value cache for incremental decoding.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Keys and values of one attention layer, preallocated to `capacity` positions:
/// `[batch, kv_heads, capacity, head_dim]`. Appending writes in place with `slice_assign`, and
/// attention reads only the filled `0..len` prefix. (burn-nn's caches serve only its own unfused
/// `MultiHeadAttention`, without grouped-query attention, so this one is ours.)
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> LayerCache<B> {
    pub fn new(
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let zeros = || Tensor::zeros([batch, kv_heads, capacity, head_dim], device);
        Self {
            k: zeros(),
            v: zeros(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// The cache of a one-row batch repeated `n` times (a shared prompt continued `n` ways, as when
    /// scoring the choices of a multiple-choice question).
    ///
    /// # Panics
    /// When the batch is not 1.
    pub fn repeat_row(&self, n: usize) -> Self {
        assert_eq!(self.k.dims()[0], 1, "repeat_row needs a one-row cache");
        Self {
            k: self.k.clone().repeat_dim(0, n),
            v: self.v.clone().repeat_dim(0, n),
            len: self.len,
        }
    }

    /// Appends `k, v: [batch, kv_heads, t, head_dim]` and returns all cached keys and values.
    ///
    /// # Panics
    /// When the cache would overflow; [`crate::Llama::new_cache`] sizes it and `generate` checks
    /// lengths before decoding.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let t = k.dims()[2];
        let end = self.len + t;
        assert!(
            end <= self.capacity(),
            "KV cache overflow: {end} > {}",
            self.capacity()
        );
        let [b, h, _, hd] = k.dims();
        let range = self.len..end;
        // Move the buffers out so that they are uniquely owned and backends can write in place.
        let write = |buf: &mut Tensor<B, 4>, new: Tensor<B, 4>| {
            let placeholder = Tensor::empty([1, 1, 1, 1], &new.device());
            let mut old = std::mem::replace(buf, placeholder);
            if old.dtype() != new.dtype() {
                old = old.cast(new.dtype());
            }
            *buf = old.slice_assign([0..b, 0..h, range.clone(), 0..hd], new);
            buf.clone().narrow(2, 0, end)
        };
        let k_all = write(&mut self.k, k);
        let v_all = write(&mut self.v, v);
        self.len = end;
        (k_all, v_all)
    }
}

/// One [`LayerCache`] per layer.
pub type KvCache<B> = Vec<LayerCache<B>>;
