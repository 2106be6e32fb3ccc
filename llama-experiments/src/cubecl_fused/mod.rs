//! The libtorch CUDA path's fused kernels (`cuda_kernels/kernels.cu`) on CubeCL's buffers
//! (`--device cuda`): RMSNorm ([`rms_norm`], docs/performance.md attempt 54), the rotary
//! embedding ([`rotary`], attempt 55) and SwiGLU's gate ([`swiglu`], attempt 61) as native forms
//! of `llama_model`'s operations for `burn::backend::Cuda`, and the AdamW update
//! (`crate::cubecl_adamw`, attempt 62), compiled as their own NVRTC module and queued on
//! CubeCL's stream through [`crate::cubecl_launch`].

use burn_cubecl::cubecl::cuda::CudaDevice;

use crate::cubecl_launch::{self, Source};

pub mod rms_norm;
pub mod rotary;
pub mod swiglu;

pub(crate) static SOURCE: Source = Source {
    name: "kernels.cu",
    code: include_str!("../cuda_kernels/kernels.cu"),
    kernels: &[
        "rms_norm_forward_f32",
        "rms_norm_backward_f32",
        "rms_norm_forward_bf16",
        "rms_norm_backward_bf16",
        "rms_norm_forward_f32_bf16",
        "rms_norm_backward_f32_bf16",
        "rotary_f32",
        "rotary_bf16",
        "column_sum_f32",
        "swiglu_forward_f32",
        "swiglu_backward_f32",
        "swiglu_forward_bf16",
        "swiglu_backward_bf16",
        "adamw_f32",
        "adamw_f32_bf16",
        "adamw_f32_bf16_copy",
    ],
};

/// Whether the kernels compile and load on `device` (the operations are registered only then).
pub fn available(device: &CudaDevice) -> Result<(), String> {
    cubecl_launch::available(&SOURCE, device.index)
}
