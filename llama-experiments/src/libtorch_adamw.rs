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
//! is one fused kernel instead (`cuda_kernels::adamw`, where NVRTC loads).

use std::any::Any;

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::train::optim::{AdamwOutput, AdamwStep};

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
