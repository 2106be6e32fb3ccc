//! Training cross-entropy on libtorch through torch's own autograd: the f32 cast of the logits,
//! torch's log-softmax and NLL kernels forward, and their fused backward.
//!
//! `llama_model::loss` makes about ten passes over the `[tokens, vocab]` logits (cast, max,
//! subtract, exp, sum forward; cast, subtract, exp, scatter, scale, cast backward): at `125m` with
//! batch 8 × 2048 one pass is 2.1 GB in f32 and the passes were ~11 ms of an 87 ms step on an H200
//! (docs/performance.md). torch's kernels make about half as many; they run through torch's
//! autograd (`libtorch_autograd`), which keeps the f32 log-probabilities for the backward pass
//! (PyTorch's own training step does the same).
//!
//! Opt-in (`LLAMA_LOSS=torch`): on this project's 2-core CPU it was slower than the closed form
//! and took more memory (docs/performance.md, attempt 8); on a GPU it is not measured yet.

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use llama_model::loss::NativeLoss;
use tch::{Kind, Reduction, Tensor};

use crate::libtorch_autograd::{keep_graph, leaf, vjp};

/// The pair to register with `llama_model::loss::register_native::<LibTorch>`.
pub fn native() -> NativeLoss<LibTorch> {
    NativeLoss { forward, backward }
}

pub(crate) fn forward(
    logits: TchTensor,
    targets: TchTensor,
) -> Option<(TchTensor, Vec<TchTensor>)> {
    let leaf = leaf(&logits);
    let loss = leaf
        .tensor
        .to_kind(Kind::Float)
        .f_cross_entropy_loss::<Tensor>(&targets.tensor, None, Reduction::Mean, -100, 0.0)
        .ok()?
        .reshape([1]);
    let (out, graph) = keep_graph(loss)?;
    Some((out, vec![graph, leaf]))
}

pub(crate) fn backward(saved: Vec<TchTensor>, dloss: TchTensor) -> TchTensor {
    let [graph, leaf]: [TchTensor; 2] = saved
        .try_into()
        .unwrap_or_else(|s: Vec<_>| panic!("forward saves 2 tensors, got {}", s.len()));
    vjp(&graph, &dloss, &[&leaf])
        .pop()
        .expect("one input, one gradient")
}
