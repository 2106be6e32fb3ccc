//! The residual update `x + δ` on libtorch (`llama_model::residual`): torch's `add` promotes the
//! f32 stream plus a bf16 sublayer output in one kernel, where Burn's tensor API casts and adds in
//! two. The values are the same (torch widens δ exactly, as the cast does).

use burn::backend::libtorch::TchTensor;

/// `x + δ` in `x`'s dtype, or `None` when torch's promotion would give another dtype.
pub fn add(x: TchTensor, delta: TchTensor) -> Option<TchTensor> {
    let y = x.tensor.f_add(&delta.tensor).ok()?;
    (y.kind() == x.tensor.kind()).then(|| TchTensor::new(y))
}
