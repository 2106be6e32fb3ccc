//! Handing an operation's backward pass to torch's autograd from Burn-tch (used by
//! `libtorch_attention` and `libtorch_loss`).
//!
//! Burn's autodiff never lets torch record a graph (its tensors do not require a gradient). An
//! operation that wants torch's own backward kernels runs its forward on [`leaf`]s that do, keeps
//! the output's graph ([`keep_graph`]), and in its backward pass asks torch for the
//! vector-Jacobian product of the output's gradient ([`vjp`]); torch then runs the backward that
//! matches the kernels its forward picked.
//!
//! Every handle made here shares Burn-tch's storage handle (`TchTensor::from_existing`) with the
//! tensor it aliases: Burn-tch then sees more than one owner and never updates the buffer in
//! place, which would corrupt what torch saved for the backward pass (torch would refuse it).

use burn::backend::libtorch::TchTensor;
use tch::{Kind, Tensor};

/// A detached alias of `t` that requires a gradient.
pub(crate) fn leaf(t: &TchTensor) -> TchTensor {
    TchTensor::from_existing(t.tensor.detach().set_requires_grad(true), t.storage.clone())
}

/// The output for Burn (detached) and the output with its graph (for [`vjp`]), or `None` when
/// torch recorded no graph (grad mode off on this thread): the caller then falls back.
pub(crate) fn keep_graph(out: Tensor) -> Option<(TchTensor, TchTensor)> {
    if !out.requires_grad() {
        return None;
    }
    let graph = TchTensor::new(out);
    let detached = TchTensor::from_existing(graph.tensor.detach(), graph.storage.clone());
    Some((detached, graph))
}

/// The gradients of `Σ graph ⊙ grad` with respect to `inputs` (`grad`'s vector-Jacobian product),
/// freeing the graph.
pub(crate) fn vjp(graph: &TchTensor, grad: &TchTensor, inputs: &[&TchTensor]) -> Vec<TchTensor> {
    let grad = grad.tensor.to_kind(graph.tensor.kind());
    // d(Σ out ⊙ grad)/d out = grad exactly; the sum's dtype only sizes its accumulator.
    let seed = (&graph.tensor * &grad).sum(Kind::Float);
    let inputs: Vec<&Tensor> = inputs.iter().map(|t| &t.tensor).collect();
    Tensor::run_backward(&[seed], &inputs, false, false)
        .into_iter()
        .map(TchTensor::new)
        .collect()
}
