//! `llama`: the command-line tool of the LLaMA research toolkit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use llama_data::{Manifest, PrepareOptions, TokenizerTrainConfig};
use llama_experiments::ablate::{AblationSpec, ablate};
use llama_experiments::backend::DeviceSpec;
use llama_experiments::bench::{BenchJob, BenchMode, BenchSampling};
use llama_experiments::check::{CheckSpec, check};
use llama_experiments::data::{TrainingText, bench_data, prepare_dataset, train_tokenizer_file};
use llama_experiments::generate::GenerateJob;
use llama_experiments::params::ParamsReport;
use llama_experiments::quickstart::{Quickstart, quickstart};
use llama_experiments::score::{ScoreJob, read_ids};
use llama_experiments::train::metrics::RunState;
use llama_experiments::train::{RunConfig, TrainJob};
use llama_model::Sampling;

mod cli;

use cli::{BenchCommand, Cli, Command, DataCommand, TokenizerCommand};

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
            peak_bandwidth,
            phases,
            profile_host,
            trace_gpu,
            temperature,
            top_k,
            top_p,
            json,
        } => {
            let given = temperature.is_some() || top_k.is_some() || top_p.is_some();
            ensure!(
                !given || mode == BenchMode::Generate,
                "--temperature, --top-k and --top-p apply to --mode generate"
            );
            let default = BenchSampling::default();
            let sampling = BenchSampling {
                temperature: temperature.unwrap_or(default.temperature),
                top_k,
                top_p: top_p.or(default.top_p),
            };
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
                peak_bandwidth,
                phases,
                profile_host,
                trace_gpu,
                sampling,
            })??;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} {:?} on {} ({}): batch {} × seq {}: median {:.4} s/step, {:.0} tokens/s{}{}",
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
                        .unwrap_or_default(),
                    r.mbu
                        .map(|m| format!(
                            ", MBU {:.1} % of {:.3e} B/s ({:.3} GB a step)",
                            100.0 * m,
                            r.peak_bandwidth.unwrap_or(0.0),
                            r.decode_bytes.unwrap_or(0) as f64 / 1e9
                        ))
                        .unwrap_or_default()
                );
                if let Some(p) = r.pipelined_step_s {
                    println!(
                        "pipelined (steps queued back to back, one sync): {p:.4} s/step{}",
                        r.pipelined_mbu
                            .map(|m| format!(", MBU {:.1} %", 100.0 * m))
                            .unwrap_or_default()
                    );
                }
                if let Some(p) = r.prompt_s {
                    println!(
                        "generate: the step is the mean of {} decode steps ({}), tokens drawn on \
                         the device; prompt pass and first draw {p:.4} s",
                        r.steps_timed,
                        r.decoder.as_deref().unwrap_or("eager")
                    );
                }
                if let Some(g) = &r.gpu_trace {
                    println!(
                        "GPU per step: busy {:.3} ms, idle {:.3} ms (head {:.3}, tail {:.3}), {} launches",
                        g.busy_s * 1e3,
                        g.idle_s * 1e3,
                        g.head_s * 1e3,
                        g.tail_s * 1e3,
                        g.launches
                    );
                }
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
                    "{:<12} {:<28} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9}",
                    "device",
                    "backend",
                    "logits rel",
                    "cache rel",
                    "loss",
                    "|Δloss|",
                    "grads rel",
                    "tokens Δ"
                );
                for r in &rows {
                    println!(
                        "{:<12} {:<28} {:>11.2e} {:>11.2e} {:>11.6} {:>11.2e} {:>11.2e} {:>9}",
                        r.device,
                        r.backend,
                        r.logits_rel,
                        r.cached_vs_full_rel,
                        r.loss,
                        r.loss_abs_diff,
                        r.grads_rel,
                        r.tokens_differ
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
    llama_experiments::oom::install_hook();
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
    match llama_experiments::oom::catch(|| run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
