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
