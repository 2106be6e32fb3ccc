//! The public-data pipeline of the LLaMA recipe: sources, per-source cleaning, deduplication,
//! SentencePiece-style BPE and token shards. It never depends on `llama-model`.
//!
//! Available now: [`LlamaTokenizer`], which loads the LLaMA tokenizer from `tokenizer.json`, a
//! SentencePiece `.model` or a GGUF vocabulary. Cleaning, mixtures and shards arrive with the
//! data-pipeline issue.

pub mod error;
pub mod gguf;
pub mod sentencepiece;
pub mod tokenizer;

pub use error::TokenizerError;
pub use tokenizer::LlamaTokenizer;
