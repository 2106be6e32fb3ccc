//! `llama check`: do the backends compute the same model?
//!
//! The same weights (initialised once on the reference device, moved as bytes) and the same tokens
//! go through every device: full-forward logits, KV-cached decoding logits, the loss, and the
//! gradient of every parameter, and the tokens `generate` draws from the first half of each row
//! (greedy, then sampled with the device sampler). Each device is compared with the reference.

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use llama_model::{AttentionMask, Llama, LlamaConfig, Sampling, generate};
use serde::Serialize;

use crate::backend::{BackendJob, DeviceSpec};

/// Weights of a freshly initialised model, seeded, made on one device.
struct InitJob {
    config: LlamaConfig,
    seed: u64,
}

impl BackendJob for InitJob {
    type Output = Result<Vec<u8>>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Vec<u8>> {
        B::seed(&device, self.seed);
        let model = self.config.init::<B::InnerBackend>(&device)?;
        Ok(model.to_bytes()?)
    }
}

/// What one device computes for the probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub backend: String,
    pub logits: Vec<f32>,
    pub cached_logits: Vec<f32>,
    pub loss: f32,
    pub grads: Vec<f32>,
    /// Each row's generated tokens, greedy then sampled.
    pub generated: Vec<Vec<u32>>,
}

struct ProbeJob {
    config: LlamaConfig,
    weights: Vec<u8>,
    /// `[batch, seq + 1]`
    tokens: Vec<i64>,
    batch: usize,
    seq: usize,
    seed: u64,
}

/// Tokens each row generates in the probe.
const GENERATED: usize = 8;

struct GradCollector<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradCollector<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.shape().num_elements();
        match param.val().grad(self.grads) {
            Some(g) => self.out.extend(to_vec(g)),
            // A parameter without a gradient shows as NaNs, so it can never compare equal.
            None => self.out.extend(std::iter::repeat_n(f32::NAN, n)),
        }
    }
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32")
}

impl BackendJob for ProbeJob {
    type Output = Result<Probe>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Probe> {
        let (b, t) = (self.batch, self.seq);
        let model = Llama::<B>::from_bytes(&self.config, self.weights, &device)?;
        let all = Tensor::<B, 2, Int>::from_data(
            TensorData::new(self.tokens.clone(), [b, t + 1]),
            &device,
        );

        let loss = model.loss(all.clone());
        let loss_value = loss.clone().into_scalar().elem::<f32>();
        let grads = loss.backward();
        let mut collector = GradCollector::<B> {
            grads: &grads,
            out: Vec::new(),
        };
        model.visit(&mut collector);

        let inner = model.valid();
        let inputs = all.inner().narrow(1, 0, t);
        let logits = to_vec(inner.forward(inputs.clone()));

        // Prefill half, then decode one token at a time; reassemble in [batch, time, vocab] order.
        let v = self.config.vocab_size;
        let mut cache = inner.new_cache(b, t, &device);
        // The first half of each row: the cached pass's prefill and the generations' prompts.
        let prefill = (t / 2).max(1);
        let mut cached = vec![0f32; b * t * v];
        let mut start = 0;
        while start < t {
            let len = if start == 0 { prefill } else { 1 };
            let chunk = inputs.clone().narrow(1, start, len);
            let pos = Llama::<B::InnerBackend>::default_positions(b, len, &device)
                .add_scalar(start as i64);
            let mask = if start == 0 {
                AttentionMask::Causal
            } else {
                AttentionMask::Full
            };
            let h = inner.forward_hidden(chunk, &pos, &mask, Some(&mut cache));
            let out = to_vec(inner.logits(h));
            for r in 0..b {
                for j in 0..len {
                    let dst = (r * t + start + j) * v;
                    let src = (r * len + j) * v;
                    cached[dst..dst + v].copy_from_slice(&out[src..src + v]);
                }
            }
            start += len;
        }
        let prompts: Vec<Vec<u32>> = self
            .tokens
            .chunks(t + 1)
            .map(|row| row[..prefill].iter().map(|&x| x as u32).collect())
            .collect();
        let sampled = Sampling {
            max_new_tokens: GENERATED.min(self.config.max_seq_len - prefill),
            temperature: 0.9,
            top_k: Some((v / 2).max(1)),
            top_p: Some(0.9),
            seed: self.seed,
            ..Default::default()
        };
        let greedy = Sampling {
            temperature: 0.0,
            ..sampled.clone()
        };
        let mut generated = generate(&inner, &prompts, &greedy)?;
        generated.extend(generate(&inner, &prompts, &sampled)?);
        Ok(Probe {
            backend: B::name(&device),
            logits,
            cached_logits: cached,
            loss: loss_value,
            grads: collector.out,
            generated,
        })
    }
}

/// Largest absolute difference and that difference relative to the reference's largest magnitude.
pub fn diff(reference: &[f32], other: &[f32]) -> (f32, f32) {
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max = reference.iter().zip(other).fold(0f32, |m, (a, b)| {
        if (a - b).is_nan() {
            f32::NAN
        } else {
            m.max((a - b).abs())
        }
    });
    (max, max / scale.max(f32::MIN_POSITIVE))
}

/// One device compared with the reference.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub device: String,
    pub backend: String,
    /// Relative difference of the full-forward logits from the reference's.
    pub logits_rel: f32,
    pub logits_max_abs: f32,
    /// Relative difference of this device's KV-cached decoding from its own full forward.
    pub cached_vs_full_rel: f32,
    pub loss: f32,
    pub loss_abs_diff: f32,
    /// Relative difference of all parameter gradients (concatenated) from the reference's.
    pub grads_rel: f32,
    /// Generated tokens (greedy and sampled) that differ from the reference's, a missing or
    /// extra one counted as different.
    pub tokens_differ: usize,
}

/// Settings of a check.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub config: LlamaConfig,
    pub batch: usize,
    pub seq: usize,
    pub seed: u64,
}

/// Compares every device in `devices` with `reference` (the reference is the first row).
pub fn check(
    reference: DeviceSpec,
    devices: &[DeviceSpec],
    spec: &CheckSpec,
) -> Result<Vec<CheckRow>> {
    spec.config.validate()?;
    anyhow::ensure!(
        spec.seq >= 2 && spec.seq < spec.config.max_seq_len,
        "--seq must lie in 2..max_seq_len"
    );
    let weights = reference
        .run(InitJob {
            config: spec.config.clone(),
            seed: spec.seed,
        })?
        .with_context(|| format!("initialising on {reference}"))?;
    let mut s = spec.seed ^ 0x9E37_79B9_7F4A_7C15;
    let tokens: Vec<i64> = (0..spec.batch * (spec.seq + 1))
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % spec.config.vocab_size as u64) as i64
        })
        .collect();
    let probe = |d: DeviceSpec| -> Result<Probe> {
        d.run(ProbeJob {
            config: spec.config.clone(),
            weights: weights.clone(),
            tokens: tokens.clone(),
            batch: spec.batch,
            seq: spec.seq,
            seed: spec.seed,
        })?
        .with_context(|| format!("running the probe on {d}"))
    };
    let base = probe(reference)?;
    let row = |d: DeviceSpec, p: &Probe| {
        let (logits_max_abs, logits_rel) = diff(&base.logits, &p.logits);
        CheckRow {
            device: d.to_string(),
            backend: p.backend.clone(),
            logits_rel,
            logits_max_abs,
            cached_vs_full_rel: diff(&p.logits, &p.cached_logits).1,
            loss: p.loss,
            loss_abs_diff: (p.loss - base.loss).abs(),
            grads_rel: diff(&base.grads, &p.grads).1,
            tokens_differ: base
                .generated
                .iter()
                .zip(&p.generated)
                .map(|(a, b)| {
                    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
                    a.len().max(b.len()) - same
                })
                .sum(),
        }
    };
    let mut rows = vec![row(reference, &base)];
    for &d in devices {
        let p = probe(d)?;
        rows.push(row(d, &p));
    }
    Ok(rows)
}
