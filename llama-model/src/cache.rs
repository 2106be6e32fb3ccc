//! Key/value cache for incremental decoding.

use std::any::TypeId;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// A backend's write of one cache position in place: `(buffer [batch, kv_heads, capacity,
/// head_dim], slot [1], new [batch, kv_heads, 1, head_dim]) → buffer`, the same memory.
pub type NativeSlotWrite<B> = fn(FloatTensor<B>, IntTensor<B>, FloatTensor<B>) -> FloatTensor<B>;

static SLOT_WRITE: Registry<ErasedNative> = Registry::new();

/// Makes slot writes on backend `B` run `write` (an assignment in the buffer's own memory).
/// Without it they go through `select_assign`, which Burn's backends may run out of place (libtorch
/// does): correct eagerly, but a recorded graph would then write a copy the next step never reads.
pub fn register_slot_write<B: Backend>(write: NativeSlotWrite<B>) {
    SLOT_WRITE.insert(TypeId::of::<B>(), ErasedNative::new(write));
}

/// Keys and values of one attention layer, preallocated to `capacity` positions:
/// `[batch, kv_heads, capacity, head_dim]`. Appending writes in place with `slice_assign`, and
/// attention reads only the filled `0..len` prefix. (burn-nn's caches serve only its own unfused
/// `MultiHeadAttention`, without grouped-query attention, so this one is ours.)
///
/// With a [`slot`](Self::set_slot) set, appending one position writes it at that device-side
/// index instead and attention reads the whole capacity (masked by the caller): the step then has
/// the same operations and shapes at every position, so a CUDA graph captured once replays it
/// (`Llama::decode_step`).
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
    slot: Option<Tensor<B, 1, Int>>,
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
            slot: None,
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
            slot: self.slot.clone(),
        }
    }

    /// Where the next single-position append writes: `Some([index])` on the device (static-shape
    /// decoding), or `None` for the host-side `len` (the default). A slot must still be empty
    /// (zero, as [`new`](Self::new) makes it) unless the backend registered an in-place write
    /// ([`register_slot_write`]): the generic write adds, since Burn's `select_assign` has only an
    /// additive update on every backend. An in-place write is seen by clones of this cache too.
    /// `len` does not count slot writes.
    pub fn set_slot(&mut self, slot: Option<Tensor<B, 1, Int>>) {
        self.slot = slot;
    }

    /// Appends `k, v: [batch, kv_heads, t, head_dim]` and returns all cached keys and values
    /// (with a slot set: writes the one position there and returns the whole capacity).
    ///
    /// # Panics
    /// When the cache would overflow; [`crate::Llama::new_cache`] sizes it and `generate` checks
    /// lengths before decoding. With a slot set, when `t != 1`.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if let Some(slot) = self.slot.clone() {
            return self.write_slot(k, v, slot);
        }
        let t = k.dims()[2];
        let end = self.len + t;
        assert!(
            end <= self.capacity(),
            "KV cache overflow: {end} > {}",
            self.capacity()
        );
        let [b, h, _, hd] = k.dims();
        let range = self.len..end;
        let write = |buf: &mut Tensor<B, 4>, new: Tensor<B, 4>| {
            *buf = take_as(buf, &new).slice_assign([0..b, 0..h, range.clone(), 0..hd], new);
            buf.clone().narrow(2, 0, end)
        };
        let k_all = write(&mut self.k, k);
        let v_all = write(&mut self.v, v);
        self.len = end;
        (k_all, v_all)
    }
}

impl<B: Backend> LayerCache<B> {
    fn write_slot(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        slot: Tensor<B, 1, Int>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        assert_eq!(k.dims()[2], 1, "a cache slot takes one position");
        let native = SLOT_WRITE.native::<NativeSlotWrite<B>>(TypeId::of::<B>());
        let write = |buf: &mut Tensor<B, 4>, new: Tensor<B, 4>| {
            let old = take_as(buf, &new);
            *buf = match native {
                Some(f) => Tensor::from_primitive(TensorPrimitive::Float(f(
                    old.into_primitive().tensor(),
                    slot.clone().into_primitive(),
                    new.into_primitive().tensor(),
                ))),
                None => old.select_assign(2, slot.clone(), new, IndexingUpdateOp::Add),
            };
            buf.clone()
        };
        (write(&mut self.k, k), write(&mut self.v, v))
    }

    /// The device-side slot the next one-position append writes, if set.
    pub fn slot(&self) -> Option<&Tensor<B, 1, Int>> {
        self.slot.as_ref()
    }

    /// The key and value buffers (`[batch, kv_heads, capacity, head_dim]` each), e.g. to check
    /// that a step updated them in place.
    pub fn buffers(&self) -> (&Tensor<B, 4>, &Tensor<B, 4>) {
        (&self.k, &self.v)
    }
}

/// The buffer moved out (so that it is uniquely owned and a backend may write it in place) and
/// in `new`'s dtype (a cache made in the default float dtype takes the compute dtype's keys).
fn take_as<B: Backend>(buf: &mut Tensor<B, 4>, new: &Tensor<B, 4>) -> Tensor<B, 4> {
    let placeholder = Tensor::empty([1, 1, 1, 1], &new.device());
    let old = std::mem::replace(buf, placeholder);
    match old.dtype() == new.dtype() {
        true => old,
        false => old.cast(new.dtype()),
    }
}

/// One [`LayerCache`] per layer.
pub type KvCache<B> = Vec<LayerCache<B>>;
