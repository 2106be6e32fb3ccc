//! A weight's cast to the compute dtype whose gradient stays in that dtype.
//!
//! Under bf16 compute each projection's f32 master weight is cast to bf16 for its product. The
//! cast's backward converts the product's bf16 weight gradient back to f32 (reading 2 and writing
//! 4 bytes per parameter, ~1.4 ms of a `1b` step at an H200's bandwidth), only for the optimiser
//! to read it once. A backend whose optimiser reads bf16 gradients itself (the fused AdamW on
//! libtorch CUDA and on CubeCL's CUDA, which widens each element exactly as it loads it)
//! registers [`register`]: the cast is then one autodiff operation whose backward hands the
//! gradient on as it is. The values are the same: widening bf16 to f32 is exact, wherever it
//! happens. Only the projections' own weights take this cast (a tied output head's weight, also
//! the embedding's, takes a plain one: two uses' gradients in two dtypes would have to be summed);
//! an accumulation over micro-batches must widen first (`llama train` does).
//!
//! A backend whose optimiser writes each updated weight's bf16 copy beside its f32 value (CubeCL's
//! fused AdamW: two more bytes written per parameter, where a cast reads four and writes two and
//! costs a launch per weight) registers [`register_copies`]; the optimiser hands each copy over
//! with [`keep_copy`] and [`cast`] then returns it instead of casting. The bits are the same: both
//! round the same f32 value to nearest even.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, FloatDType, Tensor, TensorMetadata, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// `(w, dtype)` of an `Autodiff<I>` → `w` cast, boxed (keyed by `Autodiff<I>`).
type Erased = fn(Box<dyn Any>) -> Box<dyn Any>;

static REGISTRY: Registry<Erased> = Registry::new();

/// A backend's store of weights' copies in the compute dtype, keyed by the f32 value's identity
/// (which only the backend knows: fusion's tensor id on CubeCL).
pub struct NativeCopies<I: Backend> {
    /// Keeps `value`'s compute-dtype copy, `value.num_elements()` elements of the flat `bucket`
    /// from `offset` (until [`Self::clear`]). The view is taken when it is found, in the forward
    /// pass, not here: the update runs where the host is the bound, the forward pass with the
    /// host ahead of the device.
    pub keep: fn(&FloatTensor<I>, &FloatTensor<I>, usize),
    /// The copy kept for `value` in `value`'s shape, if any.
    pub find: fn(&FloatTensor<I>) -> Option<FloatTensor<I>>,
    /// Drops every copy (before an update writes new ones).
    pub clear: fn(),
}

impl<I: Backend> Clone for NativeCopies<I> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I: Backend> Copy for NativeCopies<I> {}

static COPIES: Registry<ErasedNative> = Registry::new();

/// Makes [`cast`] on `Autodiff<I>` return the copies [`keep_copy`] hands to `copies`.
pub fn register_copies<I: Backend>(copies: NativeCopies<I>) {
    COPIES.insert(TypeId::of::<I>(), ErasedNative::new(copies));
}

/// Hands `value`'s copy in the compute dtype, its elements of the flat `bucket` from `offset`,
/// to the backend's store (nothing where none is registered). The caller vouches that they hold
/// `value` rounded.
pub fn keep_copy<I: Backend, const D: usize>(
    value: &Tensor<I, D>,
    bucket: &Tensor<I, 1>,
    offset: usize,
) {
    if let Some(c) = COPIES.native::<NativeCopies<I>>(TypeId::of::<I>()) {
        let key = value.clone().into_primitive().tensor();
        (c.keep)(&key, &bucket.clone().into_primitive().tensor(), offset);
    }
}

/// Drops backend `I`'s copies (an update is about to replace the weights).
pub fn clear_copies<I: Backend>() {
    if let Some(c) = COPIES.native::<NativeCopies<I>>(TypeId::of::<I>()) {
        (c.clear)();
    }
}

/// Makes [`cast`] on `Autodiff<I>` (no checkpointing) keep the gradient in the compute dtype.
pub fn register<I: Backend>() {
    fn erased<I: Backend>(args: Box<dyn Any>) -> Box<dyn Any> {
        let (w, dtype) = *args
            .downcast::<(FloatTensor<Autodiff<I>>, FloatDType)>()
            .expect("registered under this type's TypeId");
        Box::new(autodiff_cast::<I>(w, dtype))
    }
    REGISTRY.insert(TypeId::of::<Autodiff<I>>(), erased::<I>);
}

/// A weight `w` in `dtype` for a product (itself if it is already).
pub fn cast<B: Backend, const D: usize>(w: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if w.dtype() == dtype {
        return w;
    }
    match REGISTRY.get(TypeId::of::<B>()) {
        Some(f) => {
            let p = w.into_primitive().tensor();
            let y = *f(Box::new((p, FloatDType::from(dtype))))
                .downcast::<FloatTensor<B>>()
                .expect("the registered function returns the same backend's primitive");
            Tensor::from_primitive(TensorPrimitive::Float(y))
        }
        None => w.cast(dtype),
    }
}

#[derive(Debug)]
struct KeepDtype;

impl<B: Backend> Backward<B, 1> for KeepDtype {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, dy);
        }
    }
}

fn autodiff_cast<I: Backend>(
    w: FloatTensor<Autodiff<I>>,
    dtype: FloatDType,
) -> FloatTensor<Autodiff<I>> {
    let kept = COPIES
        .native::<NativeCopies<I>>(TypeId::of::<I>())
        .and_then(|c| (c.find)(&w.primitive))
        .filter(|c| FloatDType::from(c.dtype()) == dtype && c.shape() == w.primitive.shape());
    let y = kept.unwrap_or_else(|| I::float_cast(w.primitive.clone(), dtype));
    match KeepDtype
        .prepare::<NoCheckpointing>([w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}
