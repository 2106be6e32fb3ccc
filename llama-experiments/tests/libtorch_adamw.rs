//! AdamW's bucket update with torch's kernels (`libtorch_adamw`) on libtorch's CPU: the optimiser
//! against the f64 reference of torch's AdamW, and the kernels called directly against the
//! tensor-op form (so that a silent fallback cannot pass). Needs `--features tch`.
#![cfg(feature = "tch")]

mod common;

use burn::backend::Autodiff;
use burn::backend::libtorch::{LibTorch, LibTorchDevice};
use llama_experiments::libtorch_adamw::try_update;

#[test]
fn the_optimiser_with_torchs_kernels_is_torchs_adamw() {
    let device = LibTorchDevice::Cpu;
    common::adamw::check_torch_adamw::<Autodiff<LibTorch>>(&device, true, None);
    common::adamw::check_torch_adamw::<Autodiff<LibTorch>>(&device, false, None);
}

#[test]
fn torchs_kernels_match_the_tensor_op_update() {
    let cases = [
        (1000, 1, 0.01, false, false),
        (1000, 7, 0.0, true, true),
        (1000, 7, 0.01, true, false),
    ];
    common::adamw::check_update::<LibTorch>(&LibTorchDevice::Cpu, &cases, |a| {
        try_update(a, false).ok()
    });
}

/// `llama_model::weight_cast` registered: a bf16 product's weight gradient reaches the optimiser
/// in bf16, exactly the f32 gradient of the plain cast rounded nowhere (widening is exact);
/// `grads_to_f32` widens it for an accumulation; the optimiser's update from it equals the
/// update from the f32 gradient.
#[test]
fn weight_gradients_stay_bf16_and_update_alike() {
    use burn::optim::GradientsParams;
    use burn::tensor::{DType, Distribution, Tensor};
    use llama_experiments::train::config::OptimConfig;
    use llama_experiments::train::optim::{LlamaOptimizer, grads_to_f32};
    use llama_model::precision::Precision;
    type A = Autodiff<LibTorch>;
    let device = LibTorchDevice::Cpu;
    let lin: burn::nn::Linear<A> = burn::nn::LinearConfig::new(48, 24)
        .with_bias(false)
        .init(&device);
    let x = Tensor::<LibTorch, 2>::random([6, 48], Distribution::Normal(0.0, 1.0), &device);
    let c = Tensor::<LibTorch, 2>::random([6, 24], Distribution::Normal(0.0, 1.0), &device);
    let grads_of = |lin: &burn::nn::Linear<A>| {
        let y = Precision::Bf16.linear(lin, Tensor::<A, 2>::from_inner(x.clone()));
        let loss = (y.cast(DType::F32) * Tensor::from_inner(c.clone())).sum();
        GradientsParams::from_grads(loss.backward(), lin)
    };
    let mut plain = grads_of(&lin);
    let w_plain = plain.remove::<LibTorch, 2>(lin.weight.id).unwrap();
    assert_eq!(w_plain.dtype(), DType::F32);
    llama_model::weight_cast::register::<LibTorch>();
    let kept = grads_of(&lin);
    let widened = grads_to_f32(&lin, grads_of(&lin));
    let mut kept_copy = grads_of(&lin);
    let w_kept = kept_copy.remove::<LibTorch, 2>(lin.weight.id).unwrap();
    assert_eq!(w_kept.dtype(), DType::BF16);
    let f32s = |t: Tensor<LibTorch, 2>| t.cast(DType::F32).into_data().to_vec::<f32>().unwrap();
    assert_eq!(f32s(w_kept), f32s(w_plain.clone()));
    let mut widened = widened;
    let w_widened = widened.remove::<LibTorch, 2>(lin.weight.id).unwrap();
    assert_eq!(w_widened.dtype(), DType::F32);
    assert_eq!(f32s(w_widened), f32s(w_plain.clone()));
    // One optimiser step from the bf16 gradient and from the f32 one: the same parameters.
    let step = |grads: GradientsParams| {
        let mut optim = LlamaOptimizer::new(&OptimConfig::default(), &lin).unwrap();
        let (next, _) = optim.step(1e-3, lin.clone(), grads, 1.0, Some(1.0), &device);
        next.weight.val().into_data().to_vec::<f32>().unwrap()
    };
    let mut f32_grads = GradientsParams::new();
    f32_grads.register::<LibTorch, 2>(lin.weight.id, w_plain);
    assert_eq!(step(kept), step(f32_grads));
}
