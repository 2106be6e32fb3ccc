//! torch's differentiable cross-entropy (`libtorch_loss`) against the model's closed-form
//! operation on libtorch's CPU: the loss and the logits' gradient, f32 and bf16, with an upstream
//! gradient other than one. Needs `--features tch`.
#![cfg(feature = "tch")]

mod common;

use burn::backend::Autodiff;
use burn::backend::libtorch::{LibTorch, LibTorchDevice, TchTensor};
use burn::tensor::{DType, Distribution, Int, Tensor, TensorPrimitive};
use common::rel;
use llama_experiments::libtorch_loss::native;
use llama_model::loss;

type B = LibTorch;
type A = Autodiff<LibTorch>;

fn float<const D: usize>(p: TchTensor) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// The loss and the logits' gradient of `0.5 · cross_entropy` through the registered operation.
fn autodiff(logits: &Tensor<B, 2>, targets: &Tensor<B, 1, Int>) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let x = Tensor::<A, 2>::from_inner(logits.clone()).require_grad();
    let l = loss::cross_entropy(x.clone(), Tensor::from_inner(targets.clone()));
    let grads = (l.clone() * 0.5).backward();
    (l.inner(), x.grad(&grads).expect("tracked"))
}

#[test]
fn torch_autograd_cross_entropy_matches_the_closed_form() {
    let device = LibTorchDevice::Cpu;
    let (n, vocab) = (37, 301);
    let targets =
        Tensor::<B, 1, Int>::random([n], Distribution::Uniform(0.0, vocab as f64), &device);
    for dtype in [DType::F32, DType::BF16] {
        let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let logits =
            Tensor::<B, 2>::random([n, vocab], Distribution::Normal(0.0, 3.0), &device).cast(dtype);
        loss::register::<B>();
        let (l_ref, g_ref) = autodiff(&logits, &targets);
        assert_eq!(g_ref.dtype(), dtype);

        // The pair called directly (a silent fallback cannot pass) ...
        let (l, saved) = (native().forward)(
            logits.clone().into_primitive().tensor(),
            targets.clone().into_primitive(),
        )
        .expect("torch takes these inputs");
        let l = float::<1>(l);
        assert!(
            rel(&l, &l_ref) <= 1e-5,
            "{dtype:?}: loss {}",
            rel(&l, &l_ref)
        );
        // ... with the output consumed by an operation Burn-tch may run in place.
        let _ = (l + 1.0).into_data();
        let half = Tensor::<B, 1>::from_floats([0.5], &device);
        let g = float::<2>((native().backward)(saved, half.into_primitive().tensor()));
        assert_eq!(g.dtype(), dtype);
        assert!(
            rel(&g, &g_ref) <= bound,
            "{dtype:?}: gradient {}",
            rel(&g, &g_ref)
        );

        // ... and through the registered operation.
        loss::register_native::<B>(native());
        let (l2, g2) = autodiff(&logits, &targets);
        assert!(rel(&l2, &l_ref) <= 1e-5, "{dtype:?}: registered loss");
        assert!(
            rel(&g2, &g_ref) <= bound,
            "{dtype:?}: registered gradient {}",
            rel(&g2, &g_ref)
        );
    }
}
