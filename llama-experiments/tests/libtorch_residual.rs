//! The residual update on libtorch (`libtorch_residual`): torch's promoting `add` gives exactly
//! the cast and the sum it replaces, in the stream's dtype. Needs `--features tch` (CPU).
#![cfg(feature = "tch")]

use burn::backend::LibTorch;
use burn::backend::libtorch::LibTorchDevice;
use burn::tensor::{DType, Distribution, Tensor};

#[test]
fn torch_add_equals_cast_and_sum() {
    llama_model::residual::register_native::<LibTorch>(llama_experiments::libtorch_residual::add);
    let dev = LibTorchDevice::Cpu;
    let r = |dtype| {
        Tensor::<LibTorch, 3>::random([2, 5, 96], Distribution::Normal(0.0, 3.0), &dev).cast(dtype)
    };
    let (x, d) = (r(DType::F32), r(DType::BF16));
    let want = x.clone() + d.clone().cast(DType::F32);
    let got = llama_model::residual::add(x.clone(), d);
    assert_eq!(got.dtype(), DType::F32);
    assert_eq!(
        got.into_data().into_vec::<f32>().unwrap(),
        want.into_data().into_vec::<f32>().unwrap()
    );
    // Same dtypes: the plain sum.
    let y = r(DType::F32);
    let want = x.clone() + y.clone();
    assert_eq!(
        llama_model::residual::add(x, y)
            .into_data()
            .into_vec::<f32>()
            .unwrap(),
        want.into_data().into_vec::<f32>().unwrap()
    );
}

/// Under autodiff the update is one operation (`register_autodiff`): the same values, and the
/// same gradients for the stream and for the bf16 sublayer output's parameters as the cast and
/// the sum.
#[test]
fn the_autodiff_operation_has_the_cast_and_sums_gradients() {
    use burn::backend::Autodiff;
    type A = Autodiff<LibTorch>;
    llama_model::residual::register_native::<LibTorch>(llama_experiments::libtorch_residual::add);
    llama_model::residual::register_autodiff::<LibTorch>();
    let dev = LibTorchDevice::Cpu;
    let r = |shape: [usize; 3]| {
        Tensor::<LibTorch, 3>::random(shape, Distribution::Normal(0.0, 2.0), &dev)
    };
    let (x0, w0, c) = (r([2, 5, 96]), r([1, 1, 96]), r([2, 5, 96]));
    let run = |fused: bool| {
        let x = Tensor::<A, 3>::from_inner(x0.clone()).require_grad();
        let w = Tensor::<A, 3>::from_inner(w0.clone()).require_grad();
        // A bf16 sublayer output that depends on a parameter.
        let delta = (x.clone() * w.clone()).cast(DType::BF16);
        let h = match fused {
            true => llama_model::residual::add(x.clone(), delta),
            false => x.clone() + delta.cast(DType::F32),
        };
        assert_eq!(h.dtype(), DType::F32);
        let loss = (h.clone() * Tensor::from_inner(c.clone())).sum();
        let grads = loss.backward();
        let vec = |t: Tensor<LibTorch, 3>| t.into_data().into_vec::<f32>().unwrap();
        (
            vec(h.inner()),
            vec(x.grad(&grads).unwrap()),
            vec(w.grad(&grads).unwrap()),
        )
    };
    assert_eq!(run(true), run(false));
}
