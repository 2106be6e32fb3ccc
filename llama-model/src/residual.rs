//! The residual stream's update `x + δ`, with `δ` a sublayer's output in the compute dtype.
//!
//! Under bf16 compute the stream stays f32 (as autocast keeps it), so each sublayer's output is
//! cast and added: two kernels, twice per layer. A backend whose addition promotes mixed dtypes
//! in one kernel (torch's) registers it with [`register_native`]: inference then runs it, and
//! [`register_autodiff`] makes it one autodiff operation too (its backward hands `dy` to `x` as
//! it is and to `δ` cast to δ's dtype, what the cast-and-add's backward computes). Everywhere
//! else it is the cast and the sum.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{FloatDType, Tensor, TensorMetadata, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// `(x, δ)` → `x + δ` in `x`'s dtype (δ converted exactly as a cast would), or `None` for the
/// cast and the sum.
pub type NativeResidual<B> = fn(FloatTensor<B>, FloatTensor<B>) -> Option<FloatTensor<B>>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// `(x, δ)` primitives of an `Autodiff<I>` → `x + δ`, boxed (keyed by `Autodiff<I>`).
type ErasedAutodiff = fn(Box<dyn Any>) -> Box<dyn Any>;

static AUTODIFF: Registry<ErasedAutodiff> = Registry::new();

/// Makes [`add`] on backend `B` run `native`.
pub fn register_native<B: Backend>(native: NativeResidual<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

/// Makes [`add`] on `Autodiff<I>` (no checkpointing) one operation whose forward is `I`'s native
/// update (registered with [`register_native`]; the cast and the sum where it declines).
pub fn register_autodiff<I: Backend>() {
    fn erased<I: Backend>(args: Box<dyn Any>) -> Box<dyn Any> {
        let (x, delta) = *args
            .downcast::<(FloatTensor<Autodiff<I>>, FloatTensor<Autodiff<I>>)>()
            .expect("registered under this type's TypeId");
        Box::new(autodiff_add::<I>(x, delta))
    }
    AUTODIFF.insert(TypeId::of::<Autodiff<I>>(), erased::<I>);
}

/// `x + δ` in `x`'s dtype.
pub fn add<B: Backend, const D: usize>(x: Tensor<B, D>, delta: Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    if delta.dtype() == dtype {
        return x + delta;
    }
    let prim = |t: &Tensor<B, D>| t.clone().into_primitive().tensor();
    if let Some(f) = AUTODIFF.get(TypeId::of::<B>()) {
        let y = *f(Box::new((prim(&x), prim(&delta))))
            .downcast::<FloatTensor<B>>()
            .expect("the registered function returns the same backend's primitive");
        return Tensor::from_primitive(TensorPrimitive::Float(y));
    }
    if let Some(f) = REGISTRY.native::<NativeResidual<B>>(TypeId::of::<B>())
        && let Some(y) = f(prim(&x), prim(&delta))
    {
        return Tensor::from_primitive(TensorPrimitive::Float(y));
    }
    x + delta.cast(dtype)
}

#[derive(Debug)]
struct ResidualBackward;

impl<B: Backend> Backward<B, 2> for ResidualBackward {
    /// δ's dtype.
    type State = FloatDType;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_delta] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = node_delta {
            grads.register::<B>(node.id, B::float_cast(dy.clone(), ops.state));
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dy);
        }
    }
}

fn autodiff_add<I: Backend>(
    x: FloatTensor<Autodiff<I>>,
    delta: FloatTensor<Autodiff<I>>,
) -> FloatTensor<Autodiff<I>> {
    let delta_dtype: FloatDType = delta.primitive.dtype().into();
    let forward = || {
        let native = REGISTRY.native::<NativeResidual<I>>(TypeId::of::<I>());
        let (xp, dp) = (x.primitive.clone(), delta.primitive.clone());
        native
            .and_then(|f| f(xp.clone(), dp.clone()))
            .unwrap_or_else(|| I::float_add(xp.clone(), I::float_cast(dp, xp.dtype().into())))
    };
    match ResidualBackward
        .prepare::<NoCheckpointing>([x.node.clone(), delta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(delta_dtype, forward()),
        OpsKind::UnTracked(prep) => prep.finish(forward()),
    }
}
