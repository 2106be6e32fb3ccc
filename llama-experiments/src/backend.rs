//! Run-time choice among the backends compiled in by cargo feature.
//!
//! Burn 0.21 backends are compile-time types, so a job is a generic method ([`BackendJob::run`])
//! and [`DeviceSpec::run`] monomorphises it for each compiled-in backend. Jobs always get an
//! `Autodiff` backend (training needs it; inference uses `B::InnerBackend` via `valid()`).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
#[cfg(feature = "cuda-untuned")]
use llama_model::embedding::NativeEmbedding;
use llama_model::sdpa::AttentionForward;
#[cfg(any(feature = "flex", feature = "cuda-untuned"))]
use llama_model::{
    loss::NativeLoss, rms_norm::NativeRmsNorm, rotary::NativeRotary, sdpa::NativeAttention,
    swiglu::NativeSwiglu,
};

#[cfg(feature = "tch")]
use crate::op_registry::Fused;
#[cfg(feature = "cuda-untuned")]
use crate::op_registry::env_choice;
use crate::op_registry::{Ops, register_ops};

/// A device named on the command line: `ndarray`, `flex`, `wgpu`, `tch-cpu`, `tch-cuda:N`, `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    NdArray,
    Flex,
    Wgpu,
    TchCpu,
    TchCuda(usize),
    Cuda(usize),
}

/// Every device kind, best first (the default is the first compiled-in one).
const PREFERENCE: [DeviceSpec; 6] = [
    DeviceSpec::Cuda(0),
    DeviceSpec::TchCuda(0),
    DeviceSpec::Wgpu,
    DeviceSpec::Flex,
    DeviceSpec::TchCpu,
    DeviceSpec::NdArray,
];

impl DeviceSpec {
    /// The cargo feature of `llama-experiments` that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::NdArray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::TchCpu | Self::TchCuda(_) => "tch",
            Self::Cuda(_) => "cuda",
        }
    }

    pub fn is_compiled(self) -> bool {
        match self {
            Self::NdArray => cfg!(feature = "ndarray"),
            Self::Flex => cfg!(feature = "flex"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::TchCpu | Self::TchCuda(_) => cfg!(feature = "tch"),
            Self::Cuda(_) => cfg!(feature = "cuda-untuned"),
        }
    }

    /// The usable compiled-in devices, best first (GPU kinds only when a GPU is visible).
    pub fn compiled() -> Vec<DeviceSpec> {
        PREFERENCE
            .into_iter()
            .filter(|d| d.is_compiled())
            .filter(|d| !matches!(d, Self::TchCuda(_)) || tch_has_cuda())
            .filter(|d| !matches!(d, Self::Cuda(_)) || nvidia_driver_present())
            .collect()
    }

    /// The best compiled-in device.
    pub fn best() -> Result<DeviceSpec> {
        Self::compiled()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no backend is compiled in; rebuild with one of the features ndarray, flex, wgpu, tch, cuda"))
    }

    /// Runs `job` on this device, or fails with one line naming the feature to enable.
    pub fn run<J: BackendJob>(self, job: J) -> Result<J::Output> {
        match self {
            #[cfg(feature = "ndarray")]
            Self::NdArray => {
                use burn::backend::NdArray;
                register_ops(Ops::<NdArray>::new(AttentionForward::Blocked))?;
                Ok(job.run::<burn::backend::Autodiff<NdArray>>(Default::default()))
            }
            #[cfg(feature = "flex")]
            Self::Flex => {
                use crate::flex_kernels as k;
                use burn::backend::Flex;
                // Attention, the norm, rotation, gate and loss by kernels of ours
                // (docs/performance.md, attempt 81); Flex's own attention kernel in f32 for what
                // ours decline.
                register_ops(Ops::<Flex> {
                    attention: Some(NativeAttention {
                        forward: k::attention::forward,
                        backward: k::attention::backward,
                        grouped: true,
                    }),
                    own_loss: Some(NativeLoss {
                        forward: k::loss::forward,
                        backward: k::loss::backward,
                    }),
                    own_norm: Some(NativeRmsNorm {
                        forward: k::rms_norm::forward,
                        backward: k::rms_norm::backward,
                    }),
                    own_rotary: Some(NativeRotary {
                        forward: k::rotary::forward,
                        backward: k::rotary::backward,
                    }),
                    own_swiglu: Some(NativeSwiglu {
                        forward: k::swiglu::forward,
                        backward: k::swiglu::backward,
                    }),
                    ..Ops::new(AttentionForward::FusedF32)
                })?;
                Ok(job.run::<burn::backend::Autodiff<Flex>>(Default::default()))
            }
            #[cfg(feature = "wgpu")]
            Self::Wgpu => {
                use burn::backend::Wgpu;
                // Blocked, not CubeCL's flash kernel: not yet checked on Mesa's lavapipe, where
                // CubeCL's fusion once gave wrong results (docs/backends.md).
                register_ops(Ops::<Wgpu>::new(AttentionForward::Blocked))?;
                Ok(job.run::<burn::backend::Autodiff<Wgpu>>(Default::default()))
            }
            #[cfg(feature = "tch")]
            Self::TchCpu | Self::TchCuda(_) => {
                use burn::backend::LibTorch;
                use burn::backend::libtorch::LibTorchDevice;
                // torch's SDPA keeps the softmax in f32 for bf16 inputs; training goes through
                // torch's own autograd for it (its flash backward), and for the loss. On CUDA
                // torch's loss and the RMSNorm operation are the defaults (measured faster on an
                // H200, docs/performance.md attempts 8 and 10); on the CPU neither was. torch's
                // SwiGLU kernels and the rotary operation on both (attempts 11 and 13; the
                // optimiser picks torch's AdamW kernels itself, attempt 12). On CUDA our fused
                // kernels for the loss, RMSNorm, rotary and SwiGLU replace those where NVRTC
                // compiles them (attempt 14).
                let cuda = matches!(self, Self::TchCuda(_));
                let fused = match self {
                    Self::TchCuda(i) => crate::libtorch_fused::available(tch::Device::Cuda(i)),
                    _ => false,
                };
                register_ops(Ops::<LibTorch> {
                    attention: Some(crate::libtorch_attention::native()),
                    loss: Some(crate::libtorch_loss::native()),
                    swiglu: Some(crate::libtorch_swiglu::native()),
                    residual: Some(crate::libtorch_residual::add),
                    fused: fused.then(|| Fused {
                        loss: crate::libtorch_fused::loss(),
                        norm: crate::libtorch_fused::rms_norm(),
                        rotary: crate::libtorch_fused::rotary(),
                        swiglu: crate::libtorch_fused::swiglu(),
                        decode_attention: crate::libtorch_fused::decode_attention,
                        gemv: crate::libtorch_fused::gemv,
                        gemv_swiglu: crate::libtorch_fused::gemv_swiglu,
                        add_norm: crate::libtorch_fused::add_rms_norm,
                        rope_slot: crate::libtorch_fused::rope_slot,
                        rope_slot_attention: crate::libtorch_fused::rope_slot_attention,
                        sample: crate::libtorch_fused::sample,
                    }),
                    torch_loss: cuda,
                    norm_operation: cuda,
                    rope_operation: true,
                    ..Ops::new(AttentionForward::Fused)
                })?;
                let device = match self {
                    Self::TchCuda(i) => LibTorchDevice::Cuda(i),
                    _ => LibTorchDevice::Cpu,
                };
                Ok(job.run::<burn::backend::Autodiff<LibTorch>>(device))
            }
            #[cfg(feature = "cuda-untuned")]
            Self::Cuda(i) => {
                use burn::backend::Cuda;
                // CubeCL's attention autotune may pick Burn's decomposition (bf16 softmax). Its
                // matmul does not split long reductions, so cuBLAS runs the products
                // (`cubecl_cublas`) where it can be queued on CubeCL's own stream (found through
                // CUPTI; attempt 48: 2.4× at `1b`, 1.1–1.8× at `125m`); with only host waits or
                // flags for a hand-over it was slower at `125m` (attempt 37), so without CUPTI
                // the weight gradients are split instead (`llama_model::split_k`, attempt 16).
                let device = burn::backend::cuda::CudaDevice::new(i);
                env_choice("LLAMA_CUBLAS_WAIT", &crate::cubecl_cublas::WAIT_CHOICES)?;
                let product = match env_choice("LLAMA_PRODUCT", &["auto", "cublas", "matmul"])? {
                    "cublas" => {
                        crate::cubecl_cublas::available(&device)
                            .map_err(|e| anyhow!("LLAMA_PRODUCT=cublas: {e}"))?;
                        Some(crate::cubecl_cublas::product as _)
                    }
                    "auto"
                        if crate::cubecl_cublas::available(&device).is_ok()
                            && crate::cubecl_cublas::hand_over_name(&device) == Ok("stream") =>
                    {
                        Some(crate::cubecl_cublas::product as _)
                    }
                    _ => None,
                };
                // bf16 attention through this project's flash kernels (attempt 50) where they
                // compile; `LLAMA_ATTENTION=blocked` keeps `sdpa`'s blocked form.
                let attention = match crate::cubecl_flash::available(&device) {
                    Ok(()) => Some(NativeAttention {
                        forward: crate::cubecl_flash::forward,
                        backward: crate::cubecl_flash::backward,
                        grouped: true,
                    }),
                    Err(e) => {
                        eprintln!("warning: flash attention unavailable ({e}); blocked attention");
                        None
                    }
                };
                // The cross-entropy as two kernels of ours (attempt 51), `LLAMA_LOSS=fused`'s
                // meaning on tch-cuda; `LLAMA_LOSS=operation` keeps the tensor-op form.
                let own_loss = match crate::cubecl_loss::available(&device) {
                    Ok(()) => Some(NativeLoss {
                        forward: crate::cubecl_loss::forward,
                        backward: crate::cubecl_loss::backward,
                    }),
                    Err(e) => {
                        eprintln!("warning: fused cross-entropy unavailable ({e}); tensor ops");
                        None
                    }
                };
                // The embedding's weight gradient by a kernel of ours (attempt 52);
                // `LLAMA_EMBEDDING=decomposed` keeps Burn's (bit-reproducible, serial) one.
                let embedding = match crate::cubecl_embedding::available(&device) {
                    Ok(()) => Some(NativeEmbedding {
                        backward: crate::cubecl_embedding::backward,
                    }),
                    Err(e) => {
                        eprintln!("warning: embedding gradient kernel unavailable ({e}); Burn's");
                        None
                    }
                };
                // RMSNorm by the libtorch CUDA path's kernels (attempt 54), `LLAMA_NORM=fused`'s
                // meaning there; `LLAMA_NORM=decomposed` keeps burn-nn's tensor ops.
                // The rotary embedding (attempt 55) and SwiGLU's gate (attempt 61) by the same
                // module's kernels.
                let (own_norm, own_rotary, own_swiglu) = match crate::cubecl_fused::available(
                    &device,
                ) {
                    Ok(()) => (
                        Some(NativeRmsNorm::<Cuda> {
                            forward: crate::cubecl_fused::rms_norm::forward,
                            backward: crate::cubecl_fused::rms_norm::backward,
                        }),
                        Some(NativeRotary::<Cuda> {
                            forward: crate::cubecl_fused::rotary::forward,
                            backward: crate::cubecl_fused::rotary::backward,
                        }),
                        Some(NativeSwiglu::<Cuda> {
                            forward: crate::cubecl_fused::swiglu::forward,
                            backward: crate::cubecl_fused::swiglu::backward,
                        }),
                    ),
                    Err(e) => {
                        eprintln!(
                            "warning: RMSNorm, rotary and SwiGLU kernels unavailable ({e}); tensor ops"
                        );
                        (None, None, None)
                    }
                };
                // The clipping's squared norms by a kernel of ours (attempt 53);
                // `LLAMA_GRAD_NORM=decomposed` keeps `square().sum()`.
                if env_choice("LLAMA_GRAD_NORM", &["auto", "decomposed"])? == "auto"
                    && let Err(e) = crate::cubecl_sum_squares::enable(&device)
                {
                    eprintln!("warning: squared-norm kernel unavailable ({e}); tensor ops");
                }
                // Whether the optimiser will update by our kernel (attempt 62), as it checks.
                let own_adamw = crate::cubecl_adamw::updates_parts::<Cuda>(&device);
                register_ops(Ops::<Cuda> {
                    split_linear: true,
                    embedding,
                    own_adamw,
                    weight_copies: Some(crate::cubecl_adamw::enable_weight_copies),
                    product,
                    product_accumulate: Some(crate::cubecl_cublas::accumulate as _),
                    attention,
                    own_loss,
                    own_norm,
                    own_rotary,
                    own_swiglu,
                    ..Ops::new(AttentionForward::FusedF32)
                })?;
                Ok(job.run::<burn::backend::Autodiff<Cuda>>(device))
            }
            #[allow(unreachable_patterns)]
            other => bail!(
                "device `{other}` is not compiled into this binary; rebuild with `cargo build --release -p llama-experiments --features {}`",
                other.feature()
            ),
        }
    }
}

#[cfg(feature = "tch")]
fn tch_has_cuda() -> bool {
    tch::Cuda::is_available()
}

#[cfg(not(feature = "tch"))]
fn tch_has_cuda() -> bool {
    false
}

/// CubeCL's CUDA runtime panics when there is no driver, so the default skips `cuda` unless the
/// NVIDIA device nodes exist (Linux) or CUDA_VISIBLE_DEVICES names a device. `--device cuda:N` is
/// always honoured.
fn nvidia_driver_present() -> bool {
    std::path::Path::new("/dev/nvidiactl").exists()
        || std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| !v.is_empty() && v != "-1")
}

/// A piece of work generic over the backend.
pub trait BackendJob {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NdArray => write!(f, "ndarray"),
            Self::Flex => write!(f, "flex"),
            Self::Wgpu => write!(f, "wgpu"),
            Self::TchCpu => write!(f, "tch-cpu"),
            Self::TchCuda(i) => write!(f, "tch-cuda:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| anyhow!("bad device index in `{s}` (expected e.g. cuda:0)"))?;
                (n, Some(i))
            }
            None => (s, None),
        };
        let spec = match (name.to_ascii_lowercase().as_str(), index) {
            ("ndarray", None) => Self::NdArray,
            ("flex", None) => Self::Flex,
            ("wgpu", None) => Self::Wgpu,
            ("tch-cpu", None) => Self::TchCpu,
            ("tch-cuda", i) => Self::TchCuda(i.unwrap_or(0)),
            ("cuda", i) => Self::Cuda(i.unwrap_or(0)),
            _ => bail!(
                "unknown device `{s}` (expected ndarray, flex, wgpu, tch-cpu, tch-cuda:N or cuda:N)"
            ),
        };
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip() {
        for s in ["ndarray", "flex", "wgpu", "tch-cpu", "tch-cuda:1", "cuda:0"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("metal".parse::<DeviceSpec>().is_err());
        assert!("flex:1".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn a_device_that_is_not_compiled_in_names_its_feature() {
        struct Nothing;
        impl BackendJob for Nothing {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _: B::Device) {}
        }
        for spec in PREFERENCE.into_iter().filter(|d| !d.is_compiled()) {
            let err = spec.run(Nothing).unwrap_err().to_string();
            assert!(
                err.contains(&format!("--features {}", spec.feature())),
                "{err}"
            );
            assert!(!err.contains('\n'));
        }
        assert!(DeviceSpec::best().is_ok());
    }
}
