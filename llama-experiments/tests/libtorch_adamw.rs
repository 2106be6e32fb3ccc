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
