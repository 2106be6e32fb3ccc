//! `llama bench --preset NAME --mode train|prefill|decode`: the median time of one step on any
//! compiled-in device, with tokens/s, MFU against a named peak and peak memory.
//!
//! - train: forward, backward, global-norm clipping and the AdamW step of `llama train`, on
//!   random tokens `[batch, seq + 1]`;
//! - prefill: a forward pass over `[batch, seq]` (no autodiff);
//! - decode: one KV-cached token per row after a `seq`-token prompt (tokens/s = batch / step).
//!
//! Every timed step ends with `B::sync`, so queued GPU work is counted. Warm-up steps (kernel
//! compilation, autotuning) are run first and not timed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, ensure};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use llama_model::{
    AttentionMask, Llama, LlamaConfig, Precision, Sampling, StepInput, StepTokens, generate_timed,
    generate_with,
};
use serde::Serialize;

use crate::backend::BackendJob;
use crate::gpu_trace::{GpuTraceSummary, Recorder};
use crate::host_profile::HostProfile;
use crate::train::config::OptimConfig;
use crate::train::optim::LlamaOptimizer;
use crate::train::{init_inference_model, init_model};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BenchMode {
    Train,
    Prefill,
    Decode,
    /// `generate` as `llama generate` runs it: tokens drawn on the device ([`BenchSampling`],
    /// by default temperature 0.8 with top-p 0.95) and fed to the next step there, read back
    /// every `generate::CHUNK` steps. The step is the mean over one timed generation of `iters`
    /// decode steps, after `warmup` untimed generations of the same length.
    Generate,
}

/// `--mode generate`'s draw (`--temperature`, `--top-k`, `--top-p`); the default is a common
/// setting for open-ended text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BenchSampling {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
}

impl Default for BenchSampling {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: None,
            top_p: Some(0.95),
        }
    }
}

pub struct BenchJob {
    pub name: String,
    /// The `--device` it runs on (`ndarray`, `flex`, `cuda:0`, ...), for the report.
    pub backend: String,
    pub config: LlamaConfig,
    pub mode: BenchMode,
    pub batch: usize,
    pub seq: usize,
    pub precision: Precision,
    pub warmup: usize,
    pub iters: usize,
    /// The peak FLOP/s MFU is computed against (named in the output).
    pub peak_flops: Option<f64>,
    /// Decode: the memory bandwidth (bytes/s) the step's fewest bytes are judged against.
    pub peak_bandwidth: Option<f64>,
    /// Train: also time forward, backward and optimiser apart (`--phases`).
    pub phases: bool,
    /// Sample the host's threads during the timed steps into this flame graph (`--profile-host`).
    pub profile_host: Option<PathBuf>,
    /// Record the GPU's work during the timed steps into this Chrome trace (`--trace-gpu`).
    pub trace_gpu: Option<PathBuf>,
    /// Generate: how tokens are drawn.
    pub sampling: BenchSampling,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub params: u64,
    pub mode: BenchMode,
    pub device: String,
    pub precision: Precision,
    pub batch: usize,
    pub seq: usize,
    pub median_step_s: f64,
    pub steps_timed: usize,
    /// Each untimed warm-up step, in seconds.
    pub warmup_steps_s: Vec<f64>,
    pub tokens_per_s: f64,
    /// Training or forward FLOPs per token (6·N + attention, or a third of it) × tokens/s / peak.
    pub mfu: Option<f64>,
    pub peak_flops: Option<f64>,
    /// Decode: the fewest bytes a step must move (`LlamaConfig::decode_bytes`: every weight
    /// matrix once, the cache at the median timed step's length, in the run's dtype).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_bytes: Option<u64>,
    /// Decode: `decode_bytes / median_step_s / peak_bandwidth`, the memory-bandwidth utilisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mbu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_bandwidth: Option<f64>,
    /// Decode: seconds per step over `iters` further steps queued back to back with one sync at
    /// the end, as a generation loop that keeps its tokens on the device runs them (the host
    /// prepares and launches a step while the device runs the one before); `median_step_s`
    /// waits for every step. Only where the model's context has room for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipelined_step_s: Option<f64>,
    /// Decode: [`Self::mbu`] of the pipelined steps (the cache at their middle step's length).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipelined_mbu: Option<f64>,
    /// Peak resident memory of the process (CPU backends; a GPU's own memory is not in it).
    pub peak_rss_bytes: Option<u64>,
    /// Training: the loss of the last timed step (fixed seeds, so a check that two runs computed
    /// the same steps).
    pub final_loss: Option<f64>,
    /// Decode: how the steps ran (`eager`, or `cuda-graph` on libtorch CUDA; `LLAMA_DECODE`).
    pub decoder: Option<String>,
    /// Generate: the timed generation's prompt pass and first draw, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_s: Option<f64>,
    /// Generate: how the tokens were drawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<BenchSampling>,
    /// Train with `--phases`: where a step goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<TrainPhases>,
    /// With `--profile-host`: CPU-time samples taken (at ~1 kHz per busy thread) in the timed steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_profile_samples: Option<u64>,
    /// With `--trace-gpu`: per step, how long the GPU was busy and idle (CUPTI's records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_trace: Option<GpuTraceSummary>,
}

/// Median seconds of each part of a training step, from `iters` further steps with a device
/// synchronisation after each part (so the parts cannot overlap and their sum is at least the
/// plain step; `median_step_s` comes from the unsynchronised steps before them).
#[derive(Debug, Clone, Serialize)]
pub struct TrainPhases {
    /// The loss: forward pass and cross-entropy.
    pub forward_s: f64,
    /// `loss.backward()` and collecting the parameters' gradients.
    pub backward_s: f64,
    /// Global-norm clipping and the AdamW update.
    pub optimizer_s: f64,
    /// Host time of each part until its call returned, before the sync (`[forward, backward,
    /// optimiser]`): a part whose host time is close to its whole time is bound by dispatch.
    pub host_s: [f64; 3],
}

fn random_tokens<B: Backend>(
    batch: usize,
    len: usize,
    vocab: usize,
    seed: u64,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let ids = random_ids(batch * len, vocab, seed);
    Tensor::from_data(TensorData::new(ids, [batch, len]), device)
}

/// `n` token ids below `vocab` from a fixed LCG (the same ids for the same seed everywhere).
/// The middle of `v` once sorted (the upper middle of an even count; 0 for none): `llama
/// bench`'s medians, and `--trace-gpu`'s.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<i64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as i64
        })
        .collect()
}

/// Peak resident set size of this process.
fn peak_rss() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct we own.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            return Some(u.ru_maxrss as u64 * 1024);
        }
    }
    None
}

/// What [`time_steps`] measured.
struct Timed<D> {
    median: f64,
    /// Each warm-up step (on a GPU the first holds kernel compilation and autotuning: the cold
    /// start a user waits through).
    warmup: Vec<f64>,
    /// The last timed step's output.
    last: Option<D>,
    /// Samples of the host profile over the timed steps, when one was asked for.
    profile_samples: Option<u64>,
    /// The GPU trace's summary, when one was asked for.
    gpu: Option<GpuTraceSummary>,
}

impl<D> Timed<D> {
    /// Median, warm-up steps, profile samples and the GPU trace's summary: what the report keeps.
    fn summary(&self) -> (f64, Vec<f64>, Option<u64>, Option<GpuTraceSummary>) {
        (
            self.median,
            self.warmup.clone(),
            self.profile_samples,
            self.gpu.clone(),
        )
    }
}

/// Where [`time_steps`] writes its profiles of the timed steps.
#[derive(Clone, Copy, Default)]
struct Profiles<'a> {
    host: Option<&'a Path>,
    gpu: Option<&'a Path>,
}

/// Runs `step` `warmup` times untimed, then `iters` times timed (each followed by a sync), with
/// the host sampled and the GPU's work recorded over the timed steps only.
fn time_steps<D>(
    warmup: usize,
    iters: usize,
    sync: impl Fn(),
    profiles: Profiles,
    mut step: impl FnMut(usize) -> D,
) -> Result<Timed<D>> {
    let warm: Vec<f64> = (0..warmup)
        .map(|i| {
            let t = Instant::now();
            let _ = step(i);
            sync();
            let s = t.elapsed().as_secs_f64();
            eprintln!("warm-up step {}: {s:.3} s", i + 1);
            s
        })
        .collect();
    let mut recorder = profiles.gpu.map(Recorder::start).transpose()?;
    let profiler = profiles.host.map(HostProfile::start).transpose()?;
    let mut last = None;
    let mut times: Vec<f64> = (0..iters)
        .map(|i| {
            if let Some(r) = recorder.as_mut() {
                r.step_start();
            }
            let t = Instant::now();
            last = Some(step(warmup + i));
            sync();
            let s = t.elapsed().as_secs_f64();
            if let Some(r) = recorder.as_mut() {
                r.step_end();
            }
            s
        })
        .collect();
    let profile_samples = profiler.map(HostProfile::finish).transpose()?;
    let gpu = recorder.map(Recorder::finish).transpose()?;
    times.sort_by(f64::total_cmp);
    Ok(Timed {
        median: times[times.len() / 2],
        warmup: warm,
        last,
        profile_samples,
        gpu,
    })
}

/// `iters` training steps with a sync after the forward pass, the backward pass and the
/// optimiser step, each part timed on its own: the medians.
fn time_phases<B: AutodiffBackend>(
    mut model: Llama<B>,
    optim: &mut LlamaOptimizer<Llama<B>, B>,
    iters: usize,
    sync: &impl Fn(),
    tokens: impl Fn(usize) -> Tensor<B, 2, Int>,
    device: &B::Device,
) -> (Llama<B>, TrainPhases) {
    let (mut parts, mut host) = ([vec![], vec![], vec![]], [vec![], vec![], vec![]]);
    let mut time = |i: usize, t: Instant| {
        host[i].push(t.elapsed().as_secs_f64());
        sync();
        parts[i].push(t.elapsed().as_secs_f64());
    };
    for i in 0..iters {
        let batch = tokens(i);
        sync();
        let t = Instant::now();
        let loss = model.loss(batch);
        time(0, t);
        let t = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        time(1, t);
        let t = Instant::now();
        model = optim.step(3e-4, model, grads, 1.0, Some(1.0), device).0;
        time(2, t);
    }
    let [forward_s, backward_s, optimizer_s] = parts.map(median);
    let phases = TrainPhases {
        forward_s,
        backward_s,
        optimizer_s,
        host_s: host.map(median),
    };
    (model, phases)
}

impl BackendJob for BenchJob {
    type Output = Result<BenchReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<BenchReport> {
        let cfg = &self.config;
        self.precision.check::<B>(&device)?;
        ensure!(
            self.batch > 0 && self.seq > 0 && self.iters > 0,
            "batch, seq and iters must be positive"
        );
        ensure!(
            self.seq <= cfg.max_seq_len,
            "seq {} exceeds the model's max_seq_len {}",
            self.seq,
            cfg.max_seq_len
        );
        let sync = || {
            let _ = B::sync(&device);
        };
        let vocab = cfg.vocab_size;
        let (b, t) = (self.batch, self.seq);
        let mut final_loss = None;
        let mut decoder_name = None;
        let mut phases = None;
        let mut pipelined = None;
        let mut prompt_s = None;
        let profiles = Profiles {
            host: self.profile_host.as_deref(),
            gpu: self.trace_gpu.as_deref(),
        };

        let ((median, warmup_steps_s, host_profile_samples, gpu_trace), tokens, flops_per_token) =
            match self.mode {
                BenchMode::Train => {
                    let model: Llama<B> =
                        init_model(cfg, 0, &device)?.with_precision(self.precision);
                    let optim_cfg = OptimConfig::default();
                    let mut optim = LlamaOptimizer::new(&optim_cfg, &model)?;
                    // Moved in and out of the step (as `llama train` does), never cloned: a second
                    // handle on the parameters would stop the optimiser updating them in place.
                    let mut slot = Some(model);
                    let timed = time_steps(self.warmup, self.iters, sync, profiles, |i| {
                        let model = slot.take().expect("the model is put back after every step");
                        let tokens = random_tokens::<B>(b, t + 1, vocab, i as u64, &device);
                        let loss = model.loss(tokens);
                        let grads = GradientsParams::from_grads(loss.backward(), &model);
                        // Clipping on the device, as `llama train`: nothing is read back in a step.
                        let (model, _norm) =
                            optim.step(3e-4, model, grads, 1.0, Some(1.0), &device);
                        slot = Some(model);
                        loss.inner()
                    })?;
                    // Read after the timing: seeds are fixed, so two builds or knob settings that
                    // compute the same step report the same loss (up to rounding).
                    final_loss = timed
                        .last
                        .as_ref()
                        .map(|l| l.clone().into_scalar().elem::<f64>());
                    if self.phases {
                        let model = slot.take().expect("the model is put back after every step");
                        let (model, p) = time_phases(
                            model,
                            &mut optim,
                            self.iters,
                            &sync,
                            |i| {
                                random_tokens::<B>(
                                    b,
                                    t + 1,
                                    vocab,
                                    (self.warmup + self.iters + i) as u64,
                                    &device,
                                )
                            },
                            &device,
                        );
                        slot = Some(model);
                        phases = Some(p);
                    }
                    drop(slot);
                    (timed.summary(), b * t, cfg.flops_per_token() as f64)
                }
                BenchMode::Prefill => {
                    let model =
                        init_inference_model::<B::InnerBackend>(cfg, 0, &device, self.precision)?;
                    let timed = time_steps(self.warmup, self.iters, sync, profiles, |i| {
                        let tokens =
                            random_tokens::<B::InnerBackend>(b, t, vocab, i as u64, &device);
                        model.forward(tokens)
                    })?;
                    (timed.summary(), b * t, cfg.flops_per_token() as f64 / 3.0)
                }
                BenchMode::Decode => {
                    ensure!(
                        t + self.warmup + self.iters <= cfg.max_seq_len,
                        "decode needs room for {} tokens after a {t}-token prompt (max_seq_len {})",
                        self.warmup + self.iters,
                        cfg.max_seq_len
                    );
                    let model =
                        init_inference_model::<B::InnerBackend>(cfg, 0, &device, self.precision)?;
                    // Room for the pipelined steps after the timed ones, where the context has it.
                    let room = t + self.warmup + 2 * self.iters <= cfg.max_seq_len;
                    let capacity = t + self.warmup + self.iters * if room { 2 } else { 1 };
                    let mut cache = model.new_cache(b, capacity, &device);
                    let prompt = random_tokens::<B::InnerBackend>(b, t, vocab, 0, &device);
                    let pos = Llama::<B::InnerBackend>::default_positions(b, t, &device);
                    let _ = model.forward_hidden(
                        prompt,
                        &pos,
                        &AttentionMask::Causal,
                        Some(&mut cache),
                    );
                    sync();
                    let pads = vec![0; b];
                    let mut decoder = crate::decoder::decoder_for::<B::InnerBackend>(&device)?;
                    decoder_name = Some(decoder.name().to_string());
                    // Step `i` after the prompt (warm-up, timed, then pipelined).
                    let mut step = |i: usize| {
                        let tokens = random_ids(b, vocab, i as u64);
                        let input = StepInput {
                            tokens: StepTokens::Host(&tokens),
                            pads: &pads,
                            cur: t + i,
                        };
                        decoder.step(&model, &mut cache, input)
                    };
                    let timed = time_steps(self.warmup, self.iters, sync, profiles, &mut step)?;
                    if room {
                        let first = self.warmup + self.iters;
                        let start = Instant::now();
                        for i in first..first + self.iters {
                            let _ = step(i);
                        }
                        sync();
                        pipelined = Some(start.elapsed().as_secs_f64() / self.iters as f64);
                    }
                    (timed.summary(), b, cfg.flops_per_token() as f64 / 3.0)
                }
                BenchMode::Generate => {
                    ensure!(
                        t + self.iters < cfg.max_seq_len,
                        "generate needs room for {} tokens after a {t}-token prompt (max_seq_len {})",
                        self.iters + 1,
                        cfg.max_seq_len
                    );
                    let model =
                        init_inference_model::<B::InnerBackend>(cfg, 0, &device, self.precision)?;
                    let prompts: Vec<Vec<u32>> = random_ids(b * t, vocab, 0)
                        .chunks(t)
                        .map(|row| row.iter().map(|&x| x as u32).collect())
                        .collect();
                    let BenchSampling {
                        temperature,
                        top_k,
                        top_p,
                    } = self.sampling;
                    let sampling = Sampling {
                        max_new_tokens: self.iters + 1,
                        temperature,
                        top_k,
                        top_p,
                        ..Default::default()
                    };
                    let mut decoder = crate::decoder::decoder_for::<B::InnerBackend>(&device)?;
                    decoder_name = Some(decoder.name().to_string());
                    // Same length warm-ups: the same cache capacity, so a recorded step is
                    // replayed, not recorded again, where the allocator returns the same memory.
                    let mut warm = Vec::new();
                    for i in 0..self.warmup {
                        let start = Instant::now();
                        generate_with(&model, &prompts, &sampling, decoder.as_mut())?;
                        warm.push(start.elapsed().as_secs_f64());
                        eprintln!("warm-up generation {}: {:.3} s", i + 1, warm[i]);
                    }
                    // The profiles' one window is the whole timed generation, prompt included.
                    let mut recorder = profiles.gpu.map(Recorder::start).transpose()?;
                    let profiler = profiles.host.map(HostProfile::start).transpose()?;
                    if let Some(r) = recorder.as_mut() {
                        r.step_start();
                    }
                    let (out, times) =
                        generate_timed(&model, &prompts, &sampling, decoder.as_mut())?;
                    if let Some(r) = recorder.as_mut() {
                        r.step_end();
                    }
                    let samples = profiler.map(HostProfile::finish).transpose()?;
                    let gpu = recorder.map(Recorder::finish).transpose()?;
                    ensure!(
                        out.iter().all(|r| r.len() == self.iters + 1),
                        "the generation stopped early"
                    );
                    prompt_s = Some(times.prompt_s);
                    let step = times.step_s().unwrap_or(0.0);
                    (
                        (step, warm, samples, gpu),
                        b,
                        cfg.flops_per_token() as f64 / 3.0,
                    )
                }
            };
        let tokens_per_s = tokens as f64 / median;
        // The median timed step is the middle one, `warmup + iters / 2` tokens after the prompt.
        // The pipelined steps' middle one is `iters` further.
        let bytes = match self.precision {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        };
        let decoding = matches!(self.mode, BenchMode::Decode | BenchMode::Generate);
        let decode_bytes_at = |len| decoding.then(|| cfg.decode_bytes(b, len, bytes, bytes));
        // Decode's median step is `warmup + iters / 2` tokens after the prompt, generate's mean
        // step `iters / 2`.
        let middle = match self.mode {
            BenchMode::Generate => t + self.iters / 2,
            _ => t + self.warmup + self.iters / 2,
        };
        let decode_bytes = decode_bytes_at(middle);
        let pipelined_bytes = decode_bytes_at(t + self.warmup + self.iters * 3 / 2);
        // The attention term at the benchmarked length, not the model's maximum.
        let at_seq = LlamaConfig {
            max_seq_len: t,
            ..cfg.clone()
        };
        let flops_per_token =
            flops_per_token * at_seq.flops_per_token() as f64 / cfg.flops_per_token() as f64;
        Ok(BenchReport {
            model: self.name,
            params: cfg.param_counts().total,
            mode: self.mode,
            device: format!("{} ({device:?})", self.backend),
            precision: self.precision,
            batch: b,
            seq: t,
            median_step_s: median,
            steps_timed: self.iters,
            warmup_steps_s,
            tokens_per_s,
            mfu: self.peak_flops.map(|p| tokens_per_s * flops_per_token / p),
            peak_flops: self.peak_flops,
            mbu: decode_bytes
                .zip(self.peak_bandwidth)
                .map(|(bytes, bw)| bytes as f64 / median / bw),
            decode_bytes,
            peak_bandwidth: self.peak_bandwidth.filter(|_| decode_bytes.is_some()),
            pipelined_step_s: pipelined,
            pipelined_mbu: pipelined_bytes
                .zip(self.peak_bandwidth)
                .zip(pipelined)
                .map(|((bytes, bw), step)| bytes as f64 / step / bw),
            peak_rss_bytes: peak_rss(),
            final_loss,
            decoder: decoder_name,
            prompt_s,
            sampling: (self.mode == BenchMode::Generate).then_some(self.sampling),
            phases,
            host_profile_samples,
            gpu_trace,
        })
    }
}
