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
