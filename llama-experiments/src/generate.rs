//! `llama generate`: text continuation of a prompt with a checkpoint and a tokenizer.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use burn::tensor::backend::AutodiffBackend;
use llama_data::LlamaTokenizer;
use llama_model::{Precision, Sampling, generate_with};

use crate::backend::BackendJob;
use crate::checkpoint::load_checkpoint;

pub struct GenerateJob {
    pub checkpoint: PathBuf,
    pub tokenizer: PathBuf,
    pub prompts: Vec<String>,
    pub sampling: Sampling,
    pub precision: Precision,
}

/// One prompt's continuation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    pub prompt: String,
    pub ids: Vec<u32>,
    pub text: String,
}

impl BackendJob for GenerateJob {
    type Output = Result<Vec<Generated>>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Vec<Generated>> {
        let tok = LlamaTokenizer::from_file(&self.tokenizer)?;
        self.precision.check::<B>(&device)?;
        let weights = self.precision.compute_dtype();
        let model = load_checkpoint::<B::InnerBackend>(&self.checkpoint, &device, weights)?
            .with_precision(self.precision)
            .with_inference_weights();
        ensure!(
            tok.vocab_size() <= model.config().vocab_size,
            "tokenizer {} has {} tokens but the model's vocabulary has {}",
            self.tokenizer.display(),
            tok.vocab_size(),
            model.config().vocab_size
        );
        let mut sampling = self.sampling;
        if let Some(eos) = tok.eos {
            sampling.stop_tokens.push(eos);
        }
        let prompts = self
            .prompts
            .iter()
            .map(|p| tok.encode(p, true))
            .collect::<Result<Vec<_>, _>>()?;
        let mut decoder = crate::decoder::decoder_for::<B::InnerBackend>(&device)?;
        let outs = generate_with(&model, &prompts, &sampling, decoder.as_mut())?;
        self.prompts
            .into_iter()
            .zip(outs)
            .map(|(prompt, ids)| {
                let text = tok.decode(&ids).context("decoding the generated tokens")?;
                Ok(Generated { prompt, ids, text })
            })
            .collect()
    }
}
