//! `llama score`: mean next-token negative log-likelihood of a token sequence under a checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use llama_model::{Llama, load_hf, load_meta, load_native};
use serde::Serialize;

use crate::backend::BackendJob;

/// The checkpoint layouts `llama` recognises in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `config.json` + `model.safetensors` or `model.safetensors.index.json`.
    HuggingFace,
    /// `params.json` + `consolidated.NN.pth`.
    Meta,
    /// Ours: `llama.json` + `model.mpk`.
    Native,
}

/// Detects the layout of a checkpoint directory.
pub fn detect(dir: &Path) -> Result<CheckpointFormat> {
    ensure!(
        dir.is_dir(),
        "checkpoint {} is not a directory",
        dir.display()
    );
    if dir.join("llama.json").is_file() {
        return Ok(CheckpointFormat::Native);
    }
    if dir.join("config.json").is_file() {
        return Ok(CheckpointFormat::HuggingFace);
    }
    if dir.join("params.json").is_file() {
        return Ok(CheckpointFormat::Meta);
    }
    bail!(
        "{} is not a checkpoint: expected llama.json (ours), config.json (Hugging Face) or params.json (Meta)",
        dir.display()
    )
}

/// Loads any supported checkpoint directory onto `device`.
pub fn load_checkpoint<B: burn::tensor::backend::Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<Llama<B>> {
    match detect(dir)? {
        CheckpointFormat::HuggingFace => Ok(load_hf(dir, device)?),
        CheckpointFormat::Meta => Ok(load_meta(dir, device)?),
        CheckpointFormat::Native => Ok(load_native(dir, device)?),
    }
}

/// Reads a JSON array of token ids.
pub fn read_ids(path: &Path) -> Result<Vec<u32>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array of token ids", path.display()))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoreReport {
    pub nll_mean: f64,
    pub n_predicted: usize,
    /// The most likely next token after each position (one per input token).
    pub argmax: Vec<u32>,
}

pub struct ScoreJob {
    pub checkpoint: PathBuf,
    pub ids: Vec<u32>,
}

impl BackendJob for ScoreJob {
    type Output = Result<ScoreReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<ScoreReport> {
        let model = load_checkpoint::<B::InnerBackend>(&self.checkpoint, &device)?;
        let cfg = model.config();
        let t = self.ids.len();
        ensure!(t >= 2, "need at least 2 token ids to predict one, got {t}");
        ensure!(
            t <= cfg.max_seq_len,
            "{t} token ids exceed the model's context of {}",
            cfg.max_seq_len
        );
        if let Some(bad) = self.ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary of {}",
                cfg.vocab_size
            );
        }
        let ids: Vec<i64> = self.ids.iter().map(|&i| i as i64).collect();
        let tokens =
            Tensor::<B::InnerBackend, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
        let logits = model.forward(tokens.clone());
        let argmax = logits.clone().argmax(2).reshape([t]);
        let logp = log_softmax(logits.cast(DType::F32).narrow(1, 0, t - 1), 2);
        let targets = tokens.narrow(1, 1, t - 1).unsqueeze_dim::<3>(2);
        let picked: Vec<f32> = logp
            .gather(2, targets)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("f32");
        let nll_mean = -picked.iter().map(|&x| x as f64).sum::<f64>() / (t - 1) as f64;
        let argmax: Vec<u32> = argmax
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .expect("i64")
            .into_iter()
            .map(|x| x as u32)
            .collect();
        Ok(ScoreReport {
            nll_mean,
            n_predicted: t - 1,
            argmax,
        })
    }
}
