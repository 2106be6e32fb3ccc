//! The model's cross-entropy, RMSNorm, rotary and SwiGLU operations, and decoding's
//! single-query attention, on libtorch with this project's fused CUDA kernels (`cuda_kernels`):
//! one kernel per pass where torch runs two to a dozen.
//!
//! Each falls back per call to what the `llama` tool registers without them (torch's loss and
//! SwiGLU kernels, the RMSNorm and rotary operations' tensor ops) when the kernels cannot take the
//! inputs: a CPU tensor, a dtype other than f32/bf16, or no NVRTC on the machine. A backward pass
//! whose kernel fails to launch computes the model's own closed form in tensor ops
//! (`llama_model::loss::closed_form_grad`, `llama_model::rms_norm::closed_form_grads`).

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use llama_model::loss::{NativeLoss, closed_form_grad};
use llama_model::rms_norm::{NativeRmsNorm, closed_form_grads};
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

/// Single-query attention to register with
/// `llama_model::decode_attention::register_native::<LibTorch>`.
pub fn decode_attention(
    q: TchTensor,
    kk: TchTensor,
    v: TchTensor,
    hidden: Option<TchTensor>,
) -> Option<TchTensor> {
    let hidden = hidden.as_ref().map(|m| &m.tensor);
    k::decode_attention(&q.tensor, &kk.tensor, &v.tensor, hidden).map(TchTensor::new)
}

/// The few-row product (decoding's projections) to register with
/// `llama_model::gemv::register_native::<LibTorch>`.
pub fn gemv(x: TchTensor, w: TchTensor) -> Option<TchTensor> {
    k::gemv(&x.tensor, &w.tensor).map(TchTensor::new)
}

/// SwiGLU's gate in the epilogue of one row's stacked gate/up product, to register with
/// `llama_model::gemv::register_native_swiglu::<LibTorch>`.
pub fn gemv_swiglu(x: TchTensor, w: TchTensor) -> Option<TchTensor> {
    k::gemv_swiglu(&x.tensor, &w.tensor).map(TchTensor::new)
}

/// The residual update with the next RMSNorm (inference) to register with
/// `llama_model::add_norm::register_native::<LibTorch>`.
pub fn add_rms_norm(
    x: TchTensor,
    delta: TchTensor,
    gamma: TchTensor,
    eps: f64,
    out: DType,
) -> Option<(TchTensor, TchTensor)> {
    let out = match out {
        DType::F32 => Kind::Float,
        DType::BF16 => Kind::BFloat16,
        _ => return None,
    };
    let (h, y) = k::add_rms_norm(&x.tensor, &delta.tensor, &gamma.tensor, eps, out)?;
    Some((TchTensor::new(h), TchTensor::new(y)))
}

/// A decode step's rotation and cache-slot write (inference) to register with
/// `llama_model::rope_slot::register_native::<LibTorch>`.
#[allow(clippy::too_many_arguments)]
pub fn rope_slot(
    q: TchTensor,
    kk: TchTensor,
    v: TchTensor,
    c: TchTensor,
    s: TchTensor,
    k_cache: TchTensor,
    v_cache: TchTensor,
    slot: TchTensor,
) -> Option<TchTensor> {
    let [q, kk, v, c, s, kc, vc, slot] =
        [&q, &kk, &v, &c, &s, &k_cache, &v_cache, &slot].map(|t| &t.tensor);
    k::rope_slot(q, kk, v, c, s, kc, vc, slot).map(TchTensor::new)
}

/// Generation's token draw in one kernel (inference) to register with
/// `llama_model::sampler::register_native::<LibTorch>`.
pub fn sample(
    logits: TchTensor,
    u: Option<TchTensor>,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
) -> Option<TchTensor> {
    k::sample_rows(
        &logits.tensor,
        u.as_ref().map(|u| &u.tensor),
        temperature,
        top_k,
        top_p,
    )
    .map(TchTensor::new)
}

/// A decode step's rotation, cache-slot write and attention in one kernel (inference) to register
/// with `llama_model::rope_slot_attention::register_native::<LibTorch>`.
#[allow(clippy::too_many_arguments)]
pub fn rope_slot_attention(
    q: TchTensor,
    kk: TchTensor,
    v: TchTensor,
    c: TchTensor,
    s: TchTensor,
    k_cache: TchTensor,
    v_cache: TchTensor,
    slot: TchTensor,
    hidden: Option<TchTensor>,
) -> Option<TchTensor> {
    let step = k::StepKv {
        k: &kk.tensor,
        v: &v.tensor,
        c: &c.tensor,
        s: &s.tensor,
        slot: &slot.tensor,
    };
    let hidden = hidden.as_ref().map(|m| &m.tensor);
    k::decode_attention_with(
        &q.tensor,
        &k_cache.tensor,
        &v_cache.tensor,
        hidden,
        Some(&step),
        None,
    )
    .map(TchTensor::new)
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
    let (x, t, l, g) = (&logits.tensor, &targets.tensor, &lse.tensor, &dloss.tensor);
    match k::cross_entropy_backward(x, t, l, g) {
        Some(d) => TchTensor::new(d),
        // Only a failed launch gets here: the model's closed form in tensor ops.
        None => {
            let lse = float::<1>(lse).unsqueeze_dim(1);
            let targets = Tensor::from_primitive(targets);
            let d = closed_form_grad(float::<2>(logits), lse, targets, float(dloss));
            d.into_primitive().tensor()
        }
    }
}

/// A libtorch float primitive as a Burn tensor.
fn float<const D: usize>(t: TchTensor) -> Tensor<LibTorch, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
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
    let gamma_kind = gamma.tensor.kind();
    let (dx, dgamma) = match k::rms_norm_backward(&dy.tensor, &x.tensor, &gamma.tensor, &r.tensor) {
        Some((dx, dgamma)) => (TchTensor::new(dx), TchTensor::new(dgamma)),
        // Only a failed launch gets here: the model's closed form in tensor ops.
        None => {
            let x = float::<2>(x);
            let dtype = x.dtype();
            let r = float::<1>(r).unsqueeze_dim(1);
            let xhat = x.cast(DType::F32) * r.clone();
            let (dx, dgamma) = closed_form_grads(float(dy), xhat, r, float(gamma));
            (
                dx.cast(dtype).into_primitive().tensor(),
                dgamma.into_primitive().tensor(),
            )
        }
    };
    (dx, TchTensor::new(dgamma.tensor.to_kind(gamma_kind)))
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
