//! The training loop: gradient accumulation, global-norm clipping, the warmup-cosine schedule,
//! periodic validation, atomic checkpoints and exact resumption.
//!
//! Everything a step depends on is a function of the step number (the batch is
//! `dataset.batch(step · accum + k)`, the learning rate is `lr_at(step)`) or is in the checkpoint
//! (weights, both AdamW states), so a resumed run repeats the uninterrupted one bit for bit.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::data::dataloader::batcher::Batcher;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, Tensor};
use llama_data::Manifest;
use llama_data::dataset::PackedDataset;
use llama_model::{Llama, LlamaConfig, Precision, save_native, write_dir_atomically};
use serde::{Deserialize, Serialize};

use super::config::RunConfig;
use super::metrics::{MetricRow, MetricsLog, RunState, Status};
use super::optim::LlamaOptimizer;
use super::schedule::lr_at;
use crate::backend::BackendJob;
use crate::batcher::{SequenceBatcher, TokenBatch};
use crate::plot::{Series, line_plot};

/// `llama train`: runs (or resumes) one training run into `out`.
pub struct TrainJob {
    pub config: RunConfig,
    pub out: PathBuf,
    pub resume: bool,
    /// No progress output.
    pub quiet: bool,
    /// Stop after this step as if the process were killed there (status stays `running`; for
    /// testing resumption).
    pub stop_after: Option<u64>,
}

/// What the run ended with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub status: Status,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    tokens: u64,
    elapsed_s: f64,
}

impl BackendJob for TrainJob {
    type Output = Result<TrainSummary>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<TrainSummary> {
        train::<B>(&self, &device)
    }
}

/// Burn draws initial weights lazily, from one process-wide generator, when a parameter is first
/// used: two models built in one process would interleave their draws. Seeding and touching every
/// parameter under this lock makes initialisation a function of the seed alone.
static INIT: Mutex<()> = Mutex::new(());

struct Touch;
impl<B: Backend> ModuleVisitor<B> for Touch {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// A model initialised from `seed` alone.
pub fn init_model<B: Backend>(
    cfg: &LlamaConfig,
    seed: u64,
    device: &B::Device,
) -> Result<Llama<B>> {
    init_seeded(cfg, seed, device, |model| model)
}

/// [`init_model`] stored for inference in `precision` ([`Llama::with_inference_weights`]), each
/// projection drawn in f32 and cast before the next is drawn: the most memory it takes is the
/// model in the compute dtype and one f32 matrix, not the whole model in f32 first (`llama-33b`
/// in f32 is 130 GB and `llama-65b` 261 GB, which no single GPU holds; in bf16 65 and 130 GB).
/// The weights are drawn in another order than [`init_model`]'s, so they differ from its.
pub fn init_inference_model<B: Backend>(
    cfg: &LlamaConfig,
    seed: u64,
    device: &B::Device,
    precision: Precision,
) -> Result<Llama<B>> {
    // `with_inference_weights` maps each projection's lazy parameter: drawn, then cast at once.
    init_seeded(cfg, seed, device, |model| {
        model.with_precision(precision).with_inference_weights()
    })
}

/// A new `cfg` model passed through `prepare` (which may draw some of its lazy parameters), then
/// every parameter drawn, all under [`INIT`] after seeding with `seed`.
fn init_seeded<B: Backend>(
    cfg: &LlamaConfig,
    seed: u64,
    device: &B::Device,
    prepare: impl FnOnce(Llama<B>) -> Llama<B>,
) -> Result<Llama<B>> {
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    B::seed(device, seed);
    let model = prepare(cfg.init::<B>(device)?);
    model.visit(&mut Touch);
    Ok(model)
}

fn checkpoint_dirs(out: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(out.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

fn train<B: AutodiffBackend>(job: &TrainJob, device: &B::Device) -> Result<TrainSummary> {
    let run = &job.config;
    let out = &job.out;
    run.train.precision.check::<B>(device)?;
    let dataset = &run.data.dataset;
    let manifest = Manifest::load(dataset)?;
    let cfg = run.model_config(manifest.tokenizer.vocab_size)?;
    let accum = run.accumulation()?;
    let t = &run.train;
    let seq = run.data.seq_len;
    let micro = t.micro_batch;
    let samples = t.steps * (accum * micro) as u64;
    let train_ds = PackedDataset::train(dataset, seq, Some(samples))?;
    let valid_ds = PackedDataset::validation(dataset, seq).ok();
    let params = cfg.param_counts().total;

    let latest = checkpoint_dirs(out).pop();
    if out.join("status.json").exists() && !job.resume {
        bail!(
            "{} already holds a run (pass --resume to continue it)",
            out.display()
        );
    }
    std::fs::create_dir_all(out.join("checkpoints"))
        .with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("config.toml"), toml::to_string(run)?)?;
    std::fs::write(out.join("model.json"), cfg.to_json())?;

    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let mut model: Llama<B> = init_model(&cfg, t.seed, device)?;
    let (mut step, mut tokens, mut elapsed0) = (0, 0, 0.0);
    // The optimiser's groups are parameter ids, which loading a checkpoint replaces: build it
    // from the model as loaded.
    let mut optim = match (job.resume, &latest) {
        (true, Some((_, dir))) => {
            let text = std::fs::read_to_string(dir.join("state.json"))?;
            let state: CheckpointState = serde_json::from_str(&text)?;
            model = model
                .load_file(dir.join("model"), &recorder, device)
                .with_context(|| format!("loading {}", dir.display()))?;
            (step, tokens, elapsed0) = (state.step, state.tokens, state.elapsed_s);
            LlamaOptimizer::new(&run.optim, &model)?.load(dir, device)?
        }
        _ => LlamaOptimizer::new(&run.optim, &model)?,
    };
    // The compute precision is a runtime choice, not part of the weights: set it after loading.
    let mut model = model.with_precision(t.precision);
    let mut log = MetricsLog::open(out, job.resume.then_some(step))?;
    let mut status = Status {
        state: RunState::Running,
        step,
        steps: t.steps,
        message: format!(
            "training {} ({params} parameters, {} compute)",
            run.name, t.precision
        ),
        final_val_loss: None,
        best_val_loss: log.rows.iter().filter_map(|r| r.val_loss).reduce(f64::min),
        tokens_per_s: None,
        params,
    };
    status.write(out)?;

    // indicatif rather than burn-train's TUI: in burn-train 0.21 the TUI's render thread polls its
    // channel with `try_recv` in a loop without blocking (renderer/tui/renderer.rs), which keeps a
    // whole core busy — half of a 2-core laptop's training throughput — and quitting it panics
    // the training thread instead of letting us checkpoint.
    let progress = (!job.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(t.steps).with_position(step);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps {msg} [{elapsed}<{eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let say = |line: String| match &progress {
        Some(bar) => bar.set_message(line),
        None if !job.quiet => eprintln!("{line}"),
        None => {}
    };

    let started = Instant::now();
    let mut window = (Instant::now(), tokens);
    let tokens_per_step = (accum * micro * seq) as u64;
    while step < t.steps {
        let lr = lr_at(
            step,
            t.steps,
            run.optim.lr,
            run.optim.warmup_steps,
            run.optim.min_lr_ratio,
        );
        let mut acc = GradientsAccumulator::<Llama<B>>::new();
        // Loss and norm stay on the device until the step is queued: reading them earlier would
        // make the GPU idle while the host queues the next pass.
        let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
        for k in 0..accum {
            let windows = train_ds.batch(step * accum as u64 + k as u64, micro);
            let batch: TokenBatch<B> = SequenceBatcher.batch(windows, device);
            let loss = model.loss(batch.tokens);
            let value = loss.clone().inner().cast(DType::F32);
            loss_sum = Some(match loss_sum {
                Some(s) => s + value,
                None => value,
            });
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if accum > 1 {
                grads = super::optim::grads_to_f32(&model, grads);
            }
            acc.accumulate(&model, grads);
        }
        // Averaged over the micro-batches, clipped as torch.nn.utils.clip_grad_norm_.
        let scale = 1.0 / accum as f64;
        let clip = run.optim.grad_clip;
        let (next, norm) = optim.step(lr, model, acc.grads(), scale, clip, device);
        let loss = loss_sum.map_or(f64::NAN, |s| s.into_scalar().elem::<f64>()) / accum as f64;
        let norm = norm.into_scalar().elem::<f64>();
        let exploded = t.diverge_grad_norm.is_some_and(|limit| norm > limit);
        if !loss.is_finite() || !norm.is_finite() || exploded {
            // The updated model is dropped: nothing of this step is saved.
            status.state = RunState::Diverged;
            status.step = step;
            status.message = format!("diverged at step {step}: loss {loss}, gradient norm {norm}");
            status.write(out)?;
            if let Some(bar) = &progress {
                bar.abandon();
            }
            return Ok(TrainSummary {
                status,
                out: out.clone(),
            });
        }
        model = next;
        step += 1;
        tokens += tokens_per_step;
        if let Some(bar) = &progress {
            bar.set_position(step);
        }

        let last = step == t.steps;
        let elapsed = elapsed0 + started.elapsed().as_secs_f64();
        let mut row = MetricRow {
            step,
            tokens,
            elapsed_s: elapsed,
            ..MetricRow::default()
        };
        if step % t.log_every.max(1) == 0 || last {
            let dt = window.0.elapsed().as_secs_f64();
            let tps = (tokens - window.1) as f64 / dt.max(1e-9);
            window = (Instant::now(), tokens);
            row.train_loss = Some(loss);
            row.lr = Some(lr);
            row.grad_norm = Some(norm);
            row.tokens_per_s = Some(tps);
            row.mfu = t.peak_flops.map(|p| tps * cfg.flops_per_token() as f64 / p);
            status.tokens_per_s = Some(tps);
            say(format!(
                "step {step} loss {loss:.4} lr {lr:.2e} |g| {norm:.3} {tps:.0} tok/s"
            ));
        }
        if let Some(v) = &valid_ds
            && ((t.eval_every > 0 && step % t.eval_every == 0) || last)
        {
            let val = evaluate(&model.valid(), v, micro, t.eval_batches, device);
            row.val_loss = Some(val);
            row.val_ppl = Some(val.exp());
            status.final_val_loss = Some(val);
            status.best_val_loss = Some(status.best_val_loss.map_or(val, |b| b.min(val)));
            say(format!(
                "step {step} validation loss {val:.4} (perplexity {:.2})",
                val.exp()
            ));
        }
        if row.train_loss.is_some() || row.val_loss.is_some() {
            log.push(row)?;
        }
        if (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || last {
            if let Err(e) = plot_losses(out, &log.rows) {
                say(format!("warning: no loss plot: {e:#}"));
            }
            save_checkpoint(
                out,
                &model,
                &optim,
                &CheckpointState {
                    step,
                    tokens,
                    elapsed_s: elapsed,
                },
                t.keep_checkpoints,
            )?;
        }
        status.step = step;
        status.write(out)?;
        if job.stop_after == Some(step) {
            return Ok(TrainSummary {
                status,
                out: out.clone(),
            });
        }
    }
    if let Some(bar) = &progress {
        bar.finish();
    }
    let final_dir = out.join("model");
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    save_native(&model.valid(), &final_dir)?;
    let tok = dataset.join(llama_data::manifest::TOKENIZER_FILE);
    if tok.is_file() {
        std::fs::copy(&tok, out.join("tokenizer.json"))?;
    }
    status.state = RunState::Finished;
    status.step = step;
    status.message = format!("finished {} steps", t.steps);
    status.write(out)?;
    Ok(TrainSummary {
        status,
        out: out.clone(),
    })
}

/// `loss.png` and `loss.svg`: train and validation loss against tokens seen.
pub fn plot_losses(out: &Path, rows: &[MetricRow]) -> Result<()> {
    let curve = |f: fn(&MetricRow) -> Option<f64>| {
        rows.iter()
            .filter_map(|r| f(r).map(|y| (r.tokens as f64, y)))
            .collect()
    };
    let series = [
        Series {
            name: "train".into(),
            points: curve(|r| r.train_loss),
        },
        Series {
            name: "validation".into(),
            points: curve(|r| r.val_loss),
        },
    ];
    line_plot(
        &out.join("loss"),
        "loss",
        "tokens",
        "cross-entropy (nats)",
        &series,
    )
}

/// Mean validation loss over the first `batches` batches of the validation split.
pub fn evaluate<B: Backend>(
    model: &Llama<B>,
    data: &PackedDataset,
    micro: usize,
    batches: usize,
    device: &B::Device,
) -> f64 {
    let n = (data.len() as usize / micro).clamp(1, batches.max(1));
    let mut sum = 0.0;
    for i in 0..n {
        let windows = data.batch(i as u64, micro);
        let batch: TokenBatch<B> = SequenceBatcher.batch(windows, device);
        sum += model.loss(batch.tokens).into_scalar().elem::<f64>();
    }
    sum / n as f64
}

/// Writes `checkpoints/step-N` atomically (a `.partial` folder renamed when complete) and keeps
/// the newest `keep`.
fn save_checkpoint<B: AutodiffBackend>(
    out: &Path,
    model: &Llama<B>,
    optim: &LlamaOptimizer<Llama<B>, B>,
    state: &CheckpointState,
    keep: usize,
) -> Result<()> {
    let target = out
        .join("checkpoints")
        .join(format!("step-{:08}", state.step));
    // A checkpoint of the same step from before a resume is replaced.
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    write_dir_atomically(&target, |tmp| {
        model
            .clone()
            .save_file(tmp.join("model"), &recorder)
            .map_err(std::io::Error::other)?;
        optim.save(tmp).map_err(std::io::Error::other)?;
        std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)
    })?;
    let all = checkpoint_dirs(out);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old)?;
    }
    Ok(())
}
