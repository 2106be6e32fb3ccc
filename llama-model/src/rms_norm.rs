//! RMSNorm as one autodiff operation with a closed-form backward.
//!
//! Burn's `RmsNorm` is written with tensor ops: under `Autodiff` it keeps the input, its square,
//! the root mean square and the normalised tensor for the backward pass, whose chain (square →
//! mean → sqrt → divide → scale, then summing the two paths into the input's gradient) runs about
//! 12 full-size operations on the `[tokens, dim]` tensor. The operation here keeps only the
//! normalised input `x̂ = x·r` (f32) and the per-row `r = 1/√(mean(x²) + ε)`, and its backward is
//! the closed form (8 full-size operations)
//!
//! ```text
//! t = dy ⊙ γ,   dγ = Σ_rows dy ⊙ x̂,   dx = r ⊙ (t − x̂ ⊙ mean_row(t ⊙ x̂))
//! ```
//!
//! Registered per backend like [`crate::loss`] (opt-in in the `llama` tool: on the CPU it was no
//! faster, docs/performance.md); without a registration [`rms_norm`] is Burn's tensor-op form. A
//! backend with its own kernels for both passes (one fused kernel each way on CUDA) hands them
//! over with [`register_native`]; its forward kernel then also serves `I` itself (inference).

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor};

use crate::dispatch::{ErasedNative, Registry, float, prim};

type Erased = fn(Box<dyn Any>, &ErasedNative) -> Box<dyn Any>;

/// The operation and the registering backend's `NativeRmsNorm<I>`, if any.
static REGISTRY: Registry<(Erased, ErasedNative)> = Registry::new();

/// A backend's own kernels for both passes, for [`register_native`].
pub struct NativeRmsNorm<I: Backend> {
    /// `(x [n, d], γ [d], ε, y's dtype)` → `y` and what the backward pass needs, or `None` to use
    /// this module's tensor ops for these inputs.
    pub forward: NativeRmsNormForward<I>,
    /// What `forward` saved and `dy` → `(dx, dγ)`.
    pub backward: NativeRmsNormBackward<I>,
}

/// See [`NativeRmsNorm::forward`].
pub type NativeRmsNormForward<I> =
    fn(FloatTensor<I>, FloatTensor<I>, f64, DType) -> Option<(FloatTensor<I>, Vec<FloatTensor<I>>)>;

/// See [`NativeRmsNorm::backward`]; `dx` in x's dtype, `dγ` in γ's or f32.
pub type NativeRmsNormBackward<I> =
    fn(Vec<FloatTensor<I>>, FloatTensor<I>) -> (FloatTensor<I>, FloatTensor<I>);

crate::dispatch::copy_native!(NativeRmsNorm);

/// Makes `Autodiff<I>` (no checkpointing) compute [`rms_norm`] as one operation.
pub fn register<I: Backend>() {
    register_all::<I>(ErasedNative::default());
}

/// [`register`], with both passes in the backend's own kernels wherever its `forward` accepts the
/// inputs.
pub fn register_native<I: Backend>(native: NativeRmsNorm<I>) {
    register_all::<I>(ErasedNative::new(native));
}

fn register_all<I: Backend>(native: ErasedNative) {
    fn erased<I: Backend>(args: Box<dyn Any>, native: &ErasedNative) -> Box<dyn Any> {
        let (x, gamma, eps, out) = *args
            .downcast::<(Tensor<Autodiff<I>, 2>, Tensor<Autodiff<I>, 1>, f64, DType)>()
            .expect("registered under this type's TypeId");
        Box::new(autodiff_rms_norm::<I>(x, gamma, eps, out, native.get()))
    }
    // Inference on `I` itself (no autodiff): the native forward, where there is one.
    fn plain<I: Backend>(args: Box<dyn Any>, native: &ErasedNative) -> Box<dyn Any> {
        let (x, gamma, eps, out) = *args
            .downcast::<(Tensor<I, 2>, Tensor<I, 1>, f64, DType)>()
            .expect("registered under this type's TypeId");
        let by_native = native.get::<NativeRmsNorm<I>>().and_then(|n| {
            (n.forward)(prim(x.clone()), prim(gamma.clone()), eps, out).map(|(y, _)| float(y))
        });
        Box::new(by_native.unwrap_or_else(|| decomposed_to(x, gamma, eps, out)))
    }
    if native.get::<NativeRmsNorm<I>>().is_some() {
        REGISTRY.insert(TypeId::of::<I>(), (plain::<I>, native.clone()));
    }
    REGISTRY.insert(TypeId::of::<Autodiff<I>>(), (erased::<I>, native));
}

/// Whether `B` computes [`rms_norm`] as one operation.
pub fn is_registered<B: Backend>() -> bool {
    REGISTRY.get(TypeId::of::<B>()).is_some()
}

/// `x / √(mean(x²) + ε) · γ` over the last dimension, the statistics in f32 and the result in
/// `x`'s dtype (as burn-nn's `RmsNorm`, whose parameters [`crate::norm::Norm`] keeps).
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    rms_norm_to(x, gamma, eps, dtype)
}

/// [`rms_norm`] with the result in `out` (the next layer's compute dtype: one kernel can then
/// normalise and cast, and the backward pass takes the gradient in that dtype).
pub fn rms_norm_to<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    eps: f64,
    out: DType,
) -> Tensor<B, D> {
    // Unregistered, no reshapes: each is one more dispatched operation per norm and decoded token.
    let Some((f, native)) = REGISTRY.get(TypeId::of::<B>()) else {
        return decomposed_to(x, gamma, eps, out);
    };
    let dims = x.dims();
    let d = dims[D - 1];
    let x = x.reshape([dims[..D - 1].iter().product::<usize>(), d]);
    let y = *f(Box::new((x, gamma, eps, out)), &native)
        .downcast::<Tensor<B, 2>>()
        .expect("the registered function returns the same backend's tensor");
    y.reshape(dims)
}

/// [`decomposed`] with its result in `out` (no cast when it is already).
fn decomposed_to<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    eps: f64,
    out: DType,
) -> Tensor<B, D> {
    let y = decomposed(x, gamma, eps);
    match y.dtype() == out {
        true => y,
        false => y.cast(out),
    }
}

/// burn-nn's `RmsNorm::forward`, the formula the operation must reproduce.
pub fn decomposed<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(D - 1) + eps).sqrt();
    (x / rms.cast(dtype)) * gamma.unsqueeze()
}

#[derive(Debug)]
struct RmsNormBackward;

/// What the backward pass needs.
#[derive(Debug, Clone)]
enum Saved<B: Backend> {
    /// `x̂` (f32, `[n, d]`), `r` (f32, `[n, 1]`), `γ`, and `x`'s dtype.
    ClosedForm(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, DType),
    /// What a native forward returned, and its backward.
    Native(Vec<FloatTensor<B>>, NativeRmsNormBackward<B>),
}

impl<B: Backend> Backward<B, 2> for RmsNormBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (dx, dgamma) = match ops.state {
            Saved::ClosedForm(xhat, r, gamma, x_dtype) => {
                let gamma = float::<B, 1>(gamma);
                let gamma_dtype = gamma.dtype();
                let (dx, dgamma) = closed_form_grads(float(dy), float(xhat), float(r), gamma);
                (prim(dx.cast(x_dtype)), prim(dgamma.cast(gamma_dtype)))
            }
            Saved::Native(saved, backward) => backward(saved, dy),
        };
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, dgamma);
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
    }
}

/// `(dx, dγ)` of RMSNorm in f32 for the output's gradient `dy`, from `x̂ = x·r` (f32, `[n, d]`)
/// and `r` (f32, `[n, 1]`): the closed form of the module doc. (Also the fallback of a backend's
/// own kernels.)
pub fn closed_form_grads<B: Backend>(
    dy: Tensor<B, 2>,
    xhat: Tensor<B, 2>,
    r: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let dy = dy.cast(DType::F32);
    let d = xhat.dims()[1];
    let dgamma = (dy.clone() * xhat.clone()).sum_dim(0).reshape([d]);
    let t = dy * gamma.cast(DType::F32).unsqueeze::<2>();
    let c = (t.clone() * xhat.clone()).mean_dim(1);
    (((t - xhat * c) * r), dgamma)
}

fn autodiff_rms_norm<I: Backend>(
    x: Tensor<Autodiff<I>, 2>,
    gamma: Tensor<Autodiff<I>, 1>,
    eps: f64,
    out: DType,
    native: Option<NativeRmsNorm<I>>,
) -> Tensor<Autodiff<I>, 2> {
    let x = x.into_primitive().tensor();
    let gamma = gamma.into_primitive().tensor();
    // The closed form's forward: y and what its backward keeps.
    let closed_form = || {
        let x_in = float::<I, 2>(x.primitive.clone());
        let gamma_in = float::<I, 1>(gamma.primitive.clone());
        let x_dtype = x_in.dtype();
        let xf = x_in.cast(DType::F32);
        let r = (xf.clone().square().mean_dim(1) + eps).sqrt().recip();
        let xhat = xf * r.clone();
        let y = (xhat.clone() * gamma_in.clone().cast(DType::F32).unsqueeze()).cast(out);
        let saved = Saved::ClosedForm(prim(xhat), prim(r), prim(gamma_in), x_dtype);
        (prim(y), saved)
    };
    let prep = RmsNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone()])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let by_native = native.and_then(|n| {
                (n.forward)(x.primitive.clone(), gamma.primitive.clone(), eps, out)
                    .map(|(y, saved)| (y, Saved::Native(saved, n.backward)))
            });
            let (y, state) = by_native.unwrap_or_else(closed_form);
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(closed_form().0),
    };
    float(out)
}
