//! Our own checkpoint layout, for any architecture (baseline knobs included): a directory with
//! `llama.json` (the [`LlamaConfig`]) and `model.mpk` (Burn's full-precision named MessagePack record).

use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::Backend;

use crate::config::LlamaConfig;
use crate::error::CheckpointError;
use crate::model::Llama;

/// Writes a directory through `fill(tmp)` into a hidden sibling, then renames it to `dir`, so a failed
/// or interrupted write never leaves a directory that looks complete. `dir` must not exist.
pub fn write_dir_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    if dir.exists() {
        return Err(CheckpointError::Export(format!(
            "{} already exists",
            dir.display()
        )));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let result = std::fs::create_dir_all(&partial)
        .and_then(|()| fill(&partial))
        .and_then(|()| std::fs::rename(&partial, dir));
    result.map_err(|e| {
        std::fs::remove_dir_all(&partial).ok();
        CheckpointError::io(dir, e)
    })
}

/// Saves `model` in our layout.
pub fn save_native<B: Backend>(model: &Llama<B>, dir: &Path) -> Result<(), CheckpointError> {
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    write_dir_atomically(dir, |tmp| {
        std::fs::write(tmp.join("llama.json"), model.config().to_json())?;
        model
            .clone()
            .save_file(tmp.join("model"), &recorder)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
}

/// Loads a directory written by [`save_native`] onto `device`.
pub fn load_native<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<Llama<B>, CheckpointError> {
    let config = LlamaConfig::from_file(&dir.join("llama.json"))?;
    let weights = dir.join("model.mpk");
    if !weights.is_file() {
        return Err(CheckpointError::Missing(weights.display().to_string()));
    }
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let model = config
        .init::<B>(device)?
        .load_file(dir.join("model"), &recorder, device)
        .map_err(|e| CheckpointError::Record {
            path: weights.display().to_string(),
            message: e.to_string(),
        })?;
    // Burn's record loading does not compare shapes; the parameter count catches a config that
    // does not belong to the weights.
    let (found, expected) = (model.num_params() as u64, config.param_counts().total);
    if found != expected {
        return Err(CheckpointError::Record {
            path: weights.display().to_string(),
            message: format!("{found} parameters, but llama.json describes {expected}"),
        });
    }
    Ok(model)
}
