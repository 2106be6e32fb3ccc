//! Training attention on libtorch through torch's own autograd: SDPA's forward and its fused
//! backward (flash attention on CUDA in bf16/f16, the flash CPU kernel on the CPU).
//!
//! `llama_model::sdpa` otherwise recomputes the probabilities block by block with tensor ops in the
//! backward pass, several full passes over `[batch, heads, block, T]` per block; on an H200 that
//! was about half of a 125m training step (docs/performance.md). tch 0.22 does not expose torch's
//! flash forward (`_scaled_dot_product_flash_attention`: its outputs include symbolic sizes), so
//! instead of calling the kernels by name the forward runs `scaled_dot_product_attention` on
//! detached leaves that require a gradient and keeps the output with its autograd graph (q, k, v,
//! the output and the log-sum-exp, the same as a flash backward needs). The backward pass asks
//! torch for the gradients of `Σ out ⊙ dout` with respect to the leaves, i.e. `dout`'s
//! vector-Jacobian product, and torch picks the backward kernel that matches its forward.

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use llama_model::sdpa::NativeAttention;
use tch::Tensor;

/// The pair to register with `llama_model::sdpa::register_native::<LibTorch>`.
pub fn native() -> NativeAttention<LibTorch> {
    NativeAttention { forward, backward }
}

fn forward(
    q: TchTensor,
    k: TchTensor,
    v: TchTensor,
    causal: bool,
) -> Option<(TchTensor, Vec<TchTensor>)> {
    // `from_existing` with the input's storage: Burn-tch then sees two handles on the buffer and
    // never updates it in place, which would corrupt what torch saved for the backward pass.
    let leaf = |t: &TchTensor| {
        TchTensor::from_existing(t.tensor.detach().set_requires_grad(true), t.storage.clone())
    };
    let (ql, kl, vl) = (leaf(&q), leaf(&k), leaf(&v));
    let out = Tensor::f_scaled_dot_product_attention(
        &ql.tensor,
        &kl.tensor,
        &vl.tensor,
        None::<Tensor>,
        0.0,
        causal,
        None,
        false,
    )
    .ok()?;
    // No graph (torch's grad mode off on this thread): let the generic path do it.
    if !out.requires_grad() {
        return None;
    }
    let graph = TchTensor::new(out);
    let o = TchTensor::from_existing(graph.tensor.detach(), graph.storage.clone());
    Some((o, vec![graph, ql, kl, vl]))
}

fn backward(saved: Vec<TchTensor>, dout: TchTensor) -> [TchTensor; 3] {
    let [graph, q, k, v]: [TchTensor; 4] = saved
        .try_into()
        .unwrap_or_else(|s: Vec<_>| panic!("forward saves 4 tensors, got {}", s.len()));
    let dout = dout.tensor.to_kind(graph.tensor.kind());
    // d(Σ out ⊙ dout)/d out = dout exactly; the sum's dtype only sizes its accumulator.
    let seed = (&graph.tensor * &dout).sum(tch::Kind::Float);
    let grads = Tensor::run_backward(&[seed], &[&q.tensor, &k.tensor, &v.tensor], false, false);
    let [dq, dk, dv]: [Tensor; 3] = grads
        .try_into()
        .unwrap_or_else(|g: Vec<_>| panic!("three inputs, {} gradients", g.len()));
    [TchTensor::new(dq), TchTensor::new(dk), TchTensor::new(dv)]
}
