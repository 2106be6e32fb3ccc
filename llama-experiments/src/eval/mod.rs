//! `llama eval`: the paper's benchmarks for any checkpoint, scored the paper's way.
//!
//! - [`choice`]: multiple-choice tasks (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC, OpenBookQA,
//!   MMLU) and their normalisations;
//! - [`loglik`]: batched log-likelihoods with shared contexts computed once;
//! - [`generation`], [`decode`], [`answers`]: NaturalQuestions, TriviaQA (exact match), GSM8K
//!   (final number);
//! - [`humaneval`], [`sandbox`]: pass@k of completions run in a sandboxed subprocess;
//! - [`bias`]: CrowS-Pairs and WinoGender;
//! - [`perplexity`]: held-out shards and raw text files;
//! - [`records`], [`arrow`]: JSONL lines and Hugging Face `save_to_disk` rows as records;
//! - [`report`]: accuracies with standard errors, as JSON and a Markdown table.

pub mod answers;
pub mod arrow;
pub mod bias;
pub mod choice;
pub mod cli;
pub mod decode;
pub mod generation;
pub mod humaneval;
pub mod loglik;
pub mod perplexity;
pub mod records;
pub mod report;
pub mod run;
pub mod sandbox;

pub use cli::EvalArgs;
pub use report::{EvalReport, TaskResult};
pub use run::{EvalJob, encode_pair};
