//! The rotary embedding as one autodiff operation.
//!
//! Written with tensor ops (`cat(x₁c − x₂s, x₂c + x₁s)` on the two halves of each head), `Autodiff`
//! records two slices, four products, a difference, a sum and a concatenation, and its backward
//! turns each slice into a zero tensor of the full size plus a slice-assign, then sums them: on an
//! H200 ~12 kernels per rotation and ~0.4 ms per `125m` layer for queries and keys
//! (docs/performance.md, attempt 13). A rotation's backward is the inverse rotation, so the
//! operation runs the same four kernels both ways on full-width tables prepared once per pass:
//!
//! ```text
//! C = [cos, cos],  S = [−sin, sin],  y = x ⊙ C + swap(x) ⊙ S,  dx = g ⊙ C + swap(g ⊙ S)
//! ```
//!
//! where `swap` exchanges the two halves. The forward pass is bit for bit the tensor-op form's
//! (each half is the same two products and one sum). Registered per backend like
//! [`crate::rms_norm`]; unregistered, [`crate::position::RopeAngles::apply`] keeps the tensor-op
//! form. A backend with a kernel for the rotation (one fused kernel each way on CUDA) hands it over
//! with [`register_native`]; its forward kernel then also serves `I` itself (inference).

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::dispatch::{ErasedNative, Registry, float, prim};

type Erased = fn(Box<dyn Any>, &ErasedNative) -> Box<dyn Any>;

/// The operation and the registering backend's `NativeRotary<I>`, if any.
static REGISTRY: Registry<(Erased, ErasedNative)> = Registry::new();

/// A backend's own kernel for the rotation, for [`register_native`].
pub struct NativeRotary<I: Backend> {
    /// `(x, C, S)` → `x ⊙ C + swap(x) ⊙ S`, or `None` for this module's tensor ops.
    pub forward: NativeRotation<I>,
    /// `(g, C, S)` → `g ⊙ C + swap(g ⊙ S)`, or `None` for this module's tensor ops.
    pub backward: NativeRotation<I>,
}

/// See [`NativeRotary`].
pub type NativeRotation<I> =
    fn(FloatTensor<I>, FloatTensor<I>, FloatTensor<I>) -> Option<FloatTensor<I>>;

crate::dispatch::copy_native!(NativeRotary);

/// Makes `Autodiff<I>` (no checkpointing) rotate as one operation.
pub fn register<I: Backend>() {
    register_all::<I>(ErasedNative::default());
}

/// [`register`], with the backend's own kernel for both passes wherever it takes the inputs.
pub fn register_native<I: Backend>(native: NativeRotary<I>) {
    register_all::<I>(ErasedNative::new(native));
}

fn register_all<I: Backend>(native: ErasedNative) {
    fn erased<I: Backend>(args: Box<dyn Any>, native: &ErasedNative) -> Box<dyn Any> {
        let (x, c, s) = *args
            .downcast::<(
                Tensor<Autodiff<I>, 4>,
                Tensor<Autodiff<I>, 4>,
                Tensor<Autodiff<I>, 4>,
            )>()
            .expect("registered under this type's TypeId");
        Box::new(autodiff_rotate::<I>(x, c, s, native.get()))
    }
    // Inference on `I` itself (no autodiff): the native forward, where there is one.
    fn plain<I: Backend>(args: Box<dyn Any>, native: &ErasedNative) -> Box<dyn Any> {
        let (x, c, s) = *args
            .downcast::<(Tensor<I, 4>, Tensor<I, 4>, Tensor<I, 4>)>()
            .expect("registered under this type's TypeId");
        let by_native = native
            .get::<NativeRotary<I>>()
            .and_then(|n| (n.forward)(prim(x.clone()), prim(c.clone()), prim(s.clone())))
            .map(float::<I, 4>);
        Box::new(by_native.unwrap_or_else(|| tensor_op_rotate(x, c, s)))
    }
    if native.get::<NativeRotary<I>>().is_some() {
        REGISTRY.insert(TypeId::of::<I>(), (plain::<I>, native.clone()));
    }
    REGISTRY.insert(TypeId::of::<Autodiff<I>>(), (erased::<I>, native));
}

/// Whether `B` rotates as one operation.
pub fn is_registered<B: Backend>() -> bool {
    REGISTRY.get(TypeId::of::<B>()).is_some()
}

/// The full-width tables `(C, S) = ([cos, cos], [−sin, sin])` along the last dimension.
pub fn full_tables<B: Backend>(
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    (
        Tensor::cat(vec![cos.clone(), cos], 3),
        Tensor::cat(vec![sin.clone().neg(), sin], 3),
    )
}

/// `x ⊙ C + swap(x) ⊙ S` for `x: [batch, heads, time, head_dim]` and tables `[batch, 1, time,
/// head_dim]` from [`full_tables`] in `x`'s dtype; one operation where registered.
pub fn rotate<B: Backend>(x: Tensor<B, 4>, c: Tensor<B, 4>, s: Tensor<B, 4>) -> Tensor<B, 4> {
    match REGISTRY.get(TypeId::of::<B>()) {
        Some((f, native)) => *f(Box::new((x, c, s)), &native)
            .downcast::<Tensor<B, 4>>()
            .expect("the registered function returns the same backend's tensor"),
        None => tensor_op_rotate(x, c, s),
    }
}

/// [`rotate`] in tensor ops.
fn tensor_op_rotate<B: Backend>(x: Tensor<B, 4>, c: Tensor<B, 4>, s: Tensor<B, 4>) -> Tensor<B, 4> {
    x.clone() * c + swap_halves(x) * s
}

/// The two halves of the last dimension exchanged.
fn swap_halves<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    Tensor::cat(
        vec![x.clone().narrow(3, half, half), x.narrow(3, 0, half)],
        3,
    )
}

#[derive(Debug)]
struct RotaryBackward;

impl<B: Backend> Backward<B, 1> for RotaryBackward {
    /// The tables `C`, `S`, and the backend's kernel for the inverse rotation, if any.
    type State = (FloatTensor<B>, FloatTensor<B>, Option<NativeRotation<B>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let Some(node) = node else { return };
        let (c, s, native) = ops.state;
        if let Some(dx) = native.and_then(|f| f(g.clone(), c.clone(), s.clone())) {
            grads.register::<B>(node.id, dx);
            return;
        }
        let (g, c, s) = (float::<B, 4>(g), float::<B, 4>(c), float::<B, 4>(s));
        let dx = g.clone() * c + swap_halves(g * s);
        grads.register::<B>(node.id, prim(dx));
    }
}

fn autodiff_rotate<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    c: Tensor<Autodiff<I>, 4>,
    s: Tensor<Autodiff<I>, 4>,
    native: Option<NativeRotary<I>>,
) -> Tensor<Autodiff<I>, 4> {
    let x = x.into_primitive().tensor();
    // The tables are constants (built from buffers): their own graph, if any, is not followed.
    let (c, s) = (prim(c.inner()), prim(s.inner()));
    let y = native
        .and_then(|n| (n.forward)(x.primitive.clone(), c.clone(), s.clone()))
        .unwrap_or_else(|| {
            let xi = float::<I, 4>(x.primitive.clone());
            let (ct, st) = (float::<I, 4>(c.clone()), float::<I, 4>(s.clone()));
            prim(xi.clone() * ct + swap_halves(xi) * st)
        });
    let prep = RotaryBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish((c, s, native.map(|n| n.backward)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    float(out)
}
