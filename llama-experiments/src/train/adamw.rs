//! One bucket's AdamW update: what it takes ([`AdamwStep`] for a concatenated bucket,
//! [`AdamwParts`] for one left as its parameters), the tensor-op form, and the hand-over to a
//! backend's own kernels (`libtorch_adamw`, `cubecl_adamw`) where this build has them. `optim` groups the
//! parameters into buckets and calls these.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// `cat` of a bucket's pieces in offset order: in their dtype when they share one (a bucket of
/// bf16 weight gradients stays bf16: the fused update reads it so), else in f32.
pub(super) fn cat<B: Backend>(mut parts: Vec<(usize, Tensor<B, 1>)>) -> Tensor<B, 1> {
    parts.sort_by_key(|(offset, _)| *offset);
    let dtype = parts.first().map(|(_, t)| t.dtype());
    let same = parts.iter().all(|(_, t)| Some(t.dtype()) == dtype);
    let parts = parts.into_iter().map(|(_, t)| match same {
        true => t,
        false => widened(t),
    });
    Tensor::cat(parts.collect(), 0)
}

/// `t` in f32 (itself if it is already).
pub fn widened<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match t.dtype() {
        DType::F32 => t,
        _ => t.cast(DType::F32),
    }
}

/// The least mean parameter size (elements) of a bucket this build updates parameter by
/// parameter on `device` ([`AdamwParts`]: the fused kernel on libtorch CUDA and on CubeCL's
/// CUDA), or `None` where it does not.
#[cfg_attr(
    not(any(feature = "tch", feature = "cuda-untuned")),
    allow(unused_variables)
)]
pub(super) fn backend_parts_min_mean<I: Backend>(device: &I::Device) -> Option<usize> {
    // libtorch concatenates a bucket in one launch (`torch.cat`), so a bucket of small tensors
    // (the norms' gains) costs fewer launches concatenated than with a kernel per parameter.
    #[cfg(feature = "tch")]
    if crate::libtorch_adamw::updates_parts::<I>(device) {
        return Some(1 << 20);
    }
    // CubeCL concatenates piece by piece (a slice-assign kernel and a copy of its metadata per
    // piece, for the parameters and again for the gradients): every bucket by parts.
    #[cfg(feature = "cuda-untuned")]
    if crate::cubecl_adamw::updates_parts::<I>(device) {
        return Some(1);
    }
    // Flex: where the parameters lie, no concatenation at all.
    #[cfg(feature = "flex")]
    if crate::flex_kernels::adamw::updates_parts::<I>() {
        return Some(1);
    }
    None
}

/// [`AdamwParts`]'s update by the backend's own kernels, with the bucket's new values in the
/// compute dtype where the backend writes them (CubeCL's CUDA: `llama_model::weight_cast`'s
/// copies), or the step back.
pub(super) fn backend_update_parts<I: Backend>(
    step: AdamwParts<I>,
) -> Result<AdamwPartsOutput<I>, AdamwParts<I>> {
    #[cfg(feature = "tch")]
    let step = match crate::libtorch_adamw::try_update_parts(step) {
        Ok(out) => return Ok((out, None)),
        Err(step) => step,
    };
    #[cfg(feature = "cuda-untuned")]
    let step = match crate::cubecl_adamw::try_update_parts(step) {
        Ok(out) => return Ok(out),
        Err(step) => step,
    };
    #[cfg(feature = "flex")]
    let step = match crate::flex_kernels::adamw::try_update_parts(step) {
        Ok(out) => return Ok(out),
        Err(step) => step,
    };
    Err(step)
}

/// `Σ t²` as a `[1]` tensor: one reduction on libtorch (its norm, squared), on CubeCL's CUDA and
/// on Flex (kernels of ours), the square and the sum elsewhere.
pub(super) fn sum_squares<I: Backend>(t: Tensor<I, 1>) -> Tensor<I, 1> {
    #[cfg(feature = "tch")]
    let t = match crate::libtorch_adamw::try_sum_squares(t) {
        Ok(s) => return s,
        Err(t) => t,
    };
    #[cfg(feature = "cuda-untuned")]
    let t = match crate::cubecl_sum_squares::try_sum_squares(t) {
        Ok(s) => return s,
        Err(t) => t,
    };
    #[cfg(feature = "flex")]
    let t = match crate::flex_kernels::sum_squares::try_sum_squares_all(vec![t]) {
        Ok(s) => return s,
        Err(mut t) => t.remove(0),
    };
    widened(t).square().sum()
}

/// `Σ Σ t²` over `ts` (`[1]`): one pass on CubeCL's CUDA (a launch per tensor) and on Flex, else
/// [`sum_squares`] of each, summed.
pub(super) fn sum_squares_all<I: Backend>(ts: Vec<Tensor<I, 1>>) -> Tensor<I, 1> {
    #[cfg(feature = "cuda-untuned")]
    let ts = match crate::cubecl_sum_squares::try_sum_squares_all(ts) {
        Ok(s) => return s,
        Err(ts) => ts,
    };
    #[cfg(feature = "flex")]
    let ts = match crate::flex_kernels::sum_squares::try_sum_squares_all(ts) {
        Ok(s) => return s,
        Err(ts) => ts,
    };
    Tensor::cat(ts.into_iter().map(sum_squares).collect(), 0).sum()
}

/// The update by the backend's own kernels where this build has them (libtorch; `fused`: the
/// fused kernel on CUDA, libtorch's or CubeCL's), else `step` back.
#[cfg_attr(
    not(any(feature = "tch", feature = "cuda-untuned")),
    allow(unused_variables)
)]
pub(super) fn backend_update<I: Backend>(
    step: AdamwStep<I>,
    fused: bool,
) -> Result<AdamwOutput<I>, AdamwStep<I>> {
    #[cfg(feature = "tch")]
    let step = match crate::libtorch_adamw::try_update(step, fused) {
        Ok(out) => return Ok(out),
        Err(step) => step,
    };
    #[cfg(feature = "cuda-untuned")]
    let step = match fused {
        true => match crate::cubecl_adamw::try_update(step) {
            Ok(out) => return Ok(out),
            Err(step) => step,
        },
        false => step,
    };
    #[cfg(feature = "flex")]
    let step = match crate::flex_kernels::adamw::try_update(step) {
        Ok(out) => return Ok(out),
        Err(step) => step,
    };
    Err(step)
}

/// One bucket's AdamW update: what it needs, for the tensor-op form here or a backend's own
/// kernels (`libtorch_adamw`).
pub struct AdamwStep<I: Backend> {
    /// The bucket's parameters, freshly concatenated (an update may write it in place).
    pub param: Tensor<I, 1>,
    /// f32, or bf16 (a bucket of projection weight gradients under `llama_model::weight_cast`).
    pub grad: Tensor<I, 1>,
    /// A factor (`[1]`, on the device: the clipping's) the gradient is multiplied by first, so
    /// that an update can fold the scaling into its own pass over the gradient.
    pub grad_factor: Option<Tensor<I, 1>>,
    /// First and second moments, `None` before the first step.
    pub moments: Option<(Tensor<I, 1>, Tensor<I, 1>)>,
    pub scalars: AdamwScalars,
}

/// One bucket's AdamW update with its parameters and gradients left as they are, `(offset in the
/// bucket, parameter, gradient)` flat, for a backend that writes each parameter's new values,
/// moments included, into its range of the bucket's new vectors: neither the parameters nor the
/// gradients are concatenated first (two copies of the bucket fewer per step).
pub struct AdamwParts<I: Backend> {
    /// The bucket's length.
    pub len: usize,
    pub parts: Vec<(usize, Tensor<I, 1>, Tensor<I, 1>)>,
    pub grad_factor: Option<Tensor<I, 1>>,
    /// The bucket's flat moments, `None` before the first step.
    pub moments: Option<(Tensor<I, 1>, Tensor<I, 1>)>,
    pub scalars: AdamwScalars,
}

impl<I: Backend> AdamwStep<I> {
    /// The same update as one part at offset 0 (for a backend that updates by parts).
    pub fn into_one_part(self) -> AdamwParts<I> {
        AdamwParts {
            len: self.param.dims()[0],
            parts: vec![(0, self.param, self.grad)],
            grad_factor: self.grad_factor,
            moments: self.moments,
            scalars: self.scalars,
        }
    }
}

impl<I: Backend> AdamwParts<I> {
    /// [`AdamwStep::into_one_part`] undone: the step of a bucket of one part.
    pub fn into_one_step(self) -> AdamwStep<I> {
        let (_, param, grad) = self.parts.into_iter().next().expect("one part");
        AdamwStep {
            param,
            grad,
            grad_factor: self.grad_factor,
            moments: self.moments,
            scalars: self.scalars,
        }
    }

    /// The same update on the concatenated bucket.
    pub fn concatenated(self) -> AdamwStep<I> {
        let (params, grads) = self
            .parts
            .into_iter()
            .map(|(offset, p, g)| ((offset, p), (offset, g)))
            .unzip();
        AdamwStep {
            param: cat(params),
            grad: cat(grads),
            grad_factor: self.grad_factor,
            moments: self.moments,
            scalars: self.scalars,
        }
    }
}

/// One step's AdamW scalars (also what the fused CUDA kernel takes).
#[derive(Debug, Clone, Copy)]
pub struct AdamwScalars {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub lr: f64,
    /// `lr · weight_decay` for a decayed bucket, 0 otherwise.
    pub decay: f64,
    /// Bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    pub c1: f64,
    pub c2: f64,
}

/// An update's result: the new parameters, first and second moments.
pub type AdamwOutput<I> = (Tensor<I, 1>, Tensor<I, 1>, Tensor<I, 1>);

/// An update by parts: [`AdamwOutput`] and, where the backend writes it, the bucket's new values
/// in the compute dtype (`llama_model::weight_cast`'s copies).
pub type AdamwPartsOutput<I> = (AdamwOutput<I>, Option<Tensor<I, 1>>);

impl<I: Backend> AdamwStep<I> {
    /// New parameters and moments, in tensor ops (one kernel per scalar operation).
    pub fn decomposed(self) -> AdamwOutput<I> {
        let grad = widened(self.grad);
        let g = match self.grad_factor {
            Some(f) => grad * f,
            None => grad,
        };
        let s = self.scalars;
        let (b1, b2) = (s.beta1, s.beta2);
        let (m, v) = match self.moments {
            Some((m, v)) => (
                m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1),
                v.mul_scalar(b2) + g.square().mul_scalar(1.0 - b2),
            ),
            None => (
                g.clone().mul_scalar(1.0 - b1),
                g.square().mul_scalar(1.0 - b2),
            ),
        };
        // lr·m̂/(√v̂ + ε) = (lr/c1)·m / (√v/√c2 + ε)
        let denom = v
            .clone()
            .sqrt()
            .mul_scalar(1.0 / s.c2.sqrt())
            .add_scalar(s.eps);
        let delta = m.clone().div(denom).mul_scalar(s.lr / s.c1);
        let p = match s.decay != 0.0 {
            true => self.param.mul_scalar(1.0 - s.decay),
            false => self.param,
        };
        (p - delta, m, v)
    }
}
