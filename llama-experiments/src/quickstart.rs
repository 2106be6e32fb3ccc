//! `llama quickstart`: the whole path on real public text, on the default device, in a few
//! minutes: sample corpus from PyPI → tokenizer → shards → train `tiny` → validation perplexity
//! and a generated sample. Steps already done in `dir` are reused.

use std::path::{Path, PathBuf};

use anyhow::Result;
use llama_data::{PrepareOptions, TokenizerTrainConfig};
use llama_model::Sampling;

use crate::backend::DeviceSpec;
use crate::data::{TrainingText, prepare_dataset, train_tokenizer_file};
use crate::generate::GenerateJob;
use crate::train::TrainJob;
use crate::train::config::{DataConfig, OptimConfig, RunConfig, TrainConfig};
use crate::train::metrics::{RunState, Status};

pub struct Quickstart {
    pub dir: PathBuf,
    pub steps: u64,
    /// A local copy of the sample wheel (else pip downloads it).
    pub wheel: Option<PathBuf>,
}

/// What the quickstart ends with.
pub struct QuickstartReport {
    pub val_loss: Option<f64>,
    pub sample: String,
    pub run: PathBuf,
}

/// The run config of the quickstart: `tiny`, 128-token windows, 2,048 tokens per step.
pub fn run_config(dataset: &Path, steps: u64) -> RunConfig {
    let mut model = toml::Table::new();
    model.insert("preset".into(), "tiny".into());
    RunConfig {
        name: "quickstart".into(),
        model,
        data: DataConfig {
            dataset: dataset.to_path_buf(),
            seq_len: 128,
        },
        optim: OptimConfig {
            lr: 2e-3,
            warmup_steps: (steps / 10).max(1),
            ..OptimConfig::default()
        },
        train: TrainConfig {
            steps,
            batch_tokens: 2048,
            micro_batch: 8,
            seed: 0,
            log_every: 10,
            eval_every: (steps / 4).max(1),
            eval_batches: 8,
            checkpoint_every: (steps / 4).max(1),
            keep_checkpoints: 1,
            diverge_grad_norm: Some(1e4),
            peak_flops: None,
            precision: llama_model::Precision::F32,
        },
    }
}

pub fn quickstart(device: DeviceSpec, q: &Quickstart) -> Result<QuickstartReport> {
    std::fs::create_dir_all(&q.dir)?;
    eprintln!("[1/5] sample corpus (gensim 4.4.0 wheel from PyPI, SHA-256 pinned)");
    let recipe = llama_data::sample::fetch_sample(&q.dir.join("sample"), q.wheel.as_deref())?;
    let tok = q.dir.join("tokenizer.json");
    if !tok.is_file() {
        eprintln!("[2/5] tokenizer: 8,000-piece BPE on the cleaned sample");
        let cfg = TokenizerTrainConfig {
            vocab_size: 8000,
            ..TokenizerTrainConfig::default()
        };
        train_tokenizer_file(&TrainingText::Recipe(recipe.clone()), &cfg, None, &tok)?;
    }
    let dataset = q.dir.join("dataset");
    if !dataset.join(llama_data::manifest::MANIFEST_FILE).is_file() {
        eprintln!("[3/5] token shards");
        let options = PrepareOptions {
            overwrite: true,
            quiet: true,
        };
        prepare_dataset(&recipe, &tok, &dataset, &options)?;
    }
    let run = q.dir.join("run");
    let finished =
        Status::read(&run).is_ok_and(|s| s.state == RunState::Finished && s.steps == q.steps);
    if !finished {
        eprintln!("[4/5] training `tiny` for {} steps on {device}", q.steps);
        if run.exists() {
            std::fs::remove_dir_all(&run)?;
        }
        let job = TrainJob {
            config: run_config(&dataset, q.steps),
            out: run.clone(),
            resume: false,
            quiet: false,
            stop_after: None,
        };
        let s = device.run(job)??;
        if s.status.state != RunState::Finished {
            anyhow::bail!("training did not finish: {}", s.status.message);
        }
    }
    let status = Status::read(&run)?;
    eprintln!("[5/5] generating");
    let sampling = Sampling {
        max_new_tokens: 40,
        temperature: 0.8,
        top_k: Some(40),
        top_p: None,
        seed: 0,
        stop_tokens: vec![],
    };
    let out = device.run(GenerateJob {
        checkpoint: run.join("model"),
        tokenizer: tok,
        prompts: vec!["The history of".into()],
        sampling,
        precision: llama_model::Precision::F32,
    })??;
    let sample = out
        .into_iter()
        .map(|g| format!("{}{}", g.prompt, g.text))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(QuickstartReport {
        val_loss: status.final_val_loss,
        sample,
        run,
    })
}
