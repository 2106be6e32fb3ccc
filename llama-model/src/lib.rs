//! A LLaMA-style decoder-only Transformer (Touvron et al., 2023) and the baseline components it
//! replaced, written once against Burn's `Backend` trait so that it runs on every Burn backend.
//!
//! - [`LlamaConfig`] holds the architecture, presets and ablation knobs ([`knobs`]); its
//!   [`LlamaConfig::param_counts`] and [`LlamaConfig::flops_per_token`] need no allocation.
//! - [`Llama`] is the model: [`Llama::forward`], [`Llama::loss`], and KV-cached decoding.
//! - [`generate()`] decodes a batch of prompts of different lengths (greedy, temperature, top-k,
//!   top-p, seeded, stop tokens).

pub mod add_norm;
pub mod attention;
pub mod block;
pub mod cache;
pub mod config;
pub mod decode;
pub mod decode_attention;
mod dispatch;
pub mod embedding;
pub mod error;
pub mod ffn;
pub mod gemv;
pub mod generate;
pub mod hf;
pub mod knobs;
pub mod loss;
pub mod meta;
pub mod model;
pub mod native;
pub mod norm;
pub mod position;
pub mod precision;
pub mod product;
pub mod record;
pub mod residual;
pub mod rms_norm;
pub mod rope_slot;
pub mod rope_slot_attention;
pub mod rotary;
pub mod sampler;
pub mod sdpa;
pub mod split_k;
pub mod stacked;
pub mod swiglu;
pub mod weight_cast;

pub use attention::AttentionMask;
pub use cache::{KvCache, LayerCache};
pub use config::{LlamaConfig, PRESETS, ParamCounts};
pub use decode::{Decoder, EagerDecoder, StaticDecoder, StepInput, StepTokens};
pub use error::{CheckpointError, ConfigError, GenerateError};
pub use generate::{GenerateTimes, generate, generate_timed, generate_with};
pub use hf::{load_hf, load_hf_as, save_hf};
pub use knobs::{FfnKind, NormKind, NormPlacement, PositionKind};
pub use loss::cross_entropy;
pub use meta::{load_meta, load_meta_as};
pub use model::Llama;
pub use native::{load_native, save_native, write_dir_atomically};
pub use precision::Precision;
pub use record::RecordError;
pub use sampler::{Sampler, Sampling};
