//! The `llama eval` command line.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use llama_model::Precision;

use super::run::EvalJob;
use crate::backend::DeviceSpec;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint directory: ours (a run's `model/`), Hugging Face or Meta.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Comma-separated: boolq, piqa, siqa, hellaswag, winogrande, arc-easy, arc-challenge,
    /// openbookqa, mmlu, naturalquestions, triviaqa, gsm8k, humaneval, crows-pairs, winogender,
    /// ppl:PATH (a prepared dataset's validation split, or a text file).
    #[arg(long, value_delimiter = ',', required = true)]
    pub tasks: Vec<String>,
    /// Few-shot examples per question (default 0; MMLU 5).
    #[arg(long)]
    pub shots: Option<usize>,
    /// At most N items per task (MMLU: per subject).
    #[arg(long)]
    pub limit: Option<usize>,
    /// tokenizer.json, a SentencePiece .model or a GGUF vocabulary (default: in or beside the checkpoint).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The folder of benchmark files (default: $LLAMA_EVALS, else data/evals).
    #[arg(long)]
    pub evals: Option<PathBuf>,
    /// Tokens per forward pass.
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    /// Compute precision: f32, or bf16 (cuda, tch, flex).
    #[arg(long, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Seed of the few-shot draws.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Per-item results (JSONL: log-likelihoods, normalised scores, prediction, gold).
    #[arg(long)]
    pub items: Option<PathBuf>,
    /// HumanEval samples per problem (the n of pass@k).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// HumanEval sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// The Python interpreter that runs HumanEval's tests.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// Print the results as JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
}

impl EvalArgs {
    pub fn run(self, device: DeviceSpec) -> Result<()> {
        let evals = self.evals.unwrap_or_else(|| {
            std::env::var_os("LLAMA_EVALS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("data/evals"))
        });
        let report = device.run(EvalJob {
            checkpoint: self.checkpoint,
            tokenizer: self.tokenizer,
            tasks: self.tasks,
            evals,
            shots: self.shots,
            limit: self.limit,
            batch_tokens: self.batch_tokens,
            precision: self.precision,
            seed: self.seed,
            quiet: self.quiet,
            items: self.items,
            samples: self.samples,
            temperature: self.temperature,
            python: self.python,
        })??;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.markdown());
        }
        Ok(())
    }
}
