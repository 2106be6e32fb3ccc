//! The public-data pipeline of the LLaMA recipe (Touvron et al., 2023, section 2.1): readers for
//! each source format, per-source cleaning and deduplication, SentencePiece-style BPE training,
//! a weighted mixture written as memory-mapped token shards, and a Burn dataset of packed
//! sequences over them. It never depends on `llama-model`.

pub mod clean;
pub mod dataset;
pub mod document;
pub mod error;
pub mod gguf;
pub mod html;
pub mod manifest;
pub mod permutation;
pub mod prepare;
pub mod progress;
pub mod read;
pub mod recipe;
pub mod sample;
pub mod sentencepiece;
pub mod shard;
pub mod tokenizer;
pub mod tokenizer_training;
pub mod word_encoder;

pub use document::Document;
pub use error::{DataError, TokenizerError};
pub use manifest::Manifest;
pub use prepare::{PrepareOptions, prepare};
pub use recipe::Recipe;
pub use tokenizer::LlamaTokenizer;
pub use tokenizer_training::{TokenizerTrainConfig, train_tokenizer};
pub use word_encoder::FastEncoder;
