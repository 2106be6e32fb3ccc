//! Position information: rotary embeddings (LLaMA) and the absolute baselines.
//!
//! Every variant is driven by explicit position ids `[batch, time]` rather than an offset, so a batch
//! of left-padded prompts of different lengths decodes with each row's own positions.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::rotary;

/// Rotary position embedding in the "rotate half" layout of Hugging Face / GPT-NeoX: dimension `i`
/// pairs with `i + head_dim/2`. Meta's checkpoints rotate interleaved pairs `(2i, 2i+1)`; importers
/// permute the rows of `wq`/`wk` to this layout. (Burn's `RotaryEncoding` is interleaved and builds its
/// table in the default float dtype, inexact in bf16; this one builds its table in f64 on the host.)
#[derive(Module, Debug)]
pub struct Rope<B: Backend> {
    /// `[max_seq_len, head_dim / 2]`, f32, not a parameter.
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    pub fn new(head_dim: usize, max_seq_len: usize, theta: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_seq_len * half);
        let mut sin = Vec::with_capacity(max_seq_len * half);
        for p in 0..max_seq_len {
            for i in 0..half {
                let inv_freq = theta.powf(-((2 * i) as f64) / head_dim as f64);
                let angle = p as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |v: Vec<f32>| {
            Tensor::from_data(
                TensorData::new(v, [max_seq_len, half]),
                (device, DType::F32),
            )
        };
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// Rotates `x: [batch, heads, time, head_dim]` by the angles of `positions: [batch, time]`.
    pub fn apply(&self, x: Tensor<B, 4>, positions: &Tensor<B, 2, Int>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        self.angles(positions, dtype).apply(x)
    }

    /// The cosines and sines of `positions: [batch, time]`, gathered once per forward pass and
    /// shared by every layer's queries and keys (two gathers and casts per pass instead of four per
    /// layer: a decoded token runs each operation once per layer, and on a GPU each one costs a
    /// kernel launch and its host-side dispatch whatever the size).
    pub fn angles(&self, positions: &Tensor<B, 2, Int>, dtype: DType) -> RopeAngles<B> {
        let [b, t] = positions.dims();
        let half = self.cos.dims()[1];
        let idx = positions.clone().reshape([b * t]);
        let gather = |table: &Tensor<B, 2>| {
            table
                .clone()
                .select(0, idx.clone())
                .reshape([b, 1, t, half])
                .cast(dtype)
        };
        let (cos, sin) = (gather(&self.cos), gather(&self.sin));
        // The rotary operation's full-width tables, once per pass (training only: the operation
        // is registered for autodiff backends).
        let full =
            rotary::is_registered::<B>().then(|| rotary::full_tables(cos.clone(), sin.clone()));
        RopeAngles { cos, sin, full }
    }
}

/// [`Rope`]'s angles for one batch of positions: `[batch, 1, time, head_dim / 2]` each.
#[derive(Debug, Clone)]
pub struct RopeAngles<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    /// `rotary::full_tables` of the two, where the rotary operation is registered.
    full: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> RopeAngles<B> {
    /// The rotary operation's full-width tables (`rotary::full_tables`), where it is registered.
    pub fn full_tables(&self) -> Option<(&Tensor<B, 4>, &Tensor<B, 4>)> {
        self.full.as_ref().map(|(c, s)| (c, s))
    }

    /// Rotates `x: [batch, heads, time, head_dim]` (its dtype; a no-op cast when the angles were
    /// gathered in it).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        if let Some((c, s)) = &self.full {
            return rotary::rotate(x, c.clone().cast(dtype), s.clone().cast(dtype));
        }
        let half = x.dims()[3] / 2;
        let (cos, sin) = (self.cos.clone().cast(dtype), self.sin.clone().cast(dtype));
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let r2 = x2 * cos + x1 * sin;
        Tensor::cat(vec![r1, r2], 3)
    }
}

/// Fixed sinusoids of Vaswani et al. (2017): `pe[p, 2i] = sin(p / 10000^(2i/d))`,
/// `pe[p, 2i+1] = cos(p / 10000^(2i/d))`.
#[derive(Module, Debug)]
pub struct Sinusoids<B: Backend> {
    /// `[max_seq_len, dim]`, f32, not a parameter.
    table: Tensor<B, 2>,
}

impl<B: Backend> Sinusoids<B> {
    pub fn new(dim: usize, max_seq_len: usize, device: &B::Device) -> Self {
        let mut v = Vec::with_capacity(max_seq_len * dim);
        for p in 0..max_seq_len {
            for j in 0..dim {
                let i = (j / 2) as f64;
                let angle = p as f64 / 10_000f64.powf(2.0 * i / dim as f64);
                v.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
            }
        }
        let table = Tensor::from_data(TensorData::new(v, [max_seq_len, dim]), (device, DType::F32));
        Self { table }
    }
}

/// An absolute position signal added to the token embeddings.
#[derive(Module, Debug)]
pub enum AbsolutePosition<B: Backend> {
    Learned(Embedding<B>),
    Sinusoidal(Sinusoids<B>),
}

impl<B: Backend> AbsolutePosition<B> {
    pub fn learned(max_seq_len: usize, dim: usize, std: f64, device: &B::Device) -> Self {
        let emb = EmbeddingConfig::new(max_seq_len, dim)
            .with_initializer(Initializer::Normal { mean: 0.0, std })
            .init(device);
        Self::Learned(emb)
    }

    /// `[batch, time, dim]` position vectors for `positions: [batch, time]`.
    pub fn forward(&self, positions: &Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match self {
            Self::Learned(emb) => emb.forward(positions.clone()),
            Self::Sinusoidal(s) => {
                let [b, t] = positions.dims();
                let dim = s.table.dims()[1];
                s.table
                    .clone()
                    .select(0, positions.clone().reshape([b * t]))
                    .reshape([b, t, dim])
            }
        }
    }
}
