//! SwiGLU's gate as one autodiff operation against Burn's autodiff of `silu(a) ⊙ b`: the same
//! output and the same gradients for both inputs, in f32 on NdArray and in f32/bf16 on Flex.

mod common;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Distribution, Tensor};
use common::assert_close;
use llama_model::swiglu::{is_registered, register, swiglu};

/// Output and the gradients of `a` and `b` for `Σ w ⊙ gate(a, b)` (a non-uniform upstream
/// gradient), through the operation or through Burn's autodiff of the tensor-op form.
fn run<B: burn::tensor::backend::AutodiffBackend>(
    a: &Tensor<B::InnerBackend, 3>,
    b: &Tensor<B::InnerBackend, 3>,
    w: &Tensor<B::InnerBackend, 3>,
    by_op: bool,
) -> [Tensor<B::InnerBackend, 3>; 3] {
    let a = Tensor::<B, 3>::from_inner(a.clone()).require_grad();
    let b = Tensor::<B, 3>::from_inner(b.clone()).require_grad();
    let y = match by_op {
        true => swiglu(a.clone(), b.clone()),
        false => silu(a.clone()) * b.clone(),
    };
    let loss = (y.clone().cast(DType::F32) * Tensor::from_inner(w.clone())).sum();
    let grads = loss.backward();
    let da = a.grad(&grads).expect("a is tracked");
    let db = b.grad(&grads).expect("b is tracked");
    [y.inner(), da, db]
}

fn check<B: burn::tensor::backend::AutodiffBackend>(dtype: DType, tol: f32) {
    assert!(
        is_registered::<B>(),
        "the operation, not the tensor-op fallback"
    );
    let dev = Default::default();
    let r = |std| {
        Tensor::<B::InnerBackend, 3>::random([2, 5, 48], Distribution::Normal(0.0, std), &dev)
    };
    // Gate pre-activations over σ's whole range, including its saturated tails.
    let (a, b, w) = (r(4.0).cast(dtype), r(1.0).cast(dtype), r(1.0));
    let want = run::<B>(&a, &b, &w, false);
    let got = run::<B>(&a, &b, &w, true);
    for (name, (g, w)) in ["output", "da", "db"].iter().zip(got.iter().zip(&want)) {
        assert_eq!(g.dtype(), dtype, "{name} comes back in the inputs' dtype");
        assert_close(&format!("{name} ({dtype:?})"), g.clone(), w.clone(), tol);
    }
    // Without gradients the operation is not recorded, and the numbers are the same.
    let plain = swiglu(Tensor::<B, 3>::from_inner(a), Tensor::from_inner(b));
    assert_close("untracked output", plain.inner(), want[0].clone(), tol);
}

#[test]
fn the_operation_matches_burns_autodiff_in_f32() {
    register::<NdArray>();
    check::<Autodiff<NdArray>>(DType::F32, 1e-5);
}

#[test]
fn the_operation_matches_burns_autodiff_in_bf16() {
    register::<Flex>();
    check::<Autodiff<Flex>>(DType::F32, 1e-5);
    // bf16: each side rounds its intermediate products differently.
    check::<Autodiff<Flex>>(DType::BF16, 2e-2);
}
