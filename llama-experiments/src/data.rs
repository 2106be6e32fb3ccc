//! The data commands of `llama`: tokenizer training, dataset preparation and inspection, the
//! sample corpus, and the data-pipeline benchmark.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use llama_data::read::{self, ReadLimits, ReaderSpec};
use llama_data::tokenizer_training::save;
use llama_data::{
    Manifest, PrepareOptions, Recipe, TokenizerTrainConfig, prepare, train_tokenizer,
};
use serde::Serialize;

/// Where the training text of `llama tokenizer train` comes from.
pub enum TrainingText {
    /// Files or folders, read by extension: `.jsonl` (field `text`), `.xml` (MediaWiki), else
    /// whole files as text (compressed forms too).
    Paths(Vec<PathBuf>),
    /// The cleaned documents of a recipe's sources, each source capped at its weight's share of
    /// `max_bytes` (the mixture the tokenizer will see in training).
    Recipe(PathBuf),
}

#[derive(Debug, Serialize)]
pub struct TokenizerSummary {
    pub documents: u64,
    pub bytes: u64,
    pub read_errors: u64,
    pub vocab_size: usize,
    pub seconds: f64,
}

/// Trains a SentencePiece-style BPE on `text` and saves it as `out` (tokenizer.json, atomic).
pub fn train_tokenizer_file(
    text: &TrainingText,
    config: &TokenizerTrainConfig,
    max_bytes: Option<u64>,
    out: &Path,
) -> Result<TokenizerSummary> {
    let started = Instant::now();
    let mut summary = TokenizerSummary {
        documents: 0,
        bytes: 0,
        read_errors: 0,
        vocab_size: 0,
        seconds: 0.0,
    };
    let streams: Vec<(read::Documents, Option<u64>, llama_data::clean::Pipeline)> = match text {
        TrainingText::Paths(paths) => {
            let mut v = Vec::new();
            for p in paths {
                if !p.exists() {
                    bail!("{}: no such file or folder", p.display());
                }
                let spec = guess_reader(p);
                let docs = read::documents(&spec, std::slice::from_ref(p), ReadLimits::default());
                v.push((
                    docs,
                    max_bytes,
                    llama_data::clean::CleanerSpec::None.pipeline()?,
                ));
            }
            v
        }
        TrainingText::Recipe(path) => {
            let recipe = Recipe::from_file(path)?;
            let weights = recipe.normalised_weights();
            let mut v = Vec::new();
            for (s, w) in recipe.sources.iter().zip(weights) {
                let docs = read::documents(&s.reader, &s.paths, recipe.limits);
                let cap = max_bytes.map(|m| (m as f64 * w) as u64);
                v.push((docs, cap, s.cleaner.pipeline()?));
            }
            v
        }
    };
    let mut texts = Vec::new();
    for (docs, cap, mut pipeline) in streams {
        let mut taken = 0u64;
        for item in docs {
            if cap.is_some_and(|c| taken >= c) {
                break;
            }
            match item {
                Ok(doc) => {
                    if let Some(doc) = pipeline.run(doc) {
                        taken += doc.text.len() as u64;
                        summary.documents += 1;
                        texts.push(doc.text);
                    }
                }
                Err(e) => {
                    summary.read_errors += 1;
                    eprintln!("warning: {e}");
                }
            }
        }
        summary.bytes += taken;
    }
    if texts.is_empty() {
        bail!("no training text: the inputs held no readable documents");
    }
    let tokenizer = train_tokenizer(&texts, config)?;
    save(&tokenizer, out).with_context(|| format!("saving {}", out.display()))?;
    summary.vocab_size = tokenizer.vocab_size();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn guess_reader(path: &Path) -> ReaderSpec {
    let name = read::logical_name(path);
    if name.ends_with(".jsonl") || name.ends_with(".json") {
        ReaderSpec::Jsonl {
            text_field: "text".into(),
        }
    } else if name.ends_with(".xml") {
        ReaderSpec::Mediawiki
    } else {
        ReaderSpec::Text
    }
}

/// `llama data prepare`.
pub fn prepare_dataset(
    recipe: &Path,
    tokenizer: &Path,
    out: &Path,
    options: &PrepareOptions,
) -> Result<Manifest> {
    let recipe = Recipe::from_file(recipe)?;
    Ok(prepare(&recipe, tokenizer, out, options)?)
}

/// Result of `llama bench data`.
#[derive(Debug, Serialize)]
pub struct DataBench {
    pub recipe: String,
    pub repeats: usize,
    pub cores: usize,
    pub raw_bytes: u64,
    pub documents: u64,
    pub tokens: u64,
    pub seconds_median: f64,
    pub seconds_all: Vec<f64>,
    pub mb_per_s: f64,
    pub mb_per_s_per_core: f64,
    pub tokens_per_s: f64,
}

/// Runs the whole prepare pipeline `repeats` times into a temporary folder and reports the
/// median throughput in raw (decompressed) bytes read.
pub fn bench_data(recipe_path: &Path, tokenizer: &Path, repeats: usize) -> Result<DataBench> {
    let recipe = Recipe::from_file(recipe_path)?;
    let dir = std::env::temp_dir().join(format!("llama-bench-data-{}", std::process::id()));
    let out = dir.join("dataset");
    let mut seconds = Vec::new();
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        let m = prepare(
            &recipe,
            tokenizer,
            &out,
            &PrepareOptions {
                overwrite: true,
                quiet: true,
            },
        )?;
        seconds.push(started.elapsed().as_secs_f64());
        last = Some(m);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let m = last.context("no run")?;
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let raw_bytes: u64 = m.sources.iter().map(|s| s.read.bytes).sum();
    let tokens: u64 = m
        .sources
        .iter()
        .map(|s| s.train.tokens + s.validation.tokens)
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mb_per_s = raw_bytes as f64 / 1e6 / median;
    Ok(DataBench {
        recipe: recipe_path.display().to_string(),
        repeats: seconds.len(),
        cores,
        raw_bytes,
        documents: m.sources.iter().map(|s| s.read.documents).sum(),
        tokens,
        seconds_median: median,
        seconds_all: seconds,
        mb_per_s,
        mb_per_s_per_core: mb_per_s / cores as f64,
        tokens_per_s: tokens as f64 / median,
    })
}
