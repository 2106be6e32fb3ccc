//! torch's differentiable attention (`libtorch_attention`) against the model's own blocked
//! backward on libtorch's CPU: outputs and dq/dk/dv, causal and full, f32 and bf16. Needs
//! `--features tch`.
#![cfg(feature = "tch")]

mod common;

use burn::backend::libtorch::{LibTorch, LibTorchDevice};
use burn::backend::{Autodiff, libtorch::TchTensor};
use burn::tensor::{DType, Distribution, Tensor, TensorPrimitive};
use common::rel;
use llama_experiments::libtorch_attention::native;
use llama_model::sdpa::{self, AttentionForward};

type B = LibTorch;
type A = Autodiff<LibTorch>;

fn float(p: TchTensor) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Output and dq, dk, dv of `Σ attention(q, k, v) ⊙ w` through the registered operation.
fn autodiff([q, k, v, w]: &[Tensor<B, 4>; 4], causal: bool) -> (Tensor<B, 4>, [Tensor<B, 4>; 3]) {
    let leaf = |t: &Tensor<B, 4>| Tensor::<A, 4>::from_inner(t.clone()).require_grad();
    let (ql, kl, vl) = (leaf(q), leaf(k), leaf(v));
    let o = sdpa::try_attention(ql.clone(), kl.clone(), vl.clone(), causal)
        .unwrap_or_else(|_| panic!("registered"));
    let grads = (o.clone() * Tensor::from_inner(w.clone())).sum().backward();
    let g = |t: &Tensor<A, 4>| t.grad(&grads).expect("input is tracked");
    (o.inner(), [g(&ql), g(&kl), g(&vl)])
}

#[test]
fn torch_autograd_attention_matches_the_blocked_backward() {
    let device = LibTorchDevice::Cpu;
    let normal = Distribution::Normal(0.0, 1.0);
    for dtype in [DType::F32, DType::BF16] {
        let bound = if dtype == DType::F32 { 2e-5 } else { 3e-2 };
        // 150 queries: several 64-query blocks on the blocked side (1-byte budget below).
        let x = || Tensor::<B, 4>::random([2, 3, 150, 32], normal, &device).cast(dtype);
        let inputs = [x(), x(), x(), x()];
        for causal in [true, false] {
            sdpa::register_with_block_bytes::<B>(AttentionForward::Blocked, 1);
            let (o_ref, g_ref) = autodiff(&inputs, causal);

            // The pair itself, called directly (so a silent fallback cannot pass the test) ...
            let [q, k, v, w] = inputs.clone().map(|t| t.into_primitive().tensor());
            let (o, saved) = (native().forward)(q, k, v, causal).expect("torch takes these inputs");
            let o = float(o);
            let what = format!("{dtype:?} causal={causal}");
            assert!(
                rel(&o, &o_ref) <= bound,
                "{what}: output {}",
                rel(&o, &o_ref)
            );
            // ... with the output then consumed by an operation Burn-tch runs in place when the
            // buffer has no other handle (it must not write into what torch saved: torch would
            // refuse the backward pass).
            let _ = (o + 1.0).into_data();
            let grads = (native().backward)(saved, w);
            for (i, (g, r)) in grads.into_iter().zip(&g_ref).enumerate() {
                let e = rel(&float(g), r);
                assert!(e <= bound, "{what}: d{} differs by {e}", ["q", "k", "v"][i]);
            }

            // ... and through the registered operation.
            sdpa::register_native::<B>(AttentionForward::Fused, native());
            let (o2, g2) = autodiff(&inputs, causal);
            assert!(rel(&o2, &o_ref) <= bound, "{what}: registered output");
            for (g, r) in g2.iter().zip(&g_ref) {
                assert!(
                    rel(g, r) <= bound,
                    "{what}: registered gradient {}",
                    rel(g, r)
                );
            }
        }
    }
}
