//! The feed-forward network of the `ffn` knob.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, relu};
use burn::tensor::backend::Backend;

use crate::knobs::FfnKind;
use crate::precision::Precision;
use crate::stacked::Stacked;
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
    /// The gate and up projections stacked for inference (`Llama::with_inference_weights`).
    #[module(skip)]
    stacked: Option<Stacked<B>>,
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
            stacked: None,
        }
    }

    pub fn kind(&self) -> FfnKind {
        self.kind
    }

    /// Stacks the gate and up projections into one weight, both becoming views of it (see
    /// [`crate::stacked`]). Not for training. A no-op without a gate or with biases.
    pub fn stack_projections(&mut self) {
        let Some(w3) = &mut self.w3 else { return };
        if self.w1.bias.is_some() || w3.bias.is_some() {
            return;
        }
        let (stack, views) = Stacked::new(vec![self.w1.weight.val(), w3.weight.val()]);
        let [a, b]: [Tensor<B, 2>; 2] = views.try_into().expect("two views");
        self.w1.weight = self.w1.weight.clone().map(|_| a);
        w3.weight = w3.weight.clone().map(|_| b);
        self.stacked = Some(stack);
    }

    /// `x: [batch, time, dim]` → `[batch, time, dim]` in `precision`'s compute dtype.
    pub fn forward(&self, x: Tensor<B, 3>, precision: Precision) -> Tensor<B, 3> {
        let x = precision.input(x);
        let rows = x.dims()[..2].iter().product::<usize>();
        // One row with SwiGLU: the gate in the stacked product's epilogue, where the backend
        // has such a kernel (one kernel and one round trip of the two halves fewer per layer).
        if let (Some(stack), FfnKind::Swiglu, 1) = (&self.stacked, self.kind, rows)
            && let Some(h) = stack.forward_swiglu(x.clone(), precision)
        {
            return precision.linear(&self.w2, h);
        }
        let (a, up) = match (&self.stacked, &self.w3) {
            // One row (a decoded token): one product for the gate and up projections, whose
            // halves are then contiguous (more rows would need copies of them).
            (Some(stack), _) if rows == 1 => {
                let [a, b]: [Tensor<B, 3>; 2] = stack
                    .forward(x, precision)
                    .try_into()
                    .expect("two projections");
                (a, Some(b))
            }
            (_, Some(w3)) => {
                let [a, up] = precision.linears([&self.w1, w3], x);
                (a, Some(up))
            }
            (_, None) => (precision.linear(&self.w1, x), None),
        };
        let h = match (self.kind, up) {
            (FfnKind::Swiglu, Some(b)) => swiglu(a, b),
            (FfnKind::Geglu, Some(b)) => gelu(a) * b,
            (FfnKind::Relu, _) => relu(a),
            (FfnKind::Gelu, _) => gelu(a),
            (kind, None) => unreachable!("gated ffn {kind:?} is always built with w3"),
        };
        precision.linear(&self.w2, h)
    }
}
