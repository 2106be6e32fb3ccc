//! Projections that read the same input, stacked into one weight for inference.
//!
//! A decoded token multiplies one row by each weight: q, k and v are three products of the same
//! input, the gate and up projections two. At one row each product is a tiny kernel whose time is
//! its launch, not its bytes, so `Llama::with_inference_weights` stacks them into one
//! `[d_in, Σ d_out]` weight and the forward pass runs one product and splits its output (views).
//! The separate weights become views of the stack, so memory does not grow and every other path
//! (more rows, training code reading the fields) is unchanged.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::precision::Precision;

/// Most rows (batch × time) a stacked product serves; more rows take the separate weights (each
/// product is then large enough, and split outputs would need copies downstream).
pub const MAX_ROWS: usize = 16;

/// Weights `[d_in, d_out_i]` side by side. (A module only so that the layers can hold it in a
/// `#[module(skip)]` field: it is never saved.)
#[derive(Module, Debug)]
pub struct Stacked<B: Backend> {
    weight: Tensor<B, 2>,
    #[module(skip)]
    widths: Vec<usize>,
}

impl<B: Backend> Stacked<B> {
    /// The stack of `weights` (all `[d_in, _]`, one dtype) and a view of it for each. Out-major
    /// (`[Σ d_out, d_in]` contiguous, seen through transposed views) where the backend has a
    /// few-row product that wants it ([`crate::gemv`]).
    pub fn new(weights: Vec<Tensor<B, 2>>) -> (Self, Vec<Tensor<B, 2>>) {
        let widths: Vec<usize> = weights.iter().map(|w| w.dims()[1]).collect();
        let weight = match crate::gemv::registered::<B>() {
            true => {
                let rows = weights.into_iter().map(|w| w.transpose()).collect();
                Tensor::cat(rows, 0).transpose()
            }
            false => Tensor::cat(weights, 1),
        };
        let views = Self::split(&weight, &widths);
        (Self { weight, widths }, views)
    }

    fn split<const D: usize>(y: &Tensor<B, D>, widths: &[usize]) -> Vec<Tensor<B, D>> {
        let mut start = 0;
        widths
            .iter()
            .map(|&w| {
                let part = y.clone().narrow(D - 1, start, w);
                start += w;
                part
            })
            .collect()
    }

    /// `x` and the stacked weight as the product takes them: `[rows, d_in]` and `[d_in, Σ d_out]`
    /// in the compute dtype.
    fn operands<const D: usize>(
        &self,
        x: Tensor<B, D>,
        precision: Precision,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let x = precision.input(x).reshape([rows, dims[D - 1]]);
        let w = match precision.compute_dtype() {
            Some(dtype) if self.weight.dtype() != dtype => self.weight.clone().cast(dtype),
            _ => self.weight.clone(),
        };
        (x, w)
    }

    /// SwiGLU's gate of two stacked projections of one row, `silu(x · w₁) ⊙ (x · w₃)`
    /// `[.., d_out]`, in one kernel where the backend has one ([`crate::gemv::swiglu`]); `None`
    /// otherwise (or for more rows, or projections of different widths).
    pub fn forward_swiglu<const D: usize>(
        &self,
        x: Tensor<B, D>,
        precision: Precision,
    ) -> Option<Tensor<B, D>> {
        let &[w1, w3] = &self.widths[..] else {
            return None;
        };
        let mut out = x.dims();
        if w1 != w3 || out[..D - 1].iter().product::<usize>() != 1 {
            return None;
        }
        let (x, w) = self.operands(x, precision);
        out[D - 1] = w1;
        Some(crate::gemv::swiglu(x, w)?.reshape(out))
    }

    /// `x: [.., d_in]` → each projection's output `[.., d_out_i]` (views of one product), in the
    /// compute dtype.
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        precision: Precision,
    ) -> Vec<Tensor<B, D>> {
        let mut out = x.dims();
        let (x, w) = self.operands(x, precision);
        out[D - 1] = self.widths.iter().sum();
        Self::split(&crate::gemv::matmul(x, w).reshape(out), &self.widths)
    }
}
