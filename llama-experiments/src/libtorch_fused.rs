//! The model's cross-entropy, RMSNorm and SwiGLU operations on libtorch with this project's fused
//! CUDA kernels (`cuda_kernels`): one kernel per pass where torch runs two to seven.
//!
//! Each falls back per call to what the `llama` tool registers without them (torch's loss and
//! SwiGLU kernels, the RMSNorm operation's tensor ops) when the kernels cannot take the inputs: a
//! CPU tensor, a dtype other than f32/bf16, or no NVRTC on the machine.

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use llama_model::loss::NativeLoss;
use llama_model::rms_norm::NativeRmsNorm;
use llama_model::swiglu::NativeSwiglu;

use crate::cuda_kernels as k;

/// The cross-entropy to register with `llama_model::loss::register_native::<LibTorch>`.
pub fn loss() -> NativeLoss<LibTorch> {
    NativeLoss {
        forward: loss_forward,
        backward: loss_backward,
    }
}

/// The RMSNorm kernels to register with `llama_model::rms_norm::register_native::<LibTorch>`.
pub fn rms_norm() -> NativeRmsNorm<LibTorch> {
    NativeRmsNorm {
        forward: rms_norm_forward,
        backward: rms_norm_backward,
    }
}

/// The gate to register with `llama_model::swiglu::register_native::<LibTorch>`.
pub fn swiglu() -> NativeSwiglu<LibTorch> {
    NativeSwiglu {
        forward: swiglu_forward,
        backward: swiglu_backward,
    }
}

/// Whether the fused kernels run on this tch device (compiles them on first use).
pub fn available(device: tch::Device) -> bool {
    k::available(device)
}

// The fused forward keeps three tensors (logits, targets, log-sum-exps), torch's two (its graph
// and leaf): the backward tells them apart by the count.
const FUSED_LOSS_SAVED: usize = 3;

fn loss_forward(logits: TchTensor, targets: TchTensor) -> Option<(TchTensor, Vec<TchTensor>)> {
    match k::cross_entropy_forward(&logits.tensor, &targets.tensor) {
        Some((loss, lse)) => Some((
            TchTensor::new(loss),
            vec![logits, targets, TchTensor::new(lse)],
        )),
        None => crate::libtorch_loss::forward(logits, targets),
    }
}

fn loss_backward(saved: Vec<TchTensor>, dloss: TchTensor) -> TchTensor {
    if saved.len() != FUSED_LOSS_SAVED {
        return crate::libtorch_loss::backward(saved, dloss);
    }
    let [logits, targets, lse]: [TchTensor; FUSED_LOSS_SAVED] = saved
        .try_into()
        .unwrap_or_else(|_| unreachable!("length checked"));
    let d = k::cross_entropy_backward(&logits.tensor, &targets.tensor, &lse.tensor, &dloss.tensor)
        // The forward ran these kernels on these tensors; only a failed launch gets here.
        .expect("the fused cross-entropy backward runs where its forward ran");
    TchTensor::new(d)
}

fn rms_norm_forward(
    x: TchTensor,
    gamma: TchTensor,
    eps: f64,
) -> Option<(TchTensor, Vec<TchTensor>)> {
    let (y, r) = k::rms_norm_forward(&x.tensor, &gamma.tensor, eps)?;
    Some((TchTensor::new(y), vec![x, gamma, TchTensor::new(r)]))
}

fn rms_norm_backward(saved: Vec<TchTensor>, dy: TchTensor) -> (TchTensor, TchTensor) {
    let [x, gamma, r]: [TchTensor; 3] = saved
        .try_into()
        .unwrap_or_else(|s: Vec<_>| panic!("forward saves 3 tensors, got {}", s.len()));
    let (dx, dgamma) = k::rms_norm_backward(&dy.tensor, &x.tensor, &gamma.tensor, &r.tensor)
        .expect("the fused RMSNorm backward runs where its forward ran");
    (
        TchTensor::new(dx),
        TchTensor::new(dgamma.to_kind(gamma.tensor.kind())),
    )
}

fn swiglu_forward(a: TchTensor, b: TchTensor) -> TchTensor {
    match k::swiglu_forward(&a.tensor, &b.tensor) {
        Some(out) => TchTensor::new(out),
        None => crate::libtorch_swiglu::forward(a, b),
    }
}

fn swiglu_backward(a: TchTensor, b: TchTensor, g: TchTensor) -> (TchTensor, TchTensor) {
    match k::swiglu_backward(&a.tensor, &b.tensor, &g.tensor) {
        Some((da, db)) => (TchTensor::new(da), TchTensor::new(db)),
        None => crate::libtorch_swiglu::backward(a, b, g),
    }
}
