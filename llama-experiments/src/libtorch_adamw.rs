//! One AdamW bucket update on libtorch with torch's multi-operand kernels: `lerp` for both
//! moments and `addcdiv` for the parameters.
//!
//! `train::optim` writes the update in Burn tensor ops, one kernel per scalar operation: about
//! fourteen full passes over each bucket (the moments' scale-and-add, the square, the
//! bias-corrected denominator, the division, the decay and the subtraction); on an H200 that was
//! 5.5 ms of a `125m` step against 3.3 ms for torch's `foreach` AdamW (docs/performance.md,
//! attempt 12). Here it is eight kernels (`g²`, two `lerp`s, the denominator's square root, add
//! and scale, the decay, `addcdiv`), about as many as torch's own `foreach` implementation:
//!
//! ```text
//! m ← lerp(m, g, 1 − β₁)            v ← lerp(v, g², 1 − β₂)
//! p ← p·(1 − lr·λ) − (lr·√c₂/c₁) · m / (√v + ε·√c₂)
//! ```
//!
//! (the last line is torch's `lr·m̂/(√v̂ + ε)` with both sides multiplied by `√c₂`). Every in-place
//! kernel writes a tensor made in this function or the freshly concatenated bucket the caller
//! hands over, never a tensor Burn-tch shares. On CUDA the whole update, clipping factor included,
//! is one fused kernel instead (`cuda_kernels::adamw`, where NVRTC loads), and a bucket of large
//! parameters is updated parameter by parameter without being concatenated
//! ([`try_update_parts`]; its gradients may be bf16, which the kernel widens as it loads them).

use std::any::Any;

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::train::optim::{AdamwOutput, AdamwParts, AdamwStep};

type T = Tensor<LibTorch, 1>;

fn raw(t: T) -> TchTensor {
    t.into_primitive().tensor()
}

fn wrap(t: tch::Tensor) -> T {
    Tensor::from_primitive(TensorPrimitive::Float(TchTensor::new(t)))
}

/// The update of `step` when its tensors are libtorch's, else `step` back unchanged. `fused`: by
/// the fused kernel where it runs (CUDA).
pub fn try_update<I: burn::tensor::backend::Backend>(
    step: AdamwStep<I>,
    fused: bool,
) -> Result<AdamwOutput<I>, AdamwStep<I>> {
    let boxed: Box<dyn Any> = Box::new(step);
    let step = match boxed.downcast::<AdamwStep<LibTorch>>() {
        Ok(step) => *step,
        Err(boxed) => return Err(*boxed.downcast::<AdamwStep<I>>().expect("its own type")),
    };
    let out: Box<dyn Any> = Box::new(update(step, fused));
    Ok(*out
        .downcast::<AdamwOutput<I>>()
        .expect("I is LibTorch here"))
}

/// Whether `device` is a libtorch CUDA device with the fused kernels, so that
/// [`try_update_parts`] updates each parameter of a bucket where it lies.
pub fn updates_parts<I: burn::tensor::backend::Backend>(device: &I::Device) -> bool {
    let device: &dyn Any = device;
    match device.downcast_ref::<burn::backend::libtorch::LibTorchDevice>() {
        Some(&burn::backend::libtorch::LibTorchDevice::Cuda(i)) => {
            crate::cuda_kernels::available(tch::Device::Cuda(i))
        }
        _ => false,
    }
}

/// [`AdamwParts`]'s update with the fused kernel, one launch per parameter (its gradient and
/// values read where they are, the new values written into the bucket's new vectors), or the
/// step back when its tensors are not libtorch CUDA ones (f32 values, f32 or bf16 gradients).
pub fn try_update_parts<I: burn::tensor::backend::Backend>(
    step: AdamwParts<I>,
) -> Result<AdamwOutput<I>, AdamwParts<I>> {
    let boxed: Box<dyn Any> = Box::new(step);
    let step = match boxed.downcast::<AdamwParts<LibTorch>>() {
        Ok(step) => *step,
        Err(boxed) => return Err(*boxed.downcast::<AdamwParts<I>>().expect("its own type")),
    };
    let out: Box<dyn Any> = match update_parts(&step) {
        Some(out) => Box::new(out),
        None => Box::new(step),
    };
    match out.downcast::<AdamwOutput<I>>() {
        Ok(out) => Ok(*out),
        Err(step) => Err(*step
            .downcast::<AdamwParts<I>>()
            .expect("I is LibTorch here")),
    }
}

fn update_parts(step: &AdamwParts<LibTorch>) -> Option<AdamwOutput<LibTorch>> {
    let t = |x: &T| raw(x.clone()).tensor;
    let (_, first, _) = step.parts.first()?;
    let device = t(first).device();
    let new = || tch::Tensor::empty([step.len as i64], (tch::Kind::Float, device));
    let (po, mo, vo) = (new(), new(), new());
    let moments = step.moments.as_ref().map(|(m, v)| (t(m), t(v)));
    let factor = step.grad_factor.as_ref().map(t);
    let mut covered = 0;
    for (offset, p, g) in &step.parts {
        let (p, g) = (t(p), t(g));
        let (o, n) = (*offset as i64, p.numel() as i64);
        let view = |x: &tch::Tensor| x.narrow(0, o, n);
        let m = moments.as_ref().map(|(m, v)| (view(m), view(v)));
        crate::cuda_kernels::adamw_into(
            &p,
            &g,
            m.as_ref().map(|(m, v)| (m, v)),
            factor.as_ref(),
            step.scalars,
            (&view(&po), &view(&mo), &view(&vo)),
        )?;
        covered += n as usize;
    }
    // Every element of the new vectors written (the parts tile the bucket), or nothing returned.
    (covered == step.len).then(|| (wrap(po), wrap(mo), wrap(vo)))
}

/// `Σ t²` (`[1]`) as one reduction (torch's 2-norm, squared) where `t` is libtorch's, else `t`.
pub fn try_sum_squares<I: burn::tensor::backend::Backend>(
    t: Tensor<I, 1>,
) -> Result<Tensor<I, 1>, Tensor<I, 1>> {
    let boxed: Box<dyn Any> = Box::new(t);
    let t = match boxed.downcast::<T>() {
        Ok(t) => *t,
        Err(boxed) => return Err(*boxed.downcast::<Tensor<I, 1>>().expect("its own type")),
    };
    // Summed in f32 whatever t's dtype (a bf16 gradient is read once, not widened first).
    let n = raw(t).tensor.norm_scalaropt_dtype(2.0, tch::Kind::Float);
    let out: Box<dyn Any> = Box::new(wrap((&n * &n).reshape([1])));
    Ok(*out.downcast::<Tensor<I, 1>>().expect("I is LibTorch here"))
}

fn update(step: AdamwStep<LibTorch>, fused: bool) -> AdamwOutput<LibTorch> {
    let s = step.scalars;
    let factor = step.grad_factor.map(|f| raw(f).tensor);
    let (p, g) = (raw(step.param).tensor, raw(step.grad).tensor);
    let moments = step.moments.map(|(m, v)| (raw(m).tensor, raw(v).tensor));
    let by_kernel = fused
        .then(|| {
            crate::cuda_kernels::adamw(
                &p,
                &g,
                moments.as_ref().map(|(m, v)| (m, v)),
                factor.as_ref(),
                s,
            )
        })
        .flatten();
    if let Some((p, m, v)) = by_kernel {
        return (wrap(p), wrap(m), wrap(v));
    }
    // torch's kernels take one dtype: a bf16 gradient is widened here (the fused kernel reads it
    // as it is).
    let g = g.to_kind(tch::Kind::Float);
    let g = match &factor {
        Some(f) => g * f,
        None => g,
    };
    let gg = &g * &g;
    let (m, v) = match moments {
        Some((m, v)) => (m.lerp(&g, 1.0 - s.beta1), v.lerp(&gg, 1.0 - s.beta2)),
        None => (&g * (1.0 - s.beta1), gg * (1.0 - s.beta2)),
    };
    let root_c2 = s.c2.sqrt();
    // −(√v + ε·√c₂) / (lr·√c₂/c₁): `addcdiv` has no scale factor in tch, so it goes here.
    let mut denom = v.sqrt();
    let _ = denom.g_add_scalar_(s.eps * root_c2);
    let _ = denom.g_div_scalar_(-(s.lr * root_c2 / s.c1));
    let mut p = p;
    if s.decay != 0.0 {
        let _ = p.g_mul_scalar_(1.0 - s.decay);
    }
    let _ = p.addcdiv_(&m, &denom);
    (wrap(p), wrap(m), wrap(v))
}
