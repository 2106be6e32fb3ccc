//! Training attention on libtorch through torch's own autograd: SDPA's forward and its fused
//! backward (flash attention on CUDA in bf16/f16, the flash CPU kernel on the CPU).
//!
//! `llama_model::sdpa` otherwise recomputes the probabilities block by block with tensor ops in the
//! backward pass, several full passes over `[batch, heads, block, T]` per block; on an H200 that
//! was about half of a 125m training step (docs/performance.md). tch 0.22 does not expose torch's
//! flash forward (`_scaled_dot_product_flash_attention`: its outputs include symbolic sizes), so
//! instead of calling the kernels by name the forward runs `scaled_dot_product_attention` through
//! torch's autograd (`libtorch_autograd`), which saves q, k, v, the output and the log-sum-exp, as
//! a flash backward needs, and picks the backward kernel that matches its forward.

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use llama_model::sdpa::NativeAttention;
use tch::Tensor;

use crate::libtorch_autograd::{keep_graph, leaf, vjp};

/// The pair to register with `llama_model::sdpa::register_native::<LibTorch>`.
pub fn native() -> NativeAttention<LibTorch> {
    NativeAttention {
        forward,
        backward,
        grouped: false,
    }
}

fn forward(
    q: TchTensor,
    k: TchTensor,
    v: TchTensor,
    causal: bool,
) -> Option<(TchTensor, Vec<TchTensor>)> {
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
    let (o, graph) = keep_graph(out)?;
    Some((o, vec![graph, ql, kl, vl]))
}

fn backward(saved: Vec<TchTensor>, dout: TchTensor) -> [TchTensor; 3] {
    let [graph, q, k, v]: [TchTensor; 4] = saved
        .try_into()
        .unwrap_or_else(|s: Vec<_>| panic!("forward saves 4 tensors, got {}", s.len()));
    vjp(&graph, &dout, &[&q, &k, &v])
        .try_into()
        .unwrap_or_else(|g: Vec<_>| panic!("three inputs, {} gradients", g.len()))
}
