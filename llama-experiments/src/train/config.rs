//! A training run's configuration (`llama train --config RUN.toml`): the model (a preset plus
//! knob overrides), the prepared dataset, and the paper's optimiser recipe, every value explicit.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use llama_model::{LlamaConfig, Precision};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    /// `preset = "tiny"` plus any `LlamaConfig` field as an override (`norm = "layer"`, ...).
    /// `vocab_size` comes from the dataset's tokenizer.
    pub model: toml::Table,
    pub data: DataConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    pub train: TrainConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A folder written by `llama data prepare` (relative to the config file).
    pub dataset: PathBuf,
    pub seq_len: usize,
}

/// Section 2.3 of the paper: AdamW β1 0.9, β2 0.95, ε 1e-8 (LLaMA's code), weight decay 0.1,
/// gradient clipping at 1.0, 2,000 warmup steps, cosine decay to 10 % of the peak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled decay on weight matrices only (not on norms, biases or embeddings).
    pub weight_decay: f32,
    /// Clip the global gradient norm (over all parameters, as `clip_grad_norm_`) to this.
    pub grad_clip: Option<f64>,
    pub warmup_steps: u64,
    /// The learning rate decays to `min_lr_ratio · lr` at the last step.
    pub min_lr_ratio: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: Some(1.0),
            warmup_steps: 2000,
            min_lr_ratio: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: u64,
    /// Tokens per optimiser step (the paper: 4M); a multiple of `seq_len · micro_batch`.
    pub batch_tokens: usize,
    /// Sequences per forward/backward pass; gradients are accumulated over
    /// `batch_tokens / (seq_len · micro_batch)` of them.
    pub micro_batch: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Validation every this many steps (and at the end); 0 = only at the end.
    #[serde(default)]
    pub eval_every: u64,
    /// Validation batches of `micro_batch` sequences (the first windows of the split).
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Checkpoint every this many steps (and at the end); 0 = only at the end.
    #[serde(default)]
    pub checkpoint_every: u64,
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// A gradient norm above this (before clipping) ends the run as diverged.
    #[serde(default)]
    pub diverge_grad_norm: Option<f64>,
    /// Peak FLOP/s of the device, for the MFU column (e.g. 989e12 for an H100's bf16 dense).
    #[serde(default)]
    pub peak_flops: Option<f64>,
    /// `f32`, or `bf16`: matmuls in bf16 over f32 master weights and f32 AdamW state (refused on
    /// backends without bf16 arithmetic: ndarray, wgpu).
    #[serde(default)]
    pub precision: Precision,
}

fn default_log_every() -> u64 {
    10
}
fn default_eval_batches() -> usize {
    8
}
fn default_keep() -> usize {
    2
}

impl RunConfig {
    /// Reads a run config; the dataset path becomes relative to the working directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c: RunConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message().trim()))?;
        if c.data.dataset.is_relative() {
            c.data.dataset = path.parent().unwrap_or(Path::new("")).join(&c.data.dataset);
        }
        Ok(c)
    }

    /// Gradient-accumulation steps per optimiser step.
    pub fn accumulation(&self) -> Result<usize> {
        let t = &self.train;
        let per_micro = self.data.seq_len * t.micro_batch;
        if per_micro == 0 || t.batch_tokens == 0 || !t.batch_tokens.is_multiple_of(per_micro) {
            bail!(
                "batch_tokens {} must be a positive multiple of seq_len · micro_batch = {per_micro}",
                t.batch_tokens
            );
        }
        Ok(t.batch_tokens / per_micro)
    }

    /// The model config: the preset, the overrides, the dataset's vocabulary size.
    pub fn model_config(&self, vocab_size: usize) -> Result<LlamaConfig> {
        model_config(&self.model, vocab_size, self.data.seq_len)
    }
}

/// Applies knob overrides (`[model]` minus `preset`) to a preset.
pub fn model_config(table: &toml::Table, vocab_size: usize, seq_len: usize) -> Result<LlamaConfig> {
    let mut table = table.clone();
    let preset = match table.remove("preset") {
        Some(toml::Value::String(p)) => p,
        Some(other) => bail!("model.preset must be a string, not {other}"),
        None => "tiny".to_string(),
    };
    if table.contains_key("vocab_size") {
        bail!("model.vocab_size comes from the dataset's tokenizer; remove it from the config");
    }
    let base = LlamaConfig::preset(&preset)?;
    let mut merged: toml::Table = toml::from_str(&base.to_toml()).context("preset as TOML")?;
    merged.extend(table);
    merged.insert("vocab_size".into(), toml::Value::Integer(vocab_size as i64));
    let cfg: LlamaConfig = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("model: {}", e.message().trim()))?;
    cfg.validate()?;
    if seq_len > cfg.max_seq_len {
        bail!(
            "seq_len {seq_len} exceeds the model's max_seq_len {}",
            cfg.max_seq_len
        );
    }
    Ok(cfg)
}
