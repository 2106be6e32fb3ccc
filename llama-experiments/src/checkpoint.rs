//! Checkpoint directories: which layout a directory holds, and loading any of them.

use std::path::Path;

use anyhow::{Result, bail, ensure};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use llama_model::{Llama, load_hf_as, load_meta_as, load_native};

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

/// Loads any supported checkpoint directory onto `device`; with `weights`, a Hugging Face or Meta
/// checkpoint's projection matrices are made in that dtype as they are read (for inference in it:
/// no f32 copy of the model on the device first), ours are read in f32 (Burn's record).
pub fn load_checkpoint<B: Backend>(
    dir: &Path,
    device: &B::Device,
    weights: Option<DType>,
) -> Result<Llama<B>> {
    match detect(dir)? {
        CheckpointFormat::HuggingFace => Ok(load_hf_as(dir, device, weights)?),
        CheckpointFormat::Meta => Ok(load_meta_as(dir, device, weights)?),
        CheckpointFormat::Native => Ok(load_native(dir, device)?),
    }
}
