//! RMSNorm as one autodiff operation against burn-nn's tensor-op form: the same output and the
//! same gradients for the input and the gain, in f32 on NdArray and in bf16 on Flex.

mod common;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::{DType, Distribution, Tensor};
use common::assert_close;
use llama_model::rms_norm::{decomposed, is_registered, register, rms_norm};

/// Output, input gradient and gain gradient of `Σ w ⊙ norm(x)` (a non-uniform upstream gradient).
fn run<B: burn::tensor::backend::AutodiffBackend>(
    x: &Tensor<B::InnerBackend, 3>,
    gamma: &Tensor<B::InnerBackend, 1>,
    w: &Tensor<B::InnerBackend, 3>,
    by_op: bool,
) -> [Tensor<B::InnerBackend, 3>; 3] {
    let [b, t, d] = x.dims();
    let x = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
    let gamma = Tensor::<B, 1>::from_inner(gamma.clone()).require_grad();
    let y = if by_op {
        rms_norm(x.clone(), gamma.clone(), 1e-5)
    } else {
        decomposed(x.clone().reshape([b * t, d]), gamma.clone(), 1e-5).reshape([b, t, d])
    };
    let loss = (y.clone().cast(DType::F32) * Tensor::from_inner(w.clone())).sum();
    let grads = loss.backward();
    let dx = x.grad(&grads).expect("x is tracked");
    let dgamma = gamma.grad(&grads).expect("gamma is tracked");
    [y.inner(), dx, dgamma.reshape([1, 1, d])]
}

fn check<B: burn::tensor::backend::AutodiffBackend>(dtype: DType, tol: f32) {
    assert!(
        is_registered::<B>(),
        "the operation, not the tensor-op fallback"
    );
    let dev = Default::default();
    let r = |shape: [usize; 3], std| {
        Tensor::<B::InnerBackend, 3>::random(shape, Distribution::Normal(0.0, std), &dev)
    };
    // Rows of different scales, as a residual stream has.
    let x = r([2, 5, 64], 1.0) * r([2, 5, 1], 3.0).abs();
    let x = x.cast(dtype);
    let gamma = Tensor::<B::InnerBackend, 1>::random([64], Distribution::Normal(1.0, 0.3), &dev)
        .cast(dtype);
    let w = r([2, 5, 64], 1.0);
    let want = run::<B>(&x, &gamma, &w, false);
    let got = run::<B>(&x, &gamma, &w, true);
    for (name, (g, w)) in ["output", "dx", "dgamma"].iter().zip(got.iter().zip(&want)) {
        assert_eq!(g.dtype(), w.dtype(), "{name}");
        assert_close(&format!("{name} ({dtype:?})"), g.clone(), w.clone(), tol);
    }
    assert_eq!(
        got[1].dtype(),
        dtype,
        "the input's gradient comes back in its dtype"
    );
    // Without gradients the operation is not recorded, and the numbers are the same.
    let plain = rms_norm(
        Tensor::<B, 3>::from_inner(x.clone()),
        Tensor::from_inner(gamma),
        1e-5,
    );
    assert_close("untracked output", plain.inner(), want[0].clone(), tol);
}

#[test]
fn the_operation_matches_burns_rms_norm_in_f32() {
    register::<NdArray>();
    check::<Autodiff<NdArray>>(DType::F32, 1e-5);
}

#[test]
fn the_operation_matches_burns_rms_norm_in_bf16() {
    register::<Flex>();
    check::<Autodiff<Flex>>(DType::F32, 1e-5);
    // bf16 inputs: one bf16 rounding of each result, and burn-nn divides in bf16 where the
    // operation multiplies in f32.
    check::<Autodiff<Flex>>(DType::BF16, 2e-2);
}
