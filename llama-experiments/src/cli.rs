//! The `llama` command line: clap definitions of every command and option (the handlers are in
//! `main.rs`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use llama_experiments::bench::BenchMode;
use llama_experiments::eval::EvalArgs;
use llama_model::{LlamaConfig, PRESETS, Precision};

#[derive(Parser)]
#[command(
    name = "llama",
    version,
    about = "LLaMA-style language models on Burn: presets, checks, training and ablations"
)]
pub(crate) struct Cli {
    /// Device: ndarray, flex, wgpu, tch-cpu, tch-cuda:N or cuda:N (default: the best compiled-in one).
    #[arg(long, global = true)]
    pub(crate) device: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Parameter counts and training FLOPs per token of a preset or config file (no allocation).
    Params {
        #[command(flatten)]
        model: ModelArgs,
        /// Print `{"params", "non_embedding_params", "flops_per_token"}` as JSON.
        #[arg(long)]
        json: bool,
        /// Print the full model config as JSON, with the derived `ffn_hidden` and `kv_heads` (for
        /// benches/pytorch_reference.py).
        #[arg(long, conflicts_with = "json")]
        model_json: bool,
    },
    /// Mean next-token negative log-likelihood of a JSON array of token ids under a checkpoint.
    Score {
        /// A Hugging Face (config.json + safetensors) or Meta (params.json + consolidated.NN.pth) directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// A JSON file holding an array of token ids.
        #[arg(long)]
        ids: PathBuf,
        /// Print `{"nll_mean", "n_predicted", "argmax"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Continue one or more prompts with a checkpoint and a tokenizer.
    Generate {
        /// A Hugging Face (config.json + safetensors) or Meta (params.json + consolidated.NN.pth) directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// tokenizer.json, a SentencePiece .model or a GGUF vocabulary.
        #[arg(long)]
        tokenizer: PathBuf,
        /// A prompt; repeat for a batch.
        #[arg(long, required = true)]
        prompt: Vec<String>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 is greedy decoding.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Compute precision: f32, or bf16 (cuda, tch, flex).
        #[arg(long, default_value_t = Precision::F32)]
        precision: Precision,
        #[arg(long)]
        json: bool,
    },
    /// List the compiled-in devices, best first.
    Devices,
    /// Tokenizers: train a SentencePiece-style BPE (digits split, byte fallback).
    Tokenizer {
        #[command(subcommand)]
        command: TokenizerCommand,
    },
    /// Data: fetch the sample corpus, prepare token shards from a recipe, inspect a dataset.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Fetch real text, train a tokenizer, prepare shards, train `tiny` a few minutes, then report
    /// validation perplexity and a generated sample (steps already done in DIR are reused).
    Quickstart {
        #[arg(long, default_value = "quickstart")]
        dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        steps: u64,
        /// A local copy of the sample wheel instead of downloading it.
        #[arg(long)]
        wheel: Option<PathBuf>,
    },
    /// A sweep of training runs (variants × learning rates × seeds) with a summary table and curves.
    Ablate {
        #[arg(long)]
        spec: PathBuf,
        /// Output folder (default: runs/<spec name>, or runs/<spec name>-quick).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The spec's [quick] sweep: fewer steps and seeds.
        #[arg(long)]
        quick: bool,
        /// Train on this prepared dataset instead of the base config's.
        #[arg(long)]
        dataset: Option<PathBuf>,
    },
    /// Pretrain with the paper's recipe (AdamW, global-norm clipping, warmup + cosine) on a prepared dataset.
    Train {
        /// A run config (TOML): [model], [data], [optim], [train].
        #[arg(long)]
        config: PathBuf,
        /// Run directory (default: runs/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the newest checkpoint in the run directory.
        #[arg(long)]
        resume: bool,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Override `[train] precision`: f32, or bf16 (cuda, tch, flex).
        #[arg(long)]
        precision: Option<Precision>,
    },
    /// Benchmarks: one model step (`--preset NAME --mode train|prefill|decode`), or `bench data`.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        command: Option<BenchCommand>,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_enum, default_value_t = BenchMode::Train)]
        mode: BenchMode,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 512)]
        seq: usize,
        /// f32, or bf16 compute over f32 master weights (cuda, tch, flex).
        #[arg(long, default_value_t = Precision::F32)]
        dtype: Precision,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// The peak FLOP/s MFU is computed against (e.g. 989e12: H100/H200 dense bf16).
        #[arg(long)]
        peak_flops: Option<f64>,
        /// Decode: the memory bandwidth in bytes/s the step's fewest bytes are judged against
        /// (e.g. 4.8e12: H200; 3.35e12: H100 SXM), reported as MBU.
        #[arg(long)]
        peak_bandwidth: Option<f64>,
        /// Train: also time the forward pass, backward pass and optimiser step apart (further
        /// steps with a device sync after each part).
        #[arg(long)]
        phases: bool,
        /// Sample the host's threads over the timed steps and write a flame graph here (SVG),
        /// with its collapsed stacks beside it (FILE.folded): where a host-bound step's time goes.
        #[arg(long, value_name = "FILE.svg")]
        profile_host: Option<PathBuf>,
        /// Record what the GPU runs during the timed steps (CUPTI: kernels, copies, fills) as a
        /// Chrome trace here, with the idle gaps between them in FILE.gaps.txt; the report
        /// gains each step's GPU busy and idle time (CUDA builds: `cuda`, `tch`). Generate: one
        /// window, the whole timed generation.
        #[arg(long, value_name = "FILE.json")]
        trace_gpu: Option<PathBuf>,
        /// Generate: the draw's temperature (0 is greedy; default 0.8).
        #[arg(long)]
        temperature: Option<f64>,
        /// Generate: keep the k most likely tokens (default: all).
        #[arg(long)]
        top_k: Option<usize>,
        /// Generate: nucleus sampling's p (default 0.95; 1 keeps every token).
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks scored the paper's way (multiple choice, MMLU, perplexity) for a checkpoint.
    Eval(EvalArgs),
    /// Check that devices compute the same logits, cached decoding, loss and gradients as a reference.
    Check {
        #[command(flatten)]
        model: ModelArgs,
        /// Devices to compare (comma-separated); default: every compiled-in device.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// Device whose results are the reference (default ndarray, else the last compiled-in).
        #[arg(long)]
        reference: Option<String>,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        seq: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fail when a device's logits or cached decoding differ by more than this (relative).
        #[arg(long, default_value_t = 1e-4)]
        tol: f32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenizerCommand {
    /// Train a BPE tokenizer and save it as tokenizer.json.
    Train {
        /// Text files or folders (`.jsonl` → field `text`, `.xml` → MediaWiki, else plain text;
        /// .gz/.bz2/.zst read too). Repeatable.
        #[arg(long, required_unless_present = "recipe", conflicts_with = "recipe")]
        input: Vec<PathBuf>,
        /// Train on the cleaned documents of a data recipe instead.
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[arg(long, default_value_t = 32_000)]
        vocab_size: usize,
        /// Read at most this many bytes of text (per recipe source: its weight's share).
        #[arg(long)]
        max_bytes: Option<u64>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum DataCommand {
    /// Fetch real public text (the pinned gensim 4.4.0 wheel from PyPI) and write a recipe for it.
    Sample {
        #[arg(long, default_value = "data/sample")]
        out: PathBuf,
        /// Use this local copy of the wheel instead of downloading it (its SHA-256 is checked).
        #[arg(long)]
        wheel: Option<PathBuf>,
    },
    /// Read, clean, split and tokenise a recipe's sources into token shards plus manifest.json.
    Prepare {
        #[arg(long)]
        recipe: PathBuf,
        /// tokenizer.json, a SentencePiece .model or a GGUF vocabulary.
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing dataset at --out.
        #[arg(long)]
        overwrite: bool,
        /// No progress or warnings.
        #[arg(long)]
        quiet: bool,
    },
    /// Summarise a prepared dataset (per source and per cleaning stage).
    Info {
        dir: PathBuf,
        /// Recompute every shard's SHA-256.
        #[arg(long)]
        verify: bool,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Throughput of the whole `data prepare` pipeline on a recipe (median of repeats).
    Data {
        #[arg(long)]
        recipe: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct ModelArgs {
    /// A built-in preset.
    #[arg(long, conflicts_with = "config", value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    pub(crate) preset: Option<String>,
    /// A model config file (TOML, or JSON with a .json extension).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

impl ModelArgs {
    pub(crate) fn load(&self, default: &str) -> Result<(String, LlamaConfig)> {
        match (&self.preset, &self.config) {
            (_, Some(path)) => Ok((path.display().to_string(), LlamaConfig::from_file(path)?)),
            (Some(p), None) => Ok((p.clone(), LlamaConfig::preset(p)?)),
            (None, None) => Ok((default.to_string(), LlamaConfig::preset(default)?)),
        }
    }
}
