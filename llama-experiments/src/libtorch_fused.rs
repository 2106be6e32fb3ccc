//! The model's cross-entropy, RMSNorm, rotary and SwiGLU operations on libtorch with this
//! project's fused CUDA kernels (`cuda_kernels`): one kernel per pass where torch runs two to
//! seven.
//!
//! Each falls back per call to what the `llama` tool registers without them (torch's loss and
//! SwiGLU kernels, the RMSNorm and rotary operations' tensor ops) when the kernels cannot take the
//! inputs: a CPU tensor, a dtype other than f32/bf16, or no NVRTC on the machine. A backward pass
//! whose kernel fails to launch computes the same closed form with torch's operations.

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::tensor::DType;
use llama_model::loss::NativeLoss;
use llama_model::rms_norm::NativeRmsNorm;
use llama_model::rotary::NativeRotary;
use llama_model::swiglu::NativeSwiglu;
use tch::Kind;

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

/// The rotation to register with `llama_model::rotary::register_native::<LibTorch>`.
pub fn rotary() -> NativeRotary<LibTorch> {
    NativeRotary {
        forward: |x, c, s| k::rotary(&x.tensor, &c.tensor, &s.tensor, false).map(TchTensor::new),
        backward: |g, c, s| k::rotary(&g.tensor, &c.tensor, &s.tensor, true).map(TchTensor::new),
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
    let (x, t, lse, g) = (&logits.tensor, &targets.tensor, &lse.tensor, &dloss.tensor);
    let d = k::cross_entropy_backward(x, t, lse, g).unwrap_or_else(|| {
        // (softmax − onehot) · g / n, as the kernel (which only a failed launch gets us out of).
        let n = x.size()[0] as f64;
        let p = (x.to_kind(Kind::Float) - lse.unsqueeze(1)).exp();
        let onehot = p.zeros_like().scatter_value(1, &t.unsqueeze(1), 1.0);
        ((p - onehot) * (g.to_kind(Kind::Float).to_device(x.device()) / n)).to_kind(x.kind())
    });
    TchTensor::new(d)
}

fn rms_norm_forward(
    x: TchTensor,
    gamma: TchTensor,
    eps: f64,
    out: DType,
) -> Option<(TchTensor, Vec<TchTensor>)> {
    let out = match out {
        DType::F32 => Kind::Float,
        DType::BF16 => Kind::BFloat16,
        _ => return None,
    };
    let (y, r) = k::rms_norm_forward(&x.tensor, &gamma.tensor, eps, out)?;
    Some((TchTensor::new(y), vec![x, gamma, TchTensor::new(r)]))
}

fn rms_norm_backward(saved: Vec<TchTensor>, dy: TchTensor) -> (TchTensor, TchTensor) {
    let [x, gamma, r]: [TchTensor; 3] = saved
        .try_into()
        .unwrap_or_else(|s: Vec<_>| panic!("forward saves 3 tensors, got {}", s.len()));
    let (dy, xt, g, r) = (&dy.tensor, &x.tensor, &gamma.tensor, &r.tensor);
    let (dx, dgamma) = k::rms_norm_backward(dy, xt, g, r).unwrap_or_else(|| {
        // The closed form of `llama_model::rms_norm` (only a failed launch gets here).
        let dy = dy.to_kind(Kind::Float);
        let xhat = xt.to_kind(Kind::Float) * r.unsqueeze(1);
        let t = &dy * g.to_kind(Kind::Float);
        let c = (&t * &xhat).mean_dim([1i64].as_slice(), true, Kind::Float);
        let dx = (t - &xhat * c) * r.unsqueeze(1);
        let dgamma = (dy * xhat).sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        (dx.to_kind(xt.kind()), dgamma)
    });
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
