//! Run-time choice among the backends compiled in by cargo feature.
//!
//! Burn 0.21 backends are compile-time types, so a job is a generic method ([`BackendJob::run`])
//! and [`DeviceSpec::run`] monomorphises it for each compiled-in backend. Jobs always get an
//! `Autodiff` backend (training needs it; inference uses `B::InnerBackend` via `valid()`).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use llama_model::embedding::NativeEmbedding;
use llama_model::loss::NativeLoss;
use llama_model::rms_norm::NativeRmsNorm;
use llama_model::rotary::NativeRotary;
use llama_model::sdpa::{AttentionForward, NativeAttention};
use llama_model::swiglu::NativeSwiglu;

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

/// The value of the comparison knob `var` among `allowed` (`auto` when unset or empty), or a
/// one-line error naming the knob, the value and the choices.
pub(crate) fn env_choice(var: &str, allowed: &[&'static str]) -> Result<&'static str> {
    let value = std::env::var(var).unwrap_or_default();
    match value.as_str() {
        "" => Ok("auto"),
        v => allowed
            .iter()
            .copied()
            .find(|a| *a == v)
            .ok_or_else(|| anyhow!("{var}={v}: expected one of {}", allowed.join(", "))),
    }
}

/// `LLAMA_ATTN_SPLIT`'s values: `auto`, `off`, or the blocks of one cluster that share a
/// decoded (row, head) pair's keys, up to the kernel's 8.
pub(crate) const SPLIT_CHOICES: [&str; 10] =
    ["auto", "off", "1", "2", "3", "4", "5", "6", "7", "8"];

/// `LLAMA_ATTN_KEYS`'s values: `auto`, or the keys a warp of decoding's attention scores per
/// pass (the kernels `decode_attention.cu` compiles).
pub(crate) const KEYS_CHOICES: [&str; 4] = ["auto", "8", "16", "32"];
/// `LLAMA_ATTN_WARPS`'s values: `auto` (no more warps a block than keep every cluster of the
/// launch resident at once), `off` (as many as the keys ask for, up to 16), or a fixed cap.
pub(crate) const WARPS_CHOICES: [&str; 18] = [
    "auto", "off", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
    "16",
];
/// `LLAMA_ATTN_PRELOAD`'s values (decoding's attention, `cuda_kernels::ops`).
pub(crate) const PRELOAD_CHOICES: [&str; 3] = ["auto", "off", "all"];

/// Whether the on/off knob `var=auto|<off>` is on (unset, empty or `auto`), for the launchers
/// that read it where it acts; `register_ops` has already turned any other value into an error.
#[cfg(feature = "tch")]
pub(crate) fn knob_on(var: &str, off: &'static str) -> bool {
    env_choice(var, &["auto", off]).map_or(true, |v| v != off)
}

/// Most row blocks a projection's weight gradient is split into (`LLAMA_LINEAR=split`): a
/// `125m` weight gradient (768 × 768 over 16,384 tokens) then runs on 16× the cubes.
const MAX_SPLITS: usize = 16;

/// What [`register_ops`] registers for a backend `I`: the attention's forward, the backend's own
/// forms of the operations where it has them, and which of the opt-in operations are its defaults.
struct Ops<I: burn::tensor::backend::Backend> {
    forward: AttentionForward,
    attention: Option<NativeAttention<I>>,
    loss: Option<NativeLoss<I>>,
    swiglu: Option<NativeSwiglu<I>>,
    /// The residual update in one kernel (inference and training; `llama_model::residual`).
    residual: Option<llama_model::residual::NativeResidual<I>>,
    /// Fused kernels of this project for the backend, the default of `auto` where present.
    fused: Option<Fused<I>>,
    /// `LLAMA_LOSS=auto` means the backend's own loss (else the closed-form operation).
    torch_loss: bool,
    /// `LLAMA_NORM=auto` means the RMSNorm operation (else burn-nn's tensor-op form).
    norm_operation: bool,
    /// `LLAMA_ROPE=auto` means the rotary operation (else the tensor-op form).
    rope_operation: bool,
    /// `LLAMA_LINEAR=auto` splits the projections' weight gradients (`llama_model::split_k`)
    /// unless a native product runs.
    split_linear: bool,
    /// A library's matrix product (`llama_model::product`), registered where present.
    product: Option<llama_model::product::NativeProduct<I>>,
    /// The same library's `c + x · w` into `c` (`llama_model::product::register_accumulate`).
    product_accumulate: Option<llama_model::product::NativeAccumulate<I>>,
    /// This project's fused cross-entropy where the other fused kernels are not (CubeCL's CUDA).
    own_loss: Option<NativeLoss<I>>,
    /// This project's RMSNorm kernels where the other fused kernels are not (CubeCL's CUDA).
    own_norm: Option<NativeRmsNorm<I>>,
    /// This project's rotary kernel where the other fused kernels are not (CubeCL's CUDA).
    own_rotary: Option<NativeRotary<I>>,
    /// This project's SwiGLU kernels where the other fused kernels are not (CubeCL's CUDA).
    own_swiglu: Option<NativeSwiglu<I>>,
    /// The embedding's weight gradient by the backend's own kernel (`llama_model::embedding`).
    embedding: Option<NativeEmbedding<I>>,
    /// An update kernel of this project that reads bf16 gradients as they are (CubeCL's CUDA;
    /// tch-cuda's is part of `fused`): projections' weight gradients may then stay bf16.
    own_adamw: bool,
    /// The update's store of the weights' bf16 copies (`llama_model::weight_cast`), made only
    /// when registered (making it turns the copies on).
    weight_copies: Option<fn() -> llama_model::weight_cast::NativeCopies<I>>,
}

/// The operations with this project's fused kernels (`LLAMA_LOSS/NORM/ROPE/SWIGLU=fused`).
#[allow(dead_code)]
struct Fused<I: burn::tensor::backend::Backend> {
    loss: NativeLoss<I>,
    norm: NativeRmsNorm<I>,
    rotary: NativeRotary<I>,
    swiglu: NativeSwiglu<I>,
    /// Single-query attention for decoding (inference only).
    decode_attention: llama_model::decode_attention::NativeDecodeAttention<I>,
    /// Few-row products for decoding (inference only).
    gemv: llama_model::gemv::NativeGemv<I>,
    /// SwiGLU's gate in the epilogue of a row's stacked gate/up product (inference only).
    gemv_swiglu: llama_model::gemv::NativeGemvSwiglu<I>,
    /// The residual update with the next RMSNorm (inference only).
    add_norm: llama_model::add_norm::NativeAddRmsNorm<I>,
    /// A decode step's rotation and cache-slot write (inference only).
    rope_slot: llama_model::rope_slot::NativeRopeSlot<I>,
    /// The two above and decoding's attention in one kernel (inference only).
    rope_slot_attention: llama_model::rope_slot_attention::NativeRopeSlotAttention<I>,
    /// Generation's token draw (inference only).
    sample: llama_model::sampler::NativeSample<I>,
}

impl<I: burn::tensor::backend::Backend> Ops<I> {
    #[allow(dead_code)]
    fn new(forward: AttentionForward) -> Self {
        Self {
            forward,
            attention: None,
            loss: None,
            swiglu: None,
            residual: None,
            fused: None,
            torch_loss: false,
            norm_operation: false,
            rope_operation: false,
            split_linear: false,
            product: None,
            product_accumulate: None,
            own_loss: None,
            own_norm: None,
            own_rotary: None,
            own_swiglu: None,
            embedding: None,
            own_adamw: false,
            weight_copies: None,
        }
    }
}

/// Registers the model's own autodiff operations for backend `I`: the memory-efficient attention
/// (`llama_model::sdpa`, through the backend's native attention where it has one), the
/// cross-entropy (`llama_model::loss`, closed form or the backend's own), RMSNorm
/// (`llama_model::rms_norm`), the rotary embedding (`llama_model::rotary`) and SwiGLU's gate
/// (`llama_model::swiglu`) as single operations.
/// Each has an environment knob for comparisons (`auto` is the backend's default):
/// `LLAMA_ATTENTION=auto|blocked|decomposed`, `LLAMA_LOSS=auto|operation|torch|fused|decomposed`,
/// `LLAMA_NORM=auto|operation|fused|decomposed`, `LLAMA_ROPE=auto|operation|fused|decomposed`,
/// `LLAMA_SWIGLU=auto|operation|torch|fused|decomposed`, `LLAMA_LINEAR=auto|flat|split`,
/// `LLAMA_EMBEDDING=auto|decomposed` (the embedding's weight gradient by the backend's kernel),
/// `LLAMA_GRAD_NORM=auto|decomposed` (CubeCL's CUDA: the clipping's squared norms by our kernel),
/// `LLAMA_PRODUCT=auto|cublas|matmul` (cuBLAS's products under CubeCL, or the backend's matmul;
/// `auto`: cuBLAS where CUPTI finds CubeCL's stream), `LLAMA_PRODUCT_SUM=auto|burn` (products of
/// one input add their input gradients into one matrix, or Burn sums them),
/// `LLAMA_CUBLAS_WAIT=auto|stream|host`
/// (how cuBLAS's products and CubeCL's kernels hand over),
/// `LLAMA_DECODE_ATTENTION=auto|fused|decomposed`, `LLAMA_GEMV=auto|fused|matmul`,
/// `LLAMA_ADD_NORM=auto|fused|separate`, `LLAMA_ROPE_SLOT=auto|fused|separate`,
/// `LLAMA_PDL=auto|off` (the fused kernels of a decoded token with programmatic dependent launch),
/// `LLAMA_GEMV_SPLIT=auto|off` (the one-row product's long rows over several warps),
/// `LLAMA_VJP=auto|seed` (torch's backward from a given output gradient, or from `Σ out ⊙ grad`)
/// (`decomposed` is Burn's tensor-op form, `torch` the libtorch kernels, `fused` this project's
/// CUDA kernels on tch-cuda; `split`: projections' weight gradients over row blocks).
#[allow(dead_code)]
fn register_ops<I: burn::tensor::backend::Backend>(ops: Ops<I>) -> Result<()> {
    let libtorch_only =
        |var: &str| anyhow!("{var}=torch needs a libtorch device (tch-cpu, tch-cuda)");
    let fused = ops.fused;
    let (fused_loss, fused_norm, fused_rotary, fused_swiglu) = match &fused {
        Some(f) => (Some(f.loss), Some(f.norm), Some(f.rotary), Some(f.swiglu)),
        None => (None, None, None, None),
    };
    let fused_loss = fused_loss.or(ops.own_loss);
    let fused_norm = fused_norm.or(ops.own_norm);
    let fused_rotary = fused_rotary.or(ops.own_rotary);
    let fused_swiglu = fused_swiglu.or(ops.own_swiglu);
    match (
        env_choice("LLAMA_ATTENTION", &["auto", "blocked", "decomposed"])?,
        ops.attention,
    ) {
        ("decomposed", _) => {}
        ("auto", Some(native)) => llama_model::sdpa::register_native::<I>(ops.forward, native),
        _ => llama_model::sdpa::register::<I>(ops.forward),
    }
    match (
        env_choice(
            "LLAMA_LOSS",
            &["auto", "operation", "torch", "fused", "decomposed"],
        )?,
        ops.loss,
        fused_loss,
    ) {
        ("decomposed", _, _) => {}
        ("fused" | "auto", _, Some(fused)) => llama_model::loss::register_native::<I>(fused),
        ("fused", _, None) => return Err(fused_only("LLAMA_LOSS")),
        ("torch", Some(native), _) => llama_model::loss::register_native::<I>(native),
        ("auto", Some(native), _) if ops.torch_loss => {
            llama_model::loss::register_native::<I>(native)
        }
        ("torch", None, _) => return Err(libtorch_only("LLAMA_LOSS")),
        _ => llama_model::loss::register::<I>(),
    }
    register_operation(
        "LLAMA_NORM",
        fused_norm,
        ops.norm_operation,
        llama_model::rms_norm::register_native::<I>,
        llama_model::rms_norm::register::<I>,
    )?;
    register_operation(
        "LLAMA_ROPE",
        fused_rotary,
        ops.rope_operation,
        llama_model::rotary::register_native::<I>,
        llama_model::rotary::register::<I>,
    )?;
    match (
        env_choice(
            "LLAMA_SWIGLU",
            &["auto", "operation", "torch", "fused", "decomposed"],
        )?,
        ops.swiglu,
        fused_swiglu,
    ) {
        ("decomposed", _, _) => {}
        ("fused" | "auto", _, Some(fused)) => llama_model::swiglu::register_native::<I>(fused),
        ("fused", _, None) => return Err(fused_only("LLAMA_SWIGLU")),
        ("torch" | "auto", Some(native), _) => llama_model::swiglu::register_native::<I>(native),
        ("torch", None, _) => return Err(libtorch_only("LLAMA_SWIGLU")),
        ("operation", _, _) => llama_model::swiglu::register::<I>(),
        _ => {}
    }
    if let ("auto", Some(native)) = (
        env_choice("LLAMA_EMBEDDING", &["auto", "decomposed"])?,
        ops.embedding,
    ) {
        llama_model::embedding::register_native::<I>(native);
    }
    // Inference-only kernels: on by default where the fused kernels run.
    register_inference(
        "LLAMA_DECODE_ATTENTION",
        "decomposed",
        fused.as_ref().map(|f| f.decode_attention),
        llama_model::decode_attention::register_native::<I>,
    )?;
    register_inference(
        "LLAMA_GEMV",
        "matmul",
        fused.as_ref().map(|f| f.gemv),
        llama_model::gemv::register_native::<I>,
    )?;
    register_inference(
        "LLAMA_GEMV_SWIGLU",
        "separate",
        fused.as_ref().map(|f| f.gemv_swiglu),
        llama_model::gemv::register_native_swiglu::<I>,
    )?;
    register_inference(
        "LLAMA_ADD_NORM",
        "separate",
        fused.as_ref().map(|f| f.add_norm),
        llama_model::add_norm::register_native::<I>,
    )?;
    register_inference(
        "LLAMA_ROPE_SLOT",
        "separate",
        fused.as_ref().map(|f| f.rope_slot),
        llama_model::rope_slot::register_native::<I>,
    )?;
    // `tensor`: the tensor operations' draw (llama_model::sampler), for comparison.
    register_inference(
        "LLAMA_SAMPLER",
        "tensor",
        fused.as_ref().map(|f| f.sample),
        llama_model::sampler::register_native::<I>,
    )?;
    // The rotation, slot write and attention of a decode step in one kernel where both of the
    // kernels it replaces are on (`auto`; `fused` insists, `separate`: the two). It was opt-in
    // in session 24 after the graph-against-eager test failed once with it; that test compared
    // tokens drawn at temperature 1 from two differently rounded decodings, and now compares
    // logits on forced tokens and a recording against its repeat bit for bit, 9/9 with the fold
    // on the H200 (docs/performance.md, attempt 46).
    let (attention_on, slot_on) = (
        env_choice("LLAMA_DECODE_ATTENTION", &["auto", "fused", "decomposed"])? != "decomposed",
        env_choice("LLAMA_ROPE_SLOT", &["auto", "fused", "separate"])? != "separate",
    );
    match (
        env_choice("LLAMA_ROPE_SLOT_ATTENTION", &["auto", "fused", "separate"])?,
        &fused,
    ) {
        ("fused", None) => return Err(fused_only("LLAMA_ROPE_SLOT_ATTENTION")),
        ("fused", Some(_)) if !(attention_on && slot_on) => bail!(
            "LLAMA_ROPE_SLOT_ATTENTION=fused needs LLAMA_DECODE_ATTENTION and LLAMA_ROPE_SLOT on"
        ),
        ("fused" | "auto", Some(f)) if attention_on && slot_on => {
            llama_model::rope_slot_attention::register_native::<I>(f.rope_slot_attention)
        }
        _ => {}
    }
    // Read by the fused kernels' launchers; checked here for a clear error.
    env_choice("LLAMA_PDL", &["auto", "off"])?;
    env_choice("LLAMA_GEMV_SPLIT", &["auto", "off"])?;
    env_choice("LLAMA_GEMV_GRID", &["auto", "waves"])?;
    env_choice("LLAMA_NORM_EARLY", &["auto", "off"])?;
    env_choice("LLAMA_ATTN_VALUES", &["auto", "narrow"])?;
    env_choice("LLAMA_GEMV_LOADS", &["auto", "cached"])?;
    env_choice("LLAMA_ATTN_PRELOAD", &PRELOAD_CHOICES)?;
    env_choice("LLAMA_ATTN_SPLIT", &SPLIT_CHOICES)?;
    env_choice("LLAMA_ATTN_KEYS", &KEYS_CHOICES)?;
    env_choice("LLAMA_ATTN_WARPS", &WARPS_CHOICES)?;
    env_choice("LLAMA_VJP", &["auto", "seed"])?;
    // The residual update in one kernel, in inference and (as one autodiff operation) in
    // training; `decomposed`: the cast and the sum.
    if let ("auto", Some(add)) = (
        env_choice("LLAMA_RESIDUAL", &["auto", "decomposed"])?,
        ops.residual,
    ) {
        llama_model::residual::register_native::<I>(add);
        llama_model::residual::register_autodiff::<I>();
    }
    // Where the fused AdamW runs (it reads bf16 gradients as they are), a projection's weight
    // gradient stays bf16 instead of being widened to f32 by its cast's backward; `f32`: widened.
    // (On CubeCL the widening casts ran at the end of the backward pass, fused by shape into
    // five kernels at ~2.7 TB/s, ~2.4 ms of a `1b` step: attempt 65.)
    if env_choice("LLAMA_WEIGHT_GRAD", &["auto", "f32"])? == "auto"
        && (fused.is_some() || ops.own_adamw)
    {
        llama_model::weight_cast::register::<I>();
        // The update's bf16 copies of the weights, read by the next forward pass's products
        // instead of a cast per weight (CubeCL's CUDA, attempt 68); `off`: casts.
        if let ("auto", Some(copies)) = (
            env_choice("LLAMA_WEIGHT_COPY", &["auto", "off"])?,
            ops.weight_copies,
        ) {
            llama_model::weight_cast::register_copies::<I>(copies());
        }
    }
    // A library's products where the backend offers one (cuBLAS under CubeCL where its stream is
    // found, or asked for with `LLAMA_PRODUCT=cublas`); otherwise the backend's matmul.
    let product = match (
        env_choice("LLAMA_PRODUCT", &["auto", "cublas", "matmul"])?,
        ops.product,
    ) {
        ("cublas" | "auto", Some(native)) => {
            llama_model::product::register_native::<I>(native);
            // Products of one input add their input gradients into one matrix where the
            // library can (`LLAMA_PRODUCT_SUM=auto`); `burn`: Burn's separate sums.
            if let ("auto", Some(acc)) = (
                env_choice("LLAMA_PRODUCT_SUM", &["auto", "burn"])?,
                ops.product_accumulate,
            ) {
                llama_model::product::register_accumulate::<I>(acc);
            }
            true
        }
        ("cublas", None) => {
            bail!("LLAMA_PRODUCT=cublas needs `--device cuda` with libcublas on the library path")
        }
        _ => false,
    };
    match env_choice("LLAMA_LINEAR", &["auto", "flat", "split"])? {
        "split" => llama_model::split_k::register::<I>(MAX_SPLITS),
        "auto" if ops.split_linear && !product => llama_model::split_k::register::<I>(MAX_SPLITS),
        _ => {}
    }
    Ok(())
}

/// The error for `var=fused` where the fused kernels do not run.
fn fused_only(var: &str) -> anyhow::Error {
    anyhow!("{var}=fused needs tch-cuda with NVRTC (a CUDA toolkit's libnvrtc) on the library path")
}

/// The knob `var=auto|operation|fused|decomposed` of an operation without a torch form: the fused
/// kernels where the backend has them (`auto` too), the operation where asked or
/// `auto_operation`, else the tensor-op form.
fn register_operation<N>(
    var: &str,
    fused: Option<N>,
    auto_operation: bool,
    register_native: fn(N),
    register: fn(),
) -> Result<()> {
    match (
        env_choice(var, &["auto", "operation", "fused", "decomposed"])?,
        fused,
    ) {
        ("fused" | "auto", Some(fused)) => register_native(fused),
        ("fused", None) => return Err(fused_only(var)),
        ("operation", _) => register(),
        ("auto", _) if auto_operation => register(),
        _ => {}
    }
    Ok(())
}

/// `var=auto|fused|<off>` for an inference-only kernel: registered unless `off`; `fused` is an
/// error where the fused kernels do not run.
fn register_inference<N>(
    var: &str,
    off: &'static str,
    fused: Option<N>,
    register_native: fn(N),
) -> Result<()> {
    match (env_choice(var, &["auto", "fused", off])?, fused) {
        ("fused" | "auto", Some(fused)) => register_native(fused),
        ("fused", None) => return Err(fused_only(var)),
        _ => {}
    }
    Ok(())
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
