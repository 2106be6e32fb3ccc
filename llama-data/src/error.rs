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
}
