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
//!
//! A backend with a kernel computing the same draw registers it with [`register_native`]
//! (the `llama` tool's libtorch CUDA build: one launch instead of ~100 tensor operations, a
//! sort among them after which torch waits for the device).

use std::any::TypeId;
use std::cell::OnceCell;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dispatch::{ErasedNative, Registry};
use crate::error::GenerateError;

/// `(logits [rows, vocab] f32, u [rows] f32 (None when greedy), temperature, top_k, top_p)` →
/// each row's token `[rows, 1]` by [`Sampling`]'s definition, or `None` (the tensor operations
/// draw instead). `top_k` and `top_p` come filtered: `k < vocab`, `p < 1`.
pub type NativeSample<B> = fn(
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    f64,
    Option<usize>,
    Option<f64>,
) -> Option<IntTensor<B>>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// Makes [`Sampler::sample`] on backend `B` draw with `native`.
pub fn register_native<B: Backend>(native: NativeSample<B>) {
    REGISTRY.insert(TypeId::of::<B>(), ErasedNative::new(native));
}

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
/// sort a read-back inside Burn; at temperature 0 no draws and no sort).
pub struct Sampler<B: Backend> {
    sampling: Sampling,
    /// `[steps, rows]` uniform draws (f32), `None` when greedy.
    draws: Option<Tensor<B, 2>>,
    /// `[1, vocab]`: 0, 1, ... as floats (exact below 2^24), made at the first step.
    index: OnceCell<Tensor<B, 2>>,
    /// The backend's one-kernel draw, if registered (looked up once, not at every step).
    native: Option<NativeSample<B>>,
}

impl<B: Backend> Sampler<B> {
    /// The draws of `rows` rows for `steps` steps, on `device` (none when greedy).
    pub fn new(sampling: &Sampling, rows: usize, steps: usize, device: &B::Device) -> Self {
        let draws = sampling.random().then(|| {
            let per_row: Vec<Vec<f64>> = (0..rows).map(|r| sampling.draws(r, steps)).collect();
            let flat: Vec<f32> = (0..steps)
                .flat_map(|s| per_row.iter().map(move |d| d[s] as f32))
                .collect();
            Tensor::from_data(TensorData::new(flat, [steps, rows]), device)
        });
        Self::with(sampling, draws)
    }

    /// With given draws `[steps, rows]` (f32 in [0, 1)) instead of the seeded ones.
    pub fn from_draws(sampling: &Sampling, draws: Tensor<B, 2>) -> Self {
        Self::with(sampling, sampling.random().then_some(draws))
    }

    fn with(sampling: &Sampling, draws: Option<Tensor<B, 2>>) -> Self {
        Self {
            sampling: sampling.clone(),
            draws,
            index: OnceCell::new(),
            native: REGISTRY.native::<NativeSample<B>>(TypeId::of::<B>()),
        }
    }

    /// Each row's token `[rows, 1]` at step `step` from `logits` `[rows, vocab]` (f32).
    ///
    /// Float operations throughout (the indices as floats): on ndarray Burn 0.21's integer
    /// `mask_fill` and `arange` took ~1.2 ms each over a 32,000-token row, its float ones
    /// ~0.02 ms.
    ///
    /// # Panics
    /// When `step` is past the steps given to [`Sampler::new`].
    pub fn sample(&self, logits: Tensor<B, 2>, step: usize) -> Tensor<B, 2, Int> {
        let [rows, vocab] = logits.dims();
        let top_k = self.sampling.top_k.filter(|&k| k < vocab);
        let u = |draws: &Tensor<B, 2>| draws.clone().narrow(0, step, 1).reshape([rows]);
        if let Some(native) = self.native
            && let Some(ids) = native(
                logits.clone().into_primitive().tensor(),
                self.draws.as_ref().map(|d| u(d).into_primitive().tensor()),
                self.sampling.temperature,
                top_k,
                self.sampling.nucleus(),
            )
        {
            return Tensor::from_primitive(ids);
        }
        let device = logits.device();
        let made = self.index.get_or_init(|| arange(vocab, &device));
        let index = match made.dims()[1] == vocab {
            true => made.clone(),
            false => arange(vocab, &device),
        }
        .expand([rows, vocab]);
        let top = vocab as f32 - 1.0;
        // The smallest index where `mask` holds (the last one where none does): a minimum, not
        // an argmax, whose choice among ties differs between backends.
        let first = |mask: Tensor<B, 2, Bool>| {
            index
                .clone()
                .mask_fill(mask.bool_not(), vocab as f32)
                .min_dim(1)
                .clamp_max(top)
                .int()
        };
        let max = logits.clone().max_dim(1).expand([rows, vocab]);
        let Some(draws) = &self.draws else {
            return first(logits.equal(max));
        };
        let u = u(draws).reshape([rows, 1]);
        let t = self.sampling.temperature;
        let mut w = (logits.clone() - max).div_scalar(t).exp();
        if let Some(k) = top_k {
            let kth = logits.clone().topk(k, 1).narrow(1, k - 1, 1);
            w = w.mask_fill(logits.lower(kth.expand([rows, vocab])), 0.0);
        }
        if let Some(p) = self.sampling.nucleus() {
            let q = w.clone() / w.clone().sum_dim(1).expand([rows, vocab]);
            let sorted = q.clone().sort_descending(1);
            let reach = Tensor::full([rows, 1], p, &device);
            let at = first_past(sorted.clone(), reach, true).clamp_max(top);
            let cut = sorted.gather(1, at.int());
            w = w.mask_fill(q.lower(cut.expand([rows, vocab])), 0.0);
        }
        let live = w.clone().greater_elem(0.0);
        let target = w.clone().sum_dim(1) * u;
        let at = first_past(w, target, false).expand([rows, vocab]);
        // The last kept token: the answer when rounding puts the target at the total.
        let last = index
            .clone()
            .mask_fill(live.clone().bool_not(), -1.0)
            .max_dim(1)
            .expand([rows, vocab]);
        // The first kept token from there (a token past the target by a rounding may be one
        // that top-k or top-p dropped).
        first(
            index
                .clone()
                .greater_equal(at)
                .bool_and(live)
                .bool_or(index.clone().equal(last)),
        )
    }
}

/// `[1, n]`: 0, 1, ..., n - 1 as floats.
fn arange<B: Backend>(n: usize, device: &B::Device) -> Tensor<B, 2> {
    Tensor::<B, 1, Int>::arange(0..n as i64, device)
        .float()
        .reshape([1, n])
}

/// For each row of `x` `[rows, n]` (no negative entries), the first index whose running sum
/// passes `target` `[rows, 1]` (`or_equal`: reaches it), as a float `[rows, 1]`; `n` or more
/// when none does. In two levels, the blocks' sums then one block's entries, so that no running
/// sum spans the row: Burn 0.21's `cumsum` is a loop over the columns' slices on ndarray (~6.6
/// ms over a 32,000-token row) and one sum of the whole prefix per output on CubeCL (n²/2
/// additions); this takes ~0.2 ms on ndarray.
fn first_past<B: Backend>(x: Tensor<B, 2>, target: Tensor<B, 2>, or_equal: bool) -> Tensor<B, 2> {
    let [rows, n] = x.dims();
    let (c, k) = blocks(n);
    let x = match c * k - n {
        0 => x,
        pad => {
            let zeros = Tensor::zeros([rows, pad], &x.device());
            Tensor::cat(vec![x, zeros], 1)
        }
    }
    .reshape([rows, c, k]);
    let passes = |sums: Tensor<B, 2>, t: Tensor<B, 2>| match or_equal {
        true => sums.greater_equal(t),
        false => sums.greater(t),
    };
    // Entries before the first that passes, given running sums that never decrease.
    let before = |sums: Tensor<B, 2>, t: Tensor<B, 2>| {
        let width = sums.dims()[1];
        passes(sums, t.expand([rows, width]))
            .bool_not()
            .float()
            .sum_dim(1)
    };
    let totals = x.clone().sum_dim(2).reshape([rows, c]);
    let ends = totals.clone().cumsum(1);
    let block = before(ends.clone(), target.clone()).clamp_max(c as f32 - 1.0);
    let start = (ends - totals).gather(1, block.clone().int());
    let entries = x
        .gather(
            1,
            block
                .clone()
                .int()
                .reshape([rows, 1, 1])
                .expand([rows, 1, k]),
        )
        .reshape([rows, k]);
    let sums = entries.cumsum(1) + start.expand([rows, k]);
    block * k as f32 + before(sums, target)
}

/// Blocks of `n` entries for [`first_past`]: `(count, size)`, the size a divisor of `n` near √n
/// where one lies within a factor of two (32,000 = 200 × 160), else ⌈√n⌉ (the last block
/// padded with zeros).
fn blocks(n: usize) -> (usize, usize) {
    let root = (n as f64).sqrt().ceil().max(1.0) as usize;
    let k = (root / 2..=root)
        .rev()
        .find(|&k| k > 0 && n.is_multiple_of(k))
        .unwrap_or(root);
    (n.div_ceil(k), k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn blocks_split_near_the_square_root() {
        assert_eq!(blocks(32_000), (200, 160));
        assert_eq!(blocks(40), (8, 5));
        assert_eq!(blocks(41), (6, 7)); // a prime: ⌈√41⌉ wide, the last block padded
        assert_eq!(blocks(1), (1, 1));
    }

    #[test]
    fn first_past_finds_where_the_running_sum_passes() {
        // Running sums 1 3 6 10 15 15 15 16 17, in blocks of 3 (9 = 3 × 3) and with 10 entries
        // (4 blocks of 3, padded).
        for x in [
            vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 1.0, 1.0],
            vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 1.0, 1.0, 0.0],
        ] {
            let n = x.len();
            let t = Tensor::<B, 2>::from_data(TensorData::new(x, [1, n]), &Default::default());
            let at = |target: f32, or_equal: bool| {
                let target = Tensor::full([1, 1], target, &Default::default());
                first_past(t.clone(), target, or_equal).into_scalar()
            };
            assert_eq!(at(0.0, false), 0.0);
            assert_eq!(at(3.0, false), 2.0);
            assert_eq!(at(3.0, true), 1.0);
            assert_eq!(at(14.5, false), 4.0);
            assert_eq!(at(15.0, false), 7.0);
            assert_eq!(at(15.0, true), 4.0);
            assert!(at(17.0, false) >= n as f32 - 1.0 && at(17.0, true) == 8.0);
            assert!(at(18.0, false) >= 9.0);
        }
    }
}
