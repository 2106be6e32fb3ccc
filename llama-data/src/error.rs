//! Typed errors of the data crate.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid tokenizer file: {0}")]
    Format(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    /// Tokenizer training was given settings or a corpus it cannot work with.
    #[error("tokenizer training: {0}")]
    Training(String),
}

/// Errors of the data pipeline (readers, cleaners, recipes, shards, datasets).
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file or setting the user gave is malformed; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl DataError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
