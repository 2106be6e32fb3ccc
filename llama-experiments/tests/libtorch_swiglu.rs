//! torch's kernels for SwiGLU's gate (`libtorch_swiglu`) against Burn's autodiff of
//! `silu(a) ⊙ b` on libtorch's CPU: output and both gradients, f32 and bf16, with a non-uniform
//! upstream gradient. Needs `--features tch`.
#![cfg(feature = "tch")]

mod common;

use burn::backend::Autodiff;
use burn::backend::libtorch::{LibTorch, LibTorchDevice, TchTensor};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Distribution, Tensor, TensorPrimitive};
use common::rel;
use llama_experiments::libtorch_swiglu::native;
use llama_model::swiglu;

type B = LibTorch;
type A = Autodiff<LibTorch>;

fn float<const D: usize>(p: TchTensor) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Output and gradients of `Σ w ⊙ gate(a, b)`, by the registered operation or by Burn's autodiff.
fn autodiff(a: &Tensor<B, 3>, b: &Tensor<B, 3>, w: &Tensor<B, 3>, op: bool) -> [Tensor<B, 3>; 3] {
    let a = Tensor::<A, 3>::from_inner(a.clone()).require_grad();
    let b = Tensor::<A, 3>::from_inner(b.clone()).require_grad();
    let y = match op {
        true => swiglu::swiglu(a.clone(), b.clone()),
        false => silu(a.clone()) * b.clone(),
    };
    let grads = (y.clone().cast(DType::F32) * Tensor::from_inner(w.clone()))
        .sum()
        .backward();
    [
        y.inner(),
        a.grad(&grads).expect("tracked"),
        b.grad(&grads).expect("tracked"),
    ]
}

#[test]
fn torch_silu_kernels_match_burns_autodiff() {
    let device = LibTorchDevice::Cpu;
    let r = |std| Tensor::<B, 3>::random([3, 7, 40], Distribution::Normal(0.0, std), &device);
    for dtype in [DType::F32, DType::BF16] {
        let bound = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
        let (a, b, w) = (r(4.0).cast(dtype), r(1.0).cast(dtype), r(1.0));
        let want = autodiff(&a, &b, &w, false);

        // The pair called directly (a silent fallback cannot pass) ...
        let y = float::<3>((native().forward)(
            a.clone().into_primitive().tensor(),
            b.clone().into_primitive().tensor(),
        ));
        let g = w.clone().cast(dtype).into_primitive().tensor();
        let (da, db) = (native().backward)(
            a.clone().into_primitive().tensor(),
            b.clone().into_primitive().tensor(),
            g,
        );
        for (name, got, want) in [
            ("output", y, &want[0]),
            ("da", float(da), &want[1]),
            ("db", float(db), &want[2]),
        ] {
            assert_eq!(got.dtype(), dtype, "{name}");
            assert!(
                rel(&got, want) <= bound,
                "{dtype:?} {name}: {}",
                rel(&got, want)
            );
        }

        // ... and through the registered operation.
        swiglu::register_native::<B>(native());
        let got = autodiff(&a, &b, &w, true);
        for (name, (got, want)) in ["output", "da", "db"].iter().zip(got.iter().zip(&want)) {
            assert!(
                rel(got, want) <= bound,
                "{dtype:?} registered {name}: {}",
                rel(got, want)
            );
        }
    }
}
