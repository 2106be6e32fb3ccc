//! The public-data pipeline of the LLaMA recipe: sources, per-source cleaning, deduplication,
//! SentencePiece-style BPE and token shards. It never depends on `llama-model`.
//!
//! The crate is laid down with the workspace; its stages arrive with the data-pipeline issue.
