//! Typed errors of the model crate.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unknown preset `{name}` (known: {known})")]
    UnknownPreset { name: String, known: String },
    #[error("cannot read config {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
}

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error("no prompts given")]
    NoPrompts,
    #[error("prompt {0} is empty")]
    EmptyPrompt(usize),
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("prompt length {prompt} plus {new} new tokens exceeds max_seq_len {max}")]
    TooLong {
        prompt: usize,
        new: usize,
        max: usize,
    },
    #[error("invalid sampling settings: {0}")]
    Sampling(String),
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} holds no checkpoint (expected config.json with model.safetensors or model.safetensors.index.json)"
    )]
    NotACheckpoint(String),
    #[error("cannot parse {path}: {message}")]
    Json { path: String, message: String },
    #[error("{path}: missing or invalid field `{field}`")]
    Field { path: String, field: String },
    #[error("{path}: unsupported {what}")]
    Unsupported { path: String, what: String },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: String, message: String },
    #[error("{path}: not a readable PyTorch checkpoint: {message}")]
    Pytorch { path: String, message: String },
    #[error("{path}: cannot decode the weights: {message}")]
    Record { path: String, message: String },
    #[error("tensor `{tensor}` has unsupported dtype {dtype}")]
    Dtype { tensor: String, dtype: String },
    #[error("tensor `{0}` is missing from the checkpoint")]
    Missing(String),
    #[error("tensor `{0}` in the checkpoint is not used by the model")]
    Unused(String),
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("cannot export: {0}")]
    Export(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl CheckpointError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
