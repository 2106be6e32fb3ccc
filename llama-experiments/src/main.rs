//! `llama`: the command-line tool of the LLaMA research toolkit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use llama_data::{Manifest, PrepareOptions, TokenizerTrainConfig};
use llama_experiments::ablate::{AblationSpec, ablate};
use llama_experiments::backend::DeviceSpec;
use llama_experiments::bench::{BenchJob, BenchMode};
use llama_experiments::check::{CheckSpec, check};
use llama_experiments::data::{TrainingText, bench_data, prepare_dataset, train_tokenizer_file};
use llama_experiments::eval::EvalArgs;
use llama_experiments::generate::GenerateJob;
use llama_experiments::params::ParamsReport;
use llama_experiments::quickstart::{Quickstart, quickstart};
use llama_experiments::score::{ScoreJob, read_ids};
use llama_experiments::train::metrics::RunState;
use llama_experiments::train::{RunConfig, TrainJob};
use llama_model::{LlamaConfig, PRESETS, Precision, Sampling};

#[derive(Parser)]
#[command(
    name = "llama",
    version,
    about = "LLaMA-style language models on Burn: presets, checks, training and ablations"
)]
struct Cli {
    /// Device: ndarray, flex, wgpu, tch-cpu, tch-cuda:N or cuda:N (default: the best compiled-in one).
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum TokenizerCommand {
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
enum DataCommand {
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
enum BenchCommand {
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
struct ModelArgs {
    /// A built-in preset.
    #[arg(long, conflicts_with = "config", value_parser = clap::builder::PossibleValuesParser::new(PRESETS))]
    preset: Option<String>,
    /// A model config file (TOML, or JSON with a .json extension).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ModelArgs {
    fn load(&self, default: &str) -> Result<(String, LlamaConfig)> {
        match (&self.preset, &self.config) {
            (_, Some(path)) => Ok((path.display().to_string(), LlamaConfig::from_file(path)?)),
            (Some(p), None) => Ok((p.clone(), LlamaConfig::preset(p)?)),
            (None, None) => Ok((default.to_string(), LlamaConfig::preset(default)?)),
        }
    }
}

/// `--device`, or the best compiled-in device.
fn chosen_device(arg: &Option<String>) -> Result<DeviceSpec> {
    match arg {
        Some(d) => d.parse(),
        None => DeviceSpec::best(),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Params {
            model,
            json,
            model_json,
        } => {
            let (name, cfg) = model.load("llama-7b")?;
            let report = ParamsReport::of(&cfg);
            if model_json {
                let mut v: serde_json::Value = serde_json::from_str(&cfg.to_json())?;
                v["ffn_hidden"] = cfg.ffn_hidden().into();
                v["kv_heads"] = cfg.kv_heads().into();
                v["params"] = report.params.into();
                println!("{v}");
            } else if json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.to_text(&name, &cfg));
            }
        }
        Command::Score {
            checkpoint,
            ids,
            json,
        } => {
            let ids = read_ids(&ids)?;
            let device = chosen_device(&cli.device)?;
            let report = device.run(ScoreJob { checkpoint, ids })??;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "nll_mean {:.6} (perplexity {:.3}) over {} predicted tokens\nargmax {:?}",
                    report.nll_mean,
                    report.nll_mean.exp(),
                    report.n_predicted,
                    report.argmax
                );
            }
        }
        Command::Generate {
            checkpoint,
            tokenizer,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            precision,
            json,
        } => {
            let sampling = Sampling {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                stop_tokens: vec![],
            };
            let device = chosen_device(&cli.device)?;
            let outs = device.run(GenerateJob {
                checkpoint,
                tokenizer,
                prompts: prompt,
                sampling,
                precision,
            })??;
            if json {
                println!("{}", serde_json::to_string_pretty(&outs)?);
            } else {
                for g in outs {
                    println!("{}{}", g.prompt, g.text);
                }
            }
        }
        Command::Train {
            config,
            out,
            resume,
            quiet,
            precision,
        } => {
            let mut config = RunConfig::from_file(&config)?;
            if let Some(p) = precision {
                config.train.precision = p;
            }
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
            let device = chosen_device(&cli.device)?;
            let s = device.run(TrainJob {
                config,
                out,
                resume,
                quiet,
                stop_after: None,
            })??;
            let st = &s.status;
            println!(
                "{}: {:?} at step {}/{} — {}",
                s.out.display(),
                st.state,
                st.step,
                st.steps,
                st.message
            );
            if let Some(v) = st.final_val_loss {
                println!("validation loss {v:.4}, perplexity {:.2}", v.exp());
            }
            if st.state != RunState::Finished {
                bail!("the run did not finish: {}", st.message);
            }
        }
        Command::Quickstart { dir, steps, wheel } => {
            let device = chosen_device(&cli.device)?;
            let r = quickstart(device, &Quickstart { dir, steps, wheel })?;
            if let Some(v) = r.val_loss {
                println!("validation loss {v:.4}, perplexity {:.1}", v.exp());
            }
            println!("run: {}\nsample: {}", r.run.display(), r.sample);
        }
        Command::Ablate {
            spec,
            out,
            quick,
            dataset,
        } => {
            let spec = AblationSpec::from_file(&spec)?;
            let suffix = if quick { "-quick" } else { "" };
            let out =
                out.unwrap_or_else(|| PathBuf::from("runs").join(format!("{}{suffix}", spec.name)));
            let device = chosen_device(&cli.device)?;
            ablate(&spec, &out, quick, dataset.as_deref(), device)?;
            print!("{}", std::fs::read_to_string(out.join("summary.md"))?);
            println!(
                "summary.{{md,csv,json}} and val_curves.{{png,svg}} in {}",
                out.display()
            );
        }
        Command::Tokenizer { command } => run_tokenizer(command)?,
        Command::Data { command } => run_data(command)?,
        Command::Bench {
            command: Some(command),
            ..
        } => run_bench(command)?,
        Command::Bench {
            command: None,
            model,
            mode,
            batch,
            seq,
            dtype,
            warmup,
            iters,
            peak_flops,
            json,
        } => {
            let (name, config) = model.load("tiny")?;
            let device = chosen_device(&cli.device)?;
            let r = device.run(BenchJob {
                name,
                backend: device.to_string(),
                config,
                mode,
                batch,
                seq,
                precision: dtype,
                warmup,
                iters,
                peak_flops,
            })??;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} {:?} on {} ({}): batch {} × seq {}: median {:.4} s/step, {:.0} tokens/s{}",
                    r.model,
                    r.mode,
                    r.device,
                    r.precision,
                    r.batch,
                    r.seq,
                    r.median_step_s,
                    r.tokens_per_s,
                    r.mfu
                        .map(|m| format!(
                            ", MFU {:.1} % of {:.3e} FLOP/s",
                            100.0 * m,
                            r.peak_flops.unwrap_or(0.0)
                        ))
                        .unwrap_or_default()
                );
            }
        }
        Command::Devices => {
            for d in DeviceSpec::compiled() {
                println!("{d}");
            }
        }
        Command::Eval(args) => args.run(chosen_device(&cli.device)?)?,
        Command::Check {
            model,
            devices,
            reference,
            batch,
            seq,
            seed,
            tol,
            json,
        } => {
            let (_, config) = model.load("tiny")?;
            let reference: DeviceSpec = match reference {
                Some(r) => r.parse()?,
                None if DeviceSpec::NdArray.is_compiled() => DeviceSpec::NdArray,
                None => *DeviceSpec::compiled()
                    .last()
                    .context("no backend compiled in")?,
            };
            let devices: Vec<DeviceSpec> = if devices.is_empty() {
                match &cli.device {
                    Some(d) => vec![d.parse()?],
                    None => DeviceSpec::compiled()
                        .into_iter()
                        .filter(|d| *d != reference)
                        .collect(),
                }
            } else {
                devices.iter().map(|d| d.parse()).collect::<Result<_>>()?
            };
            let rows = check(
                reference,
                &devices,
                &CheckSpec {
                    config,
                    batch,
                    seq,
                    seed,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<12} {:<28} {:>11} {:>11} {:>11} {:>11} {:>11}",
                    "device", "backend", "logits rel", "cache rel", "loss", "|Δloss|", "grads rel"
                );
                for r in &rows {
                    println!(
                        "{:<12} {:<28} {:>11.2e} {:>11.2e} {:>11.6} {:>11.2e} {:>11.2e}",
                        r.device,
                        r.backend,
                        r.logits_rel,
                        r.cached_vs_full_rel,
                        r.loss,
                        r.loss_abs_diff,
                        r.grads_rel
                    );
                }
            }
            let bad: Vec<&str> = rows
                .iter()
                .filter(|r| !(r.logits_rel <= tol && r.cached_vs_full_rel <= tol))
                .map(|r| r.device.as_str())
                .collect();
            if !bad.is_empty() {
                bail!(
                    "{} differ from {reference} by more than {tol}",
                    bad.join(", ")
                );
            }
        }
    }
    Ok(())
}

fn run_tokenizer(command: TokenizerCommand) -> Result<()> {
    let TokenizerCommand::Train {
        input,
        recipe,
        vocab_size,
        max_bytes,
        out,
        json,
    } = command;
    let text = match recipe {
        Some(r) => TrainingText::Recipe(r),
        None => TrainingText::Paths(input),
    };
    let config = TokenizerTrainConfig {
        vocab_size,
        ..TokenizerTrainConfig::default()
    };
    let s = train_tokenizer_file(&text, &config, max_bytes, &out)?;
    if json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "trained a {}-piece BPE on {} documents ({:.1} MB, {} unreadable) in {:.1} s → {}",
            s.vocab_size,
            s.documents,
            s.bytes as f64 / 1e6,
            s.read_errors,
            s.seconds,
            out.display()
        );
    }
    Ok(())
}

fn run_data(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Sample { out, wheel } => {
            let recipe = llama_data::sample::fetch_sample(&out, wheel.as_deref())?;
            println!(
                "sample corpus in {} (recipe: {})",
                out.display(),
                recipe.display()
            );
        }
        DataCommand::Prepare {
            recipe,
            tokenizer,
            out,
            overwrite,
            quiet,
        } => {
            let options = PrepareOptions { overwrite, quiet };
            let m = prepare_dataset(&recipe, &tokenizer, &out, &options)?;
            print!("{}", m.table());
            println!(
                "{} train tokens in {} ({:.1} s)",
                m.train_tokens(),
                out.display(),
                m.seconds
            );
        }
        DataCommand::Info { dir, verify, json } => {
            let m = Manifest::load(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!(
                    "dataset `{}`: {:?} tokens, vocabulary {}",
                    m.recipe, m.dtype, m.tokenizer.vocab_size
                );
                print!("{}\n{}", m.table(), m.stage_table());
            }
            if verify {
                let bad = m.verify(&dir)?;
                if !bad.is_empty() {
                    bail!(
                        "shards whose SHA-256 differs from the manifest: {}",
                        bad.join(", ")
                    );
                }
                println!("all shard hashes match the manifest");
            }
        }
    }
    Ok(())
}

fn run_bench(command: BenchCommand) -> Result<()> {
    let BenchCommand::Data {
        recipe,
        tokenizer,
        repeats,
        json,
    } = command;
    let b = bench_data(&recipe, &tokenizer, repeats)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        println!(
            "{}: {:.1} MB raw text, {} documents, {} tokens; median {:.2} s of {} runs\n{:.2} MB/s ({:.2} MB/s per core, {} cores), {:.0} tokens/s",
            b.recipe,
            b.raw_bytes as f64 / 1e6,
            b.documents,
            b.tokens,
            b.seconds_median,
            b.repeats,
            b.mb_per_s,
            b.mb_per_s_per_core,
            b.cores,
            b.tokens_per_s
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(d) = &cli.device
        && let Err(e) = d.parse::<DeviceSpec>().and_then(|d| {
            anyhow::ensure!(
                d.is_compiled(),
                "device `{d}` is not compiled into this binary; rebuild with `cargo build --release -p llama-experiments --features {}`",
                d.feature()
            );
            Ok(())
        })
    {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
