//! AdamW's bucket update with torch's kernels (`libtorch_adamw`) on libtorch's CPU: the optimiser
//! against the f64 reference of torch's AdamW, and the kernels called directly against the
//! tensor-op form (so that a silent fallback cannot pass). Needs `--features tch`.
#![cfg(feature = "tch")]

mod common;

use burn::backend::Autodiff;
use burn::backend::libtorch::{LibTorch, LibTorchDevice};
use burn::tensor::{Distribution, Tensor};
use common::rel;
use llama_experiments::libtorch_adamw::try_update;
use llama_experiments::train::optim::AdamwStep;

#[test]
fn the_optimiser_with_torchs_kernels_is_torchs_adamw() {
    let device = LibTorchDevice::Cpu;
    common::adamw::check_torch_adamw::<Autodiff<LibTorch>>(&device, true);
    common::adamw::check_torch_adamw::<Autodiff<LibTorch>>(&device, false);
}

#[test]
fn torchs_kernels_match_the_tensor_op_update() {
    let device = LibTorchDevice::Cpu;
    let r = |std| Tensor::<LibTorch, 1>::random([1000], Distribution::Normal(0.0, std), &device);
    let factor = Tensor::<LibTorch, 1>::from_floats([0.37], &device);
    for (t, decay, moments, scaled) in [
        (1, 0.01, false, false),
        (7, 0.0, true, true),
        (7, 0.01, true, false),
    ] {
        let (m, v) = (r(0.01), r(1e-4).abs());
        let step = || AdamwStep {
            param: r(1.0),
            grad: r(0.1),
            grad_factor: scaled.then(|| factor.clone()),
            moments: moments.then(|| (m.clone(), v.clone())),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            lr: 3e-4,
            decay,
            c1: 1.0 - 0.9f64.powi(t),
            c2: 1.0 - 0.95f64.powi(t),
        };
        let a = step();
        let b = AdamwStep {
            param: a.param.clone() * 1.0,
            grad: a.grad.clone(),
            grad_factor: a.grad_factor.clone(),
            moments: a.moments.clone(),
            ..step()
        };
        let want = b.decomposed();
        let got = try_update(a, false)
            .unwrap_or_else(|_| panic!("libtorch tensors take torch's kernels"));
        for (name, g, w) in [
            ("param", &got.0, &want.0),
            ("m", &got.1, &want.1),
            ("v", &got.2, &want.2),
        ] {
            assert!(
                rel(g, w) <= 1e-6,
                "step {t} decay {decay}: {name} {}",
                rel(g, w)
            );
        }
    }
}
