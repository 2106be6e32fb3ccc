//! Choosing each row's next token from its logits, on the model's device.
//!
//! The draw is defined once and computed twice: [`Sampling::pick`] on the host in f64 (the
//! reference the tests hold the device to) and [`Sampler::sample`] with tensor operations on any
//! Burn backend, so that a decode loop keeps its tokens on the device and never waits for one
//! (`generate` reads them back a chunk at a time).
//!
//! At temperature `T > 0` a row's weights are `w = exp((l - max l) / T)`. Top-k keeps the tokens
//! whose logit reaches the k-th largest, top-p those whose probability reaches the one at which
//! the descending running sum first reaches `p`; both keep every token tied at the boundary, so
//! the kept set never depends on how a sort orders ties. The token is then the inverse of the
//! kept weights' cumulative sum, in vocabulary order, at `u ×` their total, `u` a uniform draw.
//! The draws come from a seeded ChaCha8 stream per row (`seed`, stream = the row's index): a
//! row's tokens depend on its prompt, the seed and its place in the batch, not on the backend
//! or on when the other rows stop. `T = 0` is the argmax (the first largest logit).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::GenerateError;

/// Decoding settings. `temperature == 0` is greedy decoding (top-k and top-p are then ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub max_new_tokens: usize,
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (and any tied with the k-th).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (nucleus
    /// sampling; ties with its least likely token kept too).
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Generation of a row ends after it emits one of these (the stop token is kept in the output).
    pub stop_tokens: Vec<u32>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

impl Sampling {
    pub(crate) fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: &str| Err(GenerateError::Sampling(m.to_string()));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be finite and >= 0");
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1");
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad("top_p must lie in (0, 1]");
        }
        Ok(())
    }

    /// Whether a draw is random (else the argmax).
    fn random(&self) -> bool {
        self.temperature > 0.0
    }

    /// Top-p below 1 (at 1 it keeps every token, so it is skipped rather than left to rounding).
    fn nucleus(&self) -> Option<f64> {
        self.top_p.filter(|&p| p < 1.0)
    }

    /// Row `row`'s uniform draws in [0, 1), one per step.
    pub fn draws(&self, row: usize, steps: usize) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(row as u64);
        (0..steps).map(|_| rng.random::<f64>()).collect()
    }

    /// The token one row of logits gives for the uniform draw `u` (the host reference of
    /// [`Sampler::sample`], in f64).
    pub fn pick(&self, logits: &[f32], u: f64) -> u32 {
        if !self.random() || logits.is_empty() {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let t = self.temperature;
        let mut w: Vec<f64> = logits
            .iter()
            .map(|&l| ((l as f64 - max) / t).exp())
            .collect();
        if let Some(k) = self.top_k.filter(|&k| k < logits.len()) {
            let mut sorted = logits.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            for (wi, &l) in w.iter_mut().zip(logits) {
                if l < kth {
                    *wi = 0.0;
                }
            }
        }
        if let Some(p) = self.nucleus() {
            let total: f64 = w.iter().sum();
            let q: Vec<f64> = w.iter().map(|x| x / total).collect();
            let mut sorted = q.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let mut cum = 0.0;
            let cut = sorted
                .iter()
                .position(|s| {
                    cum += s;
                    cum >= p
                })
                .unwrap_or(sorted.len() - 1);
            for (wi, qi) in w.iter_mut().zip(&q) {
                if *qi < sorted[cut] {
                    *wi = 0.0;
                }
            }
        }
        let target = u * w.iter().sum::<f64>();
        let mut cum = 0.0;
        let mut last = 0;
        for (j, &x) in w.iter().enumerate() {
            if x > 0.0 {
                cum += x;
                last = j;
                if cum > target {
                    return j as u32;
                }
            }
        }
        last as u32
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// [`Sampling`] on the device: each step's draws for every row uploaded once, the tokens
/// computed with tensor operations (a sort for top-p and top-k, on backends without a device
/// sort a read-back inside Burn; the argmax alone at temperature 0).
pub struct Sampler<B: Backend> {
    sampling: Sampling,
    /// `[steps, rows]` uniform draws (f32), `None` when greedy.
    draws: Option<Tensor<B, 2>>,
}

impl<B: Backend> Sampler<B> {
    /// The draws of `rows` rows for `steps` steps, on `device`.
    pub fn new(sampling: &Sampling, rows: usize, steps: usize, device: &B::Device) -> Self {
        let draws = sampling.random().then(|| {
            let per_row: Vec<Vec<f64>> = (0..rows).map(|r| sampling.draws(r, steps)).collect();
            let flat: Vec<f32> = (0..steps)
                .flat_map(|s| per_row.iter().map(move |d| d[s] as f32))
                .collect();
            Tensor::from_data(TensorData::new(flat, [steps, rows]), device)
        });
        Self {
            sampling: sampling.clone(),
            draws,
        }
    }

    /// With given draws `[steps, rows]` (f32 in [0, 1)) instead of the seeded ones.
    pub fn from_draws(sampling: &Sampling, draws: Tensor<B, 2>) -> Self {
        Self {
            sampling: sampling.clone(),
            draws: sampling.random().then_some(draws),
        }
    }

    /// Each row's token `[rows, 1]` at step `step` from `logits` `[rows, vocab]` (f32).
    ///
    /// # Panics
    /// When `step` is past the steps given to [`Sampler::new`].
    pub fn sample(&self, logits: Tensor<B, 2>, step: usize) -> Tensor<B, 2, Int> {
        let [rows, vocab] = logits.dims();
        let device = logits.device();
        let index = Tensor::<B, 1, Int>::arange(0..vocab as i64, &device)
            .reshape([1, vocab])
            .expand([rows, vocab]);
        // The smallest index where `mask` holds (the last one where none does): a minimum, not
        // an argmax, whose choice among ties differs between backends.
        let first = |mask: Tensor<B, 2, burn::tensor::Bool>| {
            index
                .clone()
                .mask_fill(mask.bool_not(), vocab as i64)
                .min_dim(1)
                .clamp_max(vocab as i64 - 1)
        };
        let max = logits.clone().max_dim(1).expand([rows, vocab]);
        let Some(draws) = &self.draws else {
            return first(logits.equal(max));
        };
        let u = draws.clone().narrow(0, step, 1).reshape([rows, 1]);
        let t = self.sampling.temperature;
        let mut w = (logits.clone() - max).div_scalar(t).exp();
        if let Some(k) = self.sampling.top_k.filter(|&k| k < vocab) {
            let kth = logits.clone().topk(k, 1).narrow(1, k - 1, 1);
            w = w.mask_fill(logits.lower(kth.expand([rows, vocab])), 0.0);
        }
        if let Some(p) = self.sampling.nucleus() {
            let q = w.clone() / w.clone().sum_dim(1).expand([rows, vocab]);
            let sorted = q.clone().sort_descending(1);
            let below = sorted.clone().cumsum(1).lower_elem(p).int().sum_dim(1);
            let cut = sorted.gather(1, below.clamp_max(vocab as i64 - 1));
            w = w.mask_fill(q.lower(cut.expand([rows, vocab])), 0.0);
        }
        let cum = w.clone().cumsum(1);
        let target = (cum.clone().narrow(1, vocab - 1, 1) * u).expand([rows, vocab]);
        let live = w.greater_elem(0.0);
        // The last kept token: the answer when rounding puts the target at the total.
        let last = index
            .clone()
            .mask_fill(live.clone().bool_not(), -1)
            .max_dim(1)
            .expand([rows, vocab]);
        first(
            cum.greater(target)
                .bool_and(live)
                .bool_or(index.clone().equal(last)),
        )
    }
}
