//! Next-token cross-entropy as one autodiff operation.
//!
//! Written with tensor ops under `Autodiff`, `log_softmax(logits).gather(targets).mean()` keeps
//! several `[tokens, vocab]` f32 tensors (the cast logits, the shifted exponentials, the
//! log-softmax) for the backward pass, and its backward walks each of them again: at 125m with
//! batch 8 × 2048 one such tensor is 2.1 GB. The operation here saves the logits (in their own
//! dtype) and one log-sum-exp per row, and its backward is the closed form
//! `(softmax(logits) − onehot(target)) · g / n`. Registered per backend like [`crate::sdpa`];
//! without a registration [`cross_entropy`] is the tensor-op form. A backend whose library has a
//! differentiable cross-entropy with fewer passes over the logits (torch's log-softmax kernels) can
//! hand both passes over with [`register_native`].

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor};

use crate::dispatch::{ErasedNative, Registry, float};

type Erased = fn(Box<dyn Any>, &ErasedNative) -> Box<dyn Any>;

/// The operation and the registering backend's `NativeLoss<I>`, if any.
static REGISTRY: Registry<(Erased, ErasedNative)> = Registry::new();

/// A backend's own differentiable mean cross-entropy, for [`register_native`].
pub struct NativeLoss<I: Backend> {
    /// `(logits [n, vocab], targets [n])` → the loss (`[1]`, f32) and what the backward pass
    /// needs, or `None` to use this module's operation for these inputs.
    pub forward: NativeLossForward<I>,
    /// What `forward` saved and the loss's gradient (`[1]`) → the logits' gradient.
    pub backward: NativeLossBackward<I>,
}

/// See [`NativeLoss::forward`].
pub type NativeLossForward<I> =
    fn(FloatTensor<I>, IntTensor<I>) -> Option<(FloatTensor<I>, Vec<FloatTensor<I>>)>;

/// See [`NativeLoss::backward`].
pub type NativeLossBackward<I> = fn(Vec<FloatTensor<I>>, FloatTensor<I>) -> FloatTensor<I>;

crate::dispatch::copy_native!(NativeLoss);

/// Makes `Autodiff<I>` (no checkpointing) compute [`cross_entropy`] as one operation.
pub fn register<I: Backend>() {
    register_all::<I>(ErasedNative::default());
}

/// [`register`], with training going through the backend's own differentiable cross-entropy
/// wherever its `forward` accepts the inputs.
pub fn register_native<I: Backend>(native: NativeLoss<I>) {
    register_all::<I>(ErasedNative::new(native));
}

fn register_all<I: Backend>(native: ErasedNative) {
    fn erased<I: Backend>(args: Box<dyn Any>, native: &ErasedNative) -> Box<dyn Any> {
        let (logits, targets) = *args
            .downcast::<(Tensor<Autodiff<I>, 2>, Tensor<Autodiff<I>, 1, Int>)>()
            .expect("registered under this type's TypeId");
        Box::new(autodiff_cross_entropy::<I>(logits, targets, native.get()))
    }
    REGISTRY.insert(TypeId::of::<Autodiff<I>>(), (erased::<I>, native));
}

/// Mean cross-entropy of `logits: [n, vocab]` against `targets: [n]`, with the log-softmax in f32
/// whatever the compute dtype (Burn's `CrossEntropyLoss` runs in the input dtype).
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    if let Some((f, native)) = REGISTRY.get(TypeId::of::<B>()) {
        return *f(Box::new((logits, targets)), &native)
            .downcast::<Tensor<B, 1>>()
            .expect("the registered function returns the same backend's tensor");
    }
    let logp = log_softmax(logits.cast(DType::F32), 1);
    logp.gather(1, targets.unsqueeze_dim(1)).mean().neg()
}

/// `log Σ_j exp(x_ij)` per row, `[n, 1]`, in f32.
fn log_sum_exp<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let m = x.clone().max_dim(1);
    (x - m.clone()).exp().sum_dim(1).log() + m
}

#[derive(Debug)]
struct CrossEntropyBackward;

/// What the forward pass keeps for the backward pass.
#[derive(Debug, Clone)]
enum Saved<B: Backend> {
    /// The logits, their rows' log-sum-exp (f32, `[n, 1]`), the targets.
    ClosedForm(FloatTensor<B>, FloatTensor<B>, IntTensor<B>),
    /// What a native forward returned, and its backward.
    Native(Vec<FloatTensor<B>>, NativeLossBackward<B>),
}

impl<B: Backend> Backward<B, 1> for CrossEntropyBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let Some(node) = node else { return };
        let g = grads.consume::<B>(&ops.node);
        let (logits, lse, targets) = match ops.state {
            Saved::ClosedForm(logits, lse, targets) => (logits, lse, targets),
            Saved::Native(saved, backward) => {
                grads.register::<B>(node.id, backward(saved, g));
                return;
            }
        };
        let d = closed_form_grad(
            float::<B, 2>(logits),
            float::<B, 2>(lse),
            Tensor::from_primitive(targets),
            float::<B, 1>(g),
        );
        grads.register::<B>(node.id, d.into_primitive().tensor());
    }
}

/// The logits' gradient of [`cross_entropy`] for the loss's gradient `g` (`[1]`), from the
/// logits, their rows' log-sum-exp (f32, `[n, 1]`) and the targets: `(softmax − onehot) · g / n`,
/// in the logits' dtype. (Also the fallback of a backend's own kernels.)
pub fn closed_form_grad<B: Backend>(
    logits: Tensor<B, 2>,
    lse: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    g: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let dtype = logits.dtype();
    let [n, _] = logits.dims();
    // d(mean_i(lse_i − x_i,t_i))/dx_ij = (softmax_ij − [j = t_i]) / n, times the upstream g.
    let scale = g.cast(DType::F32).reshape([1, 1]) / n as f64;
    let p = (logits.cast(DType::F32) - lse).exp();
    let minus_one = Tensor::<B, 2>::full([n, 1], -1.0, &p.device());
    let d = p.scatter(
        1,
        targets.unsqueeze_dim(1),
        minus_one,
        IndexingUpdateOp::Add,
    ) * scale;
    d.cast(dtype)
}

fn autodiff_cross_entropy<I: Backend>(
    logits: Tensor<Autodiff<I>, 2>,
    targets: Tensor<Autodiff<I>, 1, Int>,
    native: Option<NativeLoss<I>>,
) -> Tensor<Autodiff<I>, 1> {
    let logits = logits.into_primitive().tensor();
    let targets: Tensor<I, 1, Int> = Tensor::from_primitive(targets.into_primitive());
    let forward = |logits: &FloatTensor<I>| {
        let x = float::<I, 2>(logits.clone()).cast(DType::F32);
        let lse = log_sum_exp(x.clone());
        let picked = x.gather(1, targets.clone().unsqueeze_dim(1));
        let loss = (lse.clone() - picked).mean();
        (loss, lse)
    };
    let prep = CrossEntropyBackward
        .prepare::<NoCheckpointing>([logits.node.clone()])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let by_native = native.and_then(|n| {
                (n.forward)(logits.primitive.clone(), targets.clone().into_primitive())
                    .map(|(loss, saved)| (loss, Saved::Native(saved, n.backward)))
            });
            let (loss, state) = by_native.unwrap_or_else(|| {
                let (loss, lse) = forward(&logits.primitive);
                let state = Saved::ClosedForm(
                    logits.primitive,
                    lse.into_primitive().tensor(),
                    targets.clone().into_primitive(),
                );
                (loss.into_primitive().tensor(), state)
            });
            prep.finish(state, loss)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(&logits.primitive).0.into_primitive().tensor())
        }
    };
    float(out)
}
