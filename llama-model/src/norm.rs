//! The normalisation layer of the `norm` knob.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::knobs::NormKind;
use crate::rms_norm::rms_norm_to;
use crate::{add_norm, residual};

/// RMSNorm (gain only) or LayerNorm (gain and bias), chosen by [`NormKind`].
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    Rms(RmsNorm<B>),
    Layer(LayerNorm<B>),
}

impl<B: Backend> Norm<B> {
    pub fn new(kind: NormKind, dim: usize, eps: f64, device: &B::Device) -> Self {
        match kind {
            NormKind::RmsNorm => Self::Rms(RmsNormConfig::new(dim).with_epsilon(eps).init(device)),
            NormKind::LayerNorm => {
                Self::Layer(LayerNormConfig::new(dim).with_epsilon(eps).init(device))
            }
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        self.forward_to(x, dtype)
    }

    /// The norm with its result in `out`: the dtype the next layer computes in, so that a fused
    /// RMSNorm kernel writes it directly (otherwise the same as `forward` and a cast).
    pub fn forward_to<const D: usize>(&self, x: Tensor<B, D>, out: DType) -> Tensor<B, D> {
        match self {
            // burn-nn's formula; one autodiff operation where registered (`rms_norm`).
            Self::Rms(n) => rms_norm_to(x, n.gamma.val(), n.epsilon, out),
            Self::Layer(n) => {
                let y = n.forward(x);
                match y.dtype() == out {
                    true => y,
                    false => y.cast(out),
                }
            }
        }
    }

    /// `(h, norm(h))` with `h = x + δ` (the residual update, [`residual::add`]) and the norm's
    /// result in `out`; RMSNorm's pair is one kernel where the backend has it ([`add_norm`]).
    pub fn add_forward_to<const D: usize>(
        &self,
        x: Tensor<B, D>,
        delta: Tensor<B, D>,
        out: DType,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        match self {
            Self::Rms(n) => add_norm::add_rms_norm_to(x, delta, n.gamma.val(), n.epsilon, out),
            Self::Layer(_) => {
                let h = residual::add(x, delta);
                (h.clone(), self.forward_to(h, out))
            }
        }
    }
}
