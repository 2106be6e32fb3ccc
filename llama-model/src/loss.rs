//! Next-token cross-entropy as one autodiff operation.
//!
//! Written with tensor ops under `Autodiff`, `log_softmax(logits).gather(targets).mean()` keeps
//! several `[tokens, vocab]` f32 tensors (the cast logits, the shifted exponentials, the
//! log-softmax) for the backward pass, and its backward walks each of them again: at 125m with
//! batch 8 × 2048 one such tensor is 2.1 GB. The operation here saves the logits (in their own
//! dtype) and one log-sum-exp per row, and its backward is the closed form
//! `(softmax(logits) − onehot(target)) · g / n`. Registered per backend like [`crate::sdpa`];
//! without a registration [`cross_entropy`] is the tensor-op form.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorPrimitive};

use crate::dispatch::Registry;

type Erased = fn(Box<dyn Any>) -> Box<dyn Any>;

static REGISTRY: Registry<Erased> = Registry::new();

/// Makes `Autodiff<I>` (no checkpointing) compute [`cross_entropy`] as one operation.
pub fn register<I: Backend>() {
    fn erased<I: Backend>(args: Box<dyn Any>) -> Box<dyn Any> {
        let (logits, targets) = *args
            .downcast::<(Tensor<Autodiff<I>, 2>, Tensor<Autodiff<I>, 1, Int>)>()
            .expect("registered under this type's TypeId");
        Box::new(autodiff_cross_entropy::<I>(logits, targets))
    }
    REGISTRY.insert(TypeId::of::<Autodiff<I>>(), erased::<I>);
}

/// Mean cross-entropy of `logits: [n, vocab]` against `targets: [n]`, with the log-softmax in f32
/// whatever the compute dtype (Burn's `CrossEntropyLoss` runs in the input dtype).
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    if let Some(f) = REGISTRY.get(TypeId::of::<B>()) {
        return *f(Box::new((logits, targets)))
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

fn float<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl<B: Backend> Backward<B, 1> for CrossEntropyBackward {
    // The logits, their rows' log-sum-exp (f32, `[n, 1]`), the targets.
    type State = (FloatTensor<B>, FloatTensor<B>, IntTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let Some(node) = node else { return };
        let g = float::<B, 1>(grads.consume::<B>(&ops.node));
        let (logits, lse, targets) = ops.state;
        let logits = float::<B, 2>(logits);
        let dtype = logits.dtype();
        let [n, _] = logits.dims();
        let targets = Tensor::<B, 1, Int>::from_primitive(targets).unsqueeze_dim::<2>(1);
        // d(mean_i(lse_i − x_i,t_i))/dx_ij = (softmax_ij − [j = t_i]) / n, times the upstream g.
        let scale = g.cast(DType::F32).reshape([1, 1]) / n as f64;
        let p = (logits.cast(DType::F32) - float::<B, 2>(lse)).exp();
        let minus_one = Tensor::<B, 2>::full([n, 1], -1.0, &p.device());
        let d = p.scatter(1, targets, minus_one, IndexingUpdateOp::Add) * scale;
        grads.register::<B>(node.id, d.cast(dtype).into_primitive().tensor());
    }
}

fn autodiff_cross_entropy<I: Backend>(
    logits: Tensor<Autodiff<I>, 2>,
    targets: Tensor<Autodiff<I>, 1, Int>,
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
            let (loss, lse) = forward(&logits.primitive);
            let state = (
                logits.primitive,
                lse.into_primitive().tensor(),
                targets.into_primitive(),
            );
            prep.finish(state, loss.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(&logits.primitive).0.into_primitive().tensor())
        }
    };
    float(out)
}
