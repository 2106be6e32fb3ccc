//! Batched autoregressive generation with the KV cache.
//!
//! Prompts of different lengths are left-padded; each row gets its own position ids and a mask that
//! hides its padding, so a row's logits do not depend on the other rows of the batch. Tokens
//! are drawn on the device ([`Sampler`]) and fed to the next step there; the host reads them
//! back [`CHUNK`] steps at a time, so a decoder whose steps queue on the device (the `llama`
//! tool's CUDA graphs) runs them back to back instead of waiting for each token. A row that
//! stops inside a chunk has its later tokens dropped; all rows stopped ends the loop at the
//! chunk's end.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::Serialize;

use crate::attention::AttentionMask;
use crate::decode::{Decoder, EagerDecoder, StepInput, StepTokens};
use crate::error::GenerateError;
use crate::model::Llama;
use crate::sampler::{Sampler, Sampling};

/// Steps decoded between two reads of the drawn tokens: each read waits for the device, and
/// up to `CHUNK - 1` steps after every row has stopped are wasted.
pub const CHUNK: usize = 16;

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
    generate_timed(model, prompts, sampling, decoder).map(|(out, _)| out)
}

/// Where a [`generate_timed`] call's time went (wall clock, each part ending with a read of the
/// drawn tokens, so it includes the device's work).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GenerateTimes {
    /// The prompts' pass and the first token's draw.
    pub prompt_s: f64,
    /// The decode steps after it.
    pub decode_s: f64,
    /// Decode steps run (each one token for every row of the batch, stopped rows included).
    pub decode_steps: usize,
}

impl GenerateTimes {
    /// Mean seconds per decode step, `None` without steps.
    pub fn step_s(&self) -> Option<f64> {
        (self.decode_steps > 0).then(|| self.decode_s / self.decode_steps as f64)
    }
}

/// [`generate_with`], also returning where the time went.
pub fn generate_timed<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    sampling: &Sampling,
    decoder: &mut dyn Decoder<B>,
) -> Result<(Vec<Vec<u32>>, GenerateTimes), GenerateError> {
    let start = Instant::now();
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
    let mut times = GenerateTimes::default();
    if sampling.max_new_tokens == 0 {
        return Ok((out, times));
    }
    let device = model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let pads: Vec<usize> = prompts.iter().map(|p| l - p.len()).collect();
    let padded = pads.iter().any(|&p| p > 0);
    let mut cache = model.new_cache(b, l + sampling.max_new_tokens, &device);

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
    let t = hidden.dims()[1];
    let logits = model
        .logits(hidden.narrow(1, t - 1, 1))
        .squeeze_dim::<2>(1)
        .cast(burn::tensor::DType::F32);

    let sampler = Sampler::new(sampling, b, sampling.max_new_tokens, &device);
    let mut next = sampler.sample(logits, 0);
    // The first token is read at once: the prompt's time ends there, and a row that stops at
    // its first token is known before any step.
    let mut drawn = vec![next.clone()];
    let mut done = vec![false; b];
    let all_done = read_back(&mut drawn, &mut out, &mut done, sampling);
    times.prompt_s = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    for step in 1..sampling.max_new_tokens {
        if all_done || drawn.len() == CHUNK && read_back(&mut drawn, &mut out, &mut done, sampling)
        {
            break;
        }
        times.decode_steps += 1;
        let input = StepInput {
            tokens: StepTokens::Device(next),
            pads: &pads,
            cur: l + step - 1,
        };
        let logits = decoder.step(model, &mut cache, input);
        next = sampler.sample(logits, step);
        drawn.push(next.clone());
    }
    if !drawn.is_empty() {
        read_back(&mut drawn, &mut out, &mut done, sampling);
    }
    times.decode_s = decode_start.elapsed().as_secs_f64();
    Ok((out, times))
}

/// Appends the `drawn` tokens (one `[batch, 1]` tensor per step, emptied) to the rows not yet
/// stopped, in one read from the device; whether every row has stopped.
fn read_back<B: Backend>(
    drawn: &mut Vec<Tensor<B, 2, Int>>,
    out: &mut [Vec<u32>],
    done: &mut [bool],
    sampling: &Sampling,
) -> bool {
    let steps = drawn.len();
    let ids: Vec<i64> = Tensor::cat(std::mem::take(drawn), 1)
        .into_data()
        .convert::<i64>()
        .into_vec()
        .expect("converted to i64");
    for (r, row) in ids.chunks(steps).enumerate() {
        for &id in row {
            if done[r] {
                break;
            }
            let tok = id as u32;
            out[r].push(tok);
            done[r] = sampling.stop_tokens.contains(&tok);
        }
    }
    done.iter().all(|&d| d)
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
