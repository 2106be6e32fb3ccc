//! SwiGLU's gate on libtorch with torch's own kernels: `silu` forward (one kernel instead of
//! Burn's sigmoid and product) and `silu_backward` (one kernel for σ's closed-form derivative).
//!
//! `llama_model::swiglu`'s closed form in Burn tensor ops runs about nine element-wise kernels in
//! the backward pass; this runs four (`g ⊙ b`, `silu_backward`, `silu(a)`, `g ⊙ silu(a)`), with
//! no autograd graph: the two passes are plain kernels on the saved `a` and `b`.

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use llama_model::swiglu::NativeSwiglu;

/// The pair to register with `llama_model::swiglu::register_native::<LibTorch>`.
pub fn native() -> NativeSwiglu<LibTorch> {
    NativeSwiglu { forward, backward }
}

pub(crate) fn forward(a: TchTensor, b: TchTensor) -> TchTensor {
    TchTensor::new(a.tensor.silu() * &b.tensor)
}

pub(crate) fn backward(a: TchTensor, b: TchTensor, g: TchTensor) -> (TchTensor, TchTensor) {
    let g = g.tensor.to_kind(a.tensor.kind());
    let da = a.tensor.silu_backward(&(&g * &b.tensor));
    let db = g * a.tensor.silu();
    (TchTensor::new(da), TchTensor::new(db))
}
