//! `llama score`: mean next-token negative log-likelihood of a token sequence under a checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use serde::Serialize;

use crate::backend::BackendJob;
use crate::checkpoint::load_checkpoint;

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
        let model = load_checkpoint::<B::InnerBackend>(&self.checkpoint, &device, None)?;
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
