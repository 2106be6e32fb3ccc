//! Compute precision: full f32, or bf16 matmuls over f32 master weights.
//!
//! Burn 0.21 has no autocast and no dtype promotion, so mixed precision is done by hand, the way
//! `torch.autocast(dtype=torch.bfloat16)` treats a LLaMA: parameters (and so gradients and the
//! optimiser state) stay in their own dtype; every projection casts its input (once when several
//! share it, [`Precision::input`]) and its weight to bf16 and returns bf16; the residual stream,
//! the norms and the loss's log-softmax stay in f32.
//! `cast` is differentiable, so a weight's gradient arrives in f32.

use std::fmt;
use std::str::FromStr;

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::weight_cast;

/// The dtype the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in the parameters' dtype (f32 for a freshly initialised model).
    #[default]
    F32,
    /// Projections (attention, feed-forward, output head) and attention itself in bf16 with f32
    /// master weights; embeddings, residual stream, norms and loss in f32.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The matmul dtype, `None` for "whatever the parameters are".
    pub fn compute_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
        }
    }

    /// Whether `device` can run this precision (bf16 needs arithmetic support: CUDA, libtorch and
    /// Flex have it; NdArray and WebGPU do not, Vulkan only stores it).
    pub fn check<B: Backend>(self, device: &B::Device) -> Result<(), ConfigError> {
        match self.compute_dtype() {
            Some(dtype) if !B::supports_dtype(device, dtype) => {
                Err(ConfigError::Unsupported(format!(
                    "{} compute is not supported by this backend/device ({device:?}); use f32",
                    self.name()
                )))
            }
            _ => Ok(()),
        }
    }

    /// `x` in the compute dtype, for an input that several projections share (attention's q, k,
    /// v; the gated feed-forward's w1, w3): one cast instead of one per projection, and in the
    /// backward pass the projections' input gradients meet in the compute dtype and are cast back
    /// once (with a cast per projection, each gradient is cast to f32 and then summed: two more
    /// casts and f32 sums per sublayer, docs/performance.md, attempt 11). [`Self::linear`] on the
    /// result casts nothing.
    pub fn input<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.compute_dtype() {
            Some(dtype) => cast_to(x, dtype),
            None => x,
        }
    }

    /// `x · Wᵢ (+ bᵢ)` for several [`Linear`]s of one input `[batch, time, d]` (attention's q, k,
    /// v; the gated feed-forward's w1, w3), in the compute dtype. The input is flattened once, so
    /// that the products' input gradients meet at one autodiff node, where a backend may add each
    /// into the last (`product::register_accumulate`).
    pub fn linears<B: Backend, const N: usize>(
        self,
        layers: [&Linear<B>; N],
        x: Tensor<B, 3>,
    ) -> [Tensor<B, 3>; N] {
        let [b, t, _] = x.dims();
        let rows = x.flatten::<2>(0, 1);
        layers.map(|layer| {
            let y = self.linear(layer, rows.clone());
            let n = y.dims()[1];
            y.reshape([b, t, n])
        })
    }

    /// `x · W (+ b)` for a [`Linear`], in the compute dtype.
    ///
    /// The leading dimensions are flattened first (a matrix is taken as it is: a reshape is an
    /// autodiff node even to the same shape, and products that share a flattened input should
    /// meet at its node, `product::register_accumulate`): Burn's `linear` on a `[batch, T, d]` input
    /// broadcasts the weight to a batched matmul, and its weight gradient is then `batch` separate
    /// `[d_in, d_out]` products summed afterwards (for the output head, a `[batch, d, vocab]`
    /// temporary); one `[batch·T, d]` matmul does the same work in one product.
    pub fn linear<B: Backend, const D: usize>(
        self,
        layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let d = dims[D - 1];
        // Split into row blocks where the backend wants its weight gradients split (`split_k`).
        let [d_in, d_out] = layer.weight.dims();
        let y = match crate::split_k::splits::<B>(rows, d_in * d_out) {
            Some(s) => self
                .project(layer, x.reshape([s, rows / s, d]))
                .flatten(0, 1),
            None => self.project_rows(layer, rows_of(x)),
        };
        let mut out = dims;
        out[D - 1] = y.dims()[1];
        unrows(y, out)
    }

    /// [`Self::project`] of a matrix: a few rows (decoding) through [`crate::gemv`], any number
    /// through a backend's own product ([`crate::product`]) where it registered one.
    fn project_rows<B: Backend>(self, layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let native = x.dims()[0] <= crate::gemv::MAX_ROWS || crate::product::registered::<B>();
        if !native || layer.bias.is_some() {
            return self.project(layer, x);
        }
        let w = layer.weight.val();
        match self.compute_dtype() {
            None => crate::gemv::matmul(x, w),
            Some(dtype) => crate::gemv::matmul(cast_to(x, dtype), weight_cast::cast(w, dtype)),
        }
    }

    /// `x · W (+ b)` in the compute dtype, for any rank.
    fn project<B: Backend, const D: usize>(
        self,
        layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self.compute_dtype() {
            None => layer.forward(x),
            Some(dtype) => {
                let w = weight_cast::cast(layer.weight.val(), dtype);
                let b = layer.bias.as_ref().map(|b| cast_to(b.val(), dtype));
                burn::tensor::module::linear(cast_to(x, dtype), w, b)
            }
        }
    }

    /// `x · Wᵀ` against a `[out, in]` matrix (the tied output head), in the compute dtype.
    pub fn matmul_t<B: Backend>(self, x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
        // A plain cast (its gradient widened to f32), not `weight_cast`'s: the tied weight's
        // gradient is also the embedding's, in f32, and a sum of an f32 and a bf16 gradient is
        // torch's promotion on libtorch but not something every Burn backend is known to do.
        let (x, w) = match self.compute_dtype() {
            None => (x, w),
            Some(dtype) => (cast_to(x, dtype), cast_to(w, dtype)),
        };
        let [rows, d] = x.dims();
        match crate::split_k::splits::<B>(rows, w.dims()[0] * d) {
            Some(s) => x
                .reshape([s, rows / s, d])
                .matmul(w.transpose().unsqueeze::<3>())
                .flatten(0, 1),
            None => crate::gemv::matmul(x, w.transpose()),
        }
    }
}

/// `[.., d]` as `[rows, d]`; a matrix as it is (a reshape is an autodiff node even to the same
/// shape).
fn rows_of<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 2> {
    if D == 2 {
        return Tensor::from_primitive(x.into_primitive());
    }
    let dims = x.dims();
    x.reshape([dims[..D - 1].iter().product::<usize>(), dims[D - 1]])
}

/// `[rows, n]` as `out` (`[.., n]`), the inverse of [`rows_of`].
fn unrows<B: Backend, const D: usize>(y: Tensor<B, 2>, out: [usize; D]) -> Tensor<B, D> {
    if D == 2 {
        return Tensor::from_primitive(y.into_primitive());
    }
    y.reshape(out)
}

/// `t` in `dtype`; no operation (and no autodiff node) when it already is.
fn cast_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    match t.dtype() == dtype {
        true => t,
        false => t.cast(dtype),
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(ConfigError::Unsupported(format!(
                "unknown precision `{other}` (expected f32 or bf16)"
            ))),
        }
    }
}
