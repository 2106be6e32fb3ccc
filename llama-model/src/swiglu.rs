//! SwiGLU's gate, `silu(a) ⊙ b`, as one autodiff operation.
//!
//! Written with tensor ops (`a ⊙ σ(a) ⊙ b`), `Autodiff` keeps `a`, `σ(a)`, `silu(a)` and `b` for the
//! backward pass and runs about ten full-size element-wise kernels there (the products' two sides,
//! σ's backward, the sum of `a`'s two paths): on an H200 that was ~0.4 ms of each `125m` layer's
//! backward pass (docs/performance.md, attempt 11). The operation keeps `a` and `b` only, and its
//! backward is the closed form
//!
//! ```text
//! db = g ⊙ silu(a),   da = g ⊙ b ⊙ σ(a) ⊙ (1 + a ⊙ (1 − σ(a)))
//! ```
//!
//! Registered per backend like [`crate::loss`]: [`register`] with the closed form in tensor ops
//! (less memory, about as many kernels), [`register_native`] with a backend's own kernels (torch's
//! `silu` and `silu_backward` on libtorch: four kernels instead of ten). Unregistered,
//! [`swiglu`] is the tensor-op form.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::dispatch::{ErasedNative, Registry, float, prim};

type Erased = fn(Box<dyn Any>, &ErasedNative) -> Box<dyn Any>;

/// The operation and the registering backend's `NativeSwiglu<I>`, if any.
static REGISTRY: Registry<(Erased, ErasedNative)> = Registry::new();

/// A backend's own kernels for the gate, for [`register_native`].
pub struct NativeSwiglu<I: Backend> {
    /// `(a, b)` → `silu(a) ⊙ b`.
    pub forward: fn(FloatTensor<I>, FloatTensor<I>) -> FloatTensor<I>,
    /// `(a, b, g)` → `(da, db)`.
    pub backward: NativeSwigluBackward<I>,
}

/// See [`NativeSwiglu::backward`].
pub type NativeSwigluBackward<I> =
    fn(FloatTensor<I>, FloatTensor<I>, FloatTensor<I>) -> (FloatTensor<I>, FloatTensor<I>);

crate::dispatch::copy_native!(NativeSwiglu);

/// Makes `Autodiff<I>` (no checkpointing) compute [`swiglu`] as one operation, closed form.
pub fn register<I: Backend>() {
    register_all::<I>(ErasedNative::default());
}

/// [`register`], with the backend's own kernels for both passes.
pub fn register_native<I: Backend>(native: NativeSwiglu<I>) {
    register_all::<I>(ErasedNative::new(native));
}

/// Whether `B` computes [`swiglu`] as one operation.
pub fn is_registered<B: Backend>() -> bool {
    REGISTRY.get(TypeId::of::<B>()).is_some()
}

fn register_all<I: Backend>(native: ErasedNative) {
    fn erased<I: Backend>(args: Box<dyn Any>, native: &ErasedNative) -> Box<dyn Any> {
        let (a, b) = *args
            .downcast::<(Tensor<Autodiff<I>, 3>, Tensor<Autodiff<I>, 3>)>()
            .expect("registered under this type's TypeId");
        Box::new(autodiff_swiglu::<I>(a, b, native.get()))
    }
    // Inference on `I` itself (no autodiff): the native forward.
    fn plain<I: Backend>(args: Box<dyn Any>, native: &ErasedNative) -> Box<dyn Any> {
        let (a, b) = *args
            .downcast::<(Tensor<I, 3>, Tensor<I, 3>)>()
            .expect("registered under this type's TypeId");
        Box::new(match native.get::<NativeSwiglu<I>>() {
            Some(n) => float::<I, 3>((n.forward)(prim(a), prim(b))),
            None => silu(a) * b,
        })
    }
    if native.get::<NativeSwiglu<I>>().is_some() {
        REGISTRY.insert(TypeId::of::<I>(), (plain::<I>, native.clone()));
    }
    REGISTRY.insert(TypeId::of::<Autodiff<I>>(), (erased::<I>, native));
}

/// `silu(a) ⊙ b` for `a, b: [batch, time, hidden]`, in their dtype.
pub fn swiglu<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    match REGISTRY.get(TypeId::of::<B>()) {
        Some((f, native)) => *f(Box::new((a, b)), &native)
            .downcast::<Tensor<B, 3>>()
            .expect("the registered function returns the same backend's tensor"),
        None => silu(a) * b,
    }
}

/// The closed-form gradients `(da, db)` of `Σ g ⊙ silu(a) ⊙ b` (also a native backward's
/// fallback for inputs its kernel does not take).
pub fn closed_form_backward<B: Backend>(
    a: Tensor<B, 3>,
    b: Tensor<B, 3>,
    g: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let s = sigmoid(a.clone());
    let db = g.clone() * a.clone() * s.clone();
    let ds = s.clone() * (a * (s.neg() + 1.0) + 1.0);
    (g * b * ds, db)
}

#[derive(Debug)]
struct SwigluBackward;

/// `a`, `b`, and the native backward if the forward was native.
type Saved<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    Option<NativeSwigluBackward<B>>,
);

impl<B: Backend> Backward<B, 2> for SwigluBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (a, b, native) = ops.state;
        let (da, db) = match native {
            Some(backward) => backward(a, b, g),
            None => {
                let (da, db) = closed_form_backward::<B>(float(a), float(b), float(g));
                (prim(da), prim(db))
            }
        };
        if let Some(node) = node_a {
            grads.register::<B>(node.id, da);
        }
        if let Some(node) = node_b {
            grads.register::<B>(node.id, db);
        }
    }
}

fn autodiff_swiglu<I: Backend>(
    a: Tensor<Autodiff<I>, 3>,
    b: Tensor<Autodiff<I>, 3>,
    native: Option<NativeSwiglu<I>>,
) -> Tensor<Autodiff<I>, 3> {
    let a = a.into_primitive().tensor();
    let b = b.into_primitive().tensor();
    let (ai, bi) = (a.primitive.clone(), b.primitive.clone());
    let y = match native {
        Some(n) => (n.forward)(ai.clone(), bi.clone()),
        None => prim(silu(float::<I, 3>(ai.clone())) * float::<I, 3>(bi.clone())),
    };
    let prep = SwigluBackward
        .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish((ai, bi, native.map(|n| n.backward)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    float(out)
}
