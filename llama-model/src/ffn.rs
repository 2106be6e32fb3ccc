//! The feed-forward network of the `ffn` knob.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, relu};
use burn::tensor::backend::Backend;

use crate::knobs::FfnKind;
use crate::precision::Precision;
use crate::swiglu::swiglu;

/// `w2(act(w1 x) * w3 x)` for gated kinds, `w2(act(w1 x))` otherwise. Names follow Meta's code:
/// `w1` is the gate (or the only up-projection), `w3` the gated up-projection, `w2` the down-projection.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub w1: Linear<B>,
    pub w3: Option<Linear<B>>,
    pub w2: Linear<B>,
    #[module(skip)]
    kind: FfnKind,
}

pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

impl<B: Backend> FeedForward<B> {
    /// `std` initialises the input projections, `out_std` the down-projection.
    pub fn new(
        kind: FfnKind,
        dim: usize,
        hidden: usize,
        std: f64,
        out_std: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            w1: linear(dim, hidden, std, device),
            w3: kind.is_gated().then(|| linear(dim, hidden, std, device)),
            w2: linear(hidden, dim, out_std, device),
            kind,
        }
    }

    pub fn kind(&self) -> FfnKind {
        self.kind
    }

    /// `x: [batch, time, dim]` → `[batch, time, dim]` in `precision`'s compute dtype.
    pub fn forward(&self, x: Tensor<B, 3>, precision: Precision) -> Tensor<B, 3> {
        let x = precision.input(x);
        let a = precision.linear(&self.w1, x.clone());
        let h = match (self.kind, &self.w3) {
            (FfnKind::Swiglu, Some(w3)) => swiglu(a, precision.linear(w3, x)),
            (FfnKind::Geglu, Some(w3)) => gelu(a) * precision.linear(w3, x),
            (FfnKind::Relu, _) => relu(a),
            (FfnKind::Gelu, _) => gelu(a),
            (kind, None) => unreachable!("gated ffn {kind:?} is always built with w3"),
        };
        precision.linear(&self.w2, h)
    }
}
