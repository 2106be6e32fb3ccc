//! Batched autoregressive generation with the KV cache.
//!
//! Prompts of different lengths are left-padded; each row gets its own position ids and a mask that
//! hides its padding, so a row's output does not depend on the other rows of the batch. Sampling
//! runs on the host from one `[batch, vocab]` logits transfer per step, with a seeded ChaCha8 RNG
//! (reproducible across platforms and backends, unlike backend RNGs).

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::attention::AttentionMask;
use crate::decode::{Decoder, EagerDecoder, StepInput, host_logits};
use crate::error::GenerateError;
use crate::model::Llama;

/// Decoding settings. `temperature == 0` is greedy decoding (top-k and top-p are then ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub max_new_tokens: usize,
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (nucleus sampling).
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
    fn validate(&self) -> Result<(), GenerateError> {
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

    /// Picks the next token from one row of logits.
    pub fn pick(&self, logits: &[f32], rng: &mut ChaCha8Rng) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = self.top_k {
            order.truncate(k.max(1));
        }
        let t = self.temperature;
        let max = logits[order[0]] as f64;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.top_p {
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cum += p;
                    cum >= top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = rng.random::<f64>() * total;
        for (p, &i) in probs.iter().zip(&order) {
            if u < *p {
                return i as u32;
            }
            u -= p;
        }
        order[probs.len() - 1] as u32
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

/// Generates a continuation for each prompt (token ids, without BOS handling: include it in the
/// prompt if the model expects one). Returns the new tokens of each row, in prompt order.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    sampling: &Sampling,
) -> Result<Vec<Vec<u32>>, GenerateError> {
    generate_with(model, prompts, sampling, &mut EagerDecoder)
}

/// [`generate`] with the decode steps (after the prompt's pass) run by `decoder`.
pub fn generate_with<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    sampling: &Sampling,
    decoder: &mut dyn Decoder<B>,
) -> Result<Vec<Vec<u32>>, GenerateError> {
    sampling.validate()?;
    let cfg = model.config();
    if prompts.is_empty() {
        return Err(GenerateError::NoPrompts);
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(GenerateError::EmptyPrompt(i));
        }
        if let Some(&id) = p.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(GenerateError::TokenOutOfRange {
                id,
                vocab_size: cfg.vocab_size,
            });
        }
    }
    let b = prompts.len();
    let l = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if l + sampling.max_new_tokens > cfg.max_seq_len {
        return Err(GenerateError::TooLong {
            prompt: l,
            new: sampling.max_new_tokens,
            max: cfg.max_seq_len,
        });
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    if sampling.max_new_tokens == 0 {
        return Ok(out);
    }
    let device = model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let pads: Vec<usize> = prompts.iter().map(|p| l - p.len()).collect();
    let padded = pads.iter().any(|&p| p > 0);
    let mut cache = model.new_cache(b, l + sampling.max_new_tokens, &device);
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);

    // Prefill.
    let tokens: Vec<i64> = prompts
        .iter()
        .zip(&pads)
        .flat_map(|(p, &pad)| std::iter::repeat_n(0, pad).chain(p.iter().map(|&t| t as i64)))
        .collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [b, l]), &device);
    let pos = positions::<B>(&pads, 0, l, &device);
    let mask = if padded {
        AttentionMask::Explicit(padding_mask::<B>(&pads, 0, l, &device))
    } else {
        AttentionMask::Causal
    };
    let hidden = model.forward_hidden(tokens, &pos, &mask, Some(&mut cache));
    let mut logits = last_logits(model, hidden);

    let mut done = vec![false; b];
    for step in 0..sampling.max_new_tokens {
        let vocab = logits.len() / b;
        let mut next = vec![0i64; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let tok = sampling.pick(&logits[r * vocab..(r + 1) * vocab], &mut rng);
            out[r].push(tok);
            next[r] = tok as i64;
            done[r] = sampling.stop_tokens.contains(&tok);
        }
        if step + 1 == sampling.max_new_tokens || done.iter().all(|&d| d) {
            break;
        }
        let input = StepInput {
            tokens: &next,
            pads: &pads,
            cur: l + step,
        };
        logits = host_logits(decoder.step(model, &mut cache, input));
    }
    Ok(out)
}

/// Host copy of the last position's logits, `[batch * vocab]` in f32.
fn last_logits<B: Backend>(model: &Llama<B>, hidden: Tensor<B, 3>) -> Vec<f32> {
    let t = hidden.dims()[1];
    host_logits(model.logits(hidden.narrow(1, t - 1, 1)).squeeze_dim::<2>(1))
}

/// Position ids of the `t` tokens starting at cache index `start`, for left padding `pads`.
pub fn positions<B: Backend>(
    pads: &[usize],
    start: usize,
    t: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = pads
        .iter()
        .flat_map(|&pad| (start..start + t).map(move |j| j.saturating_sub(pad) as i64))
        .collect();
    Tensor::from_data(TensorData::new(ids, [pads.len(), t]), device)
}

/// `[batch, 1, t, start + t]` mask (`true` = hidden) for `t` queries at cache indices
/// `start..start + t`: hides future keys and each row's left padding.
pub fn padding_mask<B: Backend>(
    pads: &[usize],
    start: usize,
    t: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let tk = start + t;
    let mut m = Vec::with_capacity(pads.len() * t * tk);
    for &pad in pads {
        for q in start..start + t {
            m.extend((0..tk).map(|k| k > q || k < pad));
        }
    }
    Tensor::from_data(TensorData::new(m, [pads.len(), 1, t, tk]), device)
}
