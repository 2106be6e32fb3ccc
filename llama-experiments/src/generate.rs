//! `llama generate`: text continuation of a prompt with a checkpoint and a tokenizer.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use burn::tensor::backend::AutodiffBackend;
use llama_data::LlamaTokenizer;
use llama_model::{GenerateTimes, Precision, Sampling, generate_timed};

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

/// One line on where the time went, e.g. `prompt 0.042 s; 255 decode steps (cuda-graph) in
/// 0.951 s: 3.729 ms per step, 268.1 tokens/s at batch 1`.
fn times_line(t: &GenerateTimes, batch: usize, decoder: &str) -> String {
    let mut line = format!("prompt {:.3} s", t.prompt_s);
    if let Some(step) = t.step_s() {
        line += &format!(
            "; {} decode steps ({decoder}) in {:.3} s: {:.3} ms per step, {:.1} tokens/s at batch {batch}",
            t.decode_steps,
            t.decode_s,
            step * 1e3,
            batch as f64 / step
        );
    }
    line
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
        let (outs, times) = generate_timed(&model, &prompts, &sampling, decoder.as_mut())?;
        eprintln!("{}", times_line(&times, prompts.len(), decoder.name()));
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
