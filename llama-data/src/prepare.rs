//! `llama data prepare`: recipe → read → clean → split → tokenise → shards + manifest.
//!
//! Each source streams through two threads (reading and cleaning, which keep dedup state, then
//! tokenising and writing) with a bounded queue between them, and sources run side by side, so
//! memory stays bounded whatever the corpus size. Everything is written under `OUT.partial` and
//! renamed to `OUT` only once the manifest is written: a failed or killed run never leaves a
//! folder that looks like a complete dataset.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::document::Document;
use crate::error::DataError;
use crate::manifest::{
    FORMAT, Manifest, ReadReport, SourceManifest, SplitReport, TOKENIZER_FILE, TokenizerInfo,
    write_atomic,
};
use crate::progress::Progress;
use crate::read;
use crate::recipe::{Recipe, SourceSpec, epochs};
use crate::shard::{ShardWriter, TokenDtype, sha256_file};
use crate::tokenizer::LlamaTokenizer;
use crate::word_encoder::FastEncoder;

/// How many read errors the manifest quotes per source (all are counted).
const ERROR_SAMPLES: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Replace an existing dataset at `out`.
    pub overwrite: bool,
    /// No progress or warnings on stderr.
    pub quiet: bool,
}

/// Prepares the dataset of `recipe` under `out` with the tokenizer at `tokenizer_path`.
pub fn prepare(
    recipe: &Recipe,
    tokenizer_path: &Path,
    out: &Path,
    options: &PrepareOptions,
) -> Result<Manifest, DataError> {
    let started = Instant::now();
    if out.exists() && !options.overwrite {
        return Err(DataError::Invalid(format!(
            "{} exists (pass --overwrite to replace it)",
            out.display()
        )));
    }
    let tokenizer = LlamaTokenizer::from_file(tokenizer_path)?;
    let (Some(bos), Some(eos)) = (tokenizer.bos, tokenizer.eos) else {
        return Err(DataError::Invalid(format!(
            "{}: the tokenizer has no <s>/</s> pieces to delimit documents",
            tokenizer_path.display()
        )));
    };
    let partial = sibling(out, "partial");
    remove_dir_if_exists(&partial)?;
    std::fs::create_dir_all(&partial).map_err(|e| DataError::io(&partial, e))?;

    let result = (|| {
        let json = tokenizer
            .inner()
            .to_string(true)
            .map_err(|e| DataError::Invalid(format!("tokenizer: {e}")))?;
        write_atomic(&partial.join(TOKENIZER_FILE), json.as_bytes())?;
        let info = TokenizerInfo {
            origin: tokenizer_path.display().to_string(),
            sha256: sha256_file(tokenizer_path)?,
            vocab_size: tokenizer.vocab_size(),
            bos,
            eos,
        };
        let dtype = TokenDtype::for_vocab(info.vocab_size);
        let progress = Progress::new(options.quiet);
        let weights = recipe.normalised_weights();
        let job = SourceJob {
            recipe,
            tokenizer: &tokenizer,
            root: &partial,
            dtype,
            bos,
            eos,
            progress: &progress,
        };
        let results: Vec<Result<SourceManifest, DataError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = recipe
                .sources
                .iter()
                .zip(&weights)
                .map(|(source, &weight)| {
                    let job = &job;
                    scope.spawn(move || job.run(source, weight))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(DataError::Invalid(
                            "a source's worker thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut sources = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        if let Some(budget) = recipe.token_budget {
            for s in &mut sources {
                s.epochs = epochs(s.weight, budget, s.train.tokens);
            }
        }
        let manifest = Manifest {
            format: FORMAT,
            recipe: recipe.name.clone(),
            seed: recipe.seed,
            validation_fraction: recipe.validation_fraction,
            token_budget: recipe.token_budget,
            dtype,
            tokenizer: info,
            sources,
            seconds: started.elapsed().as_secs_f64(),
        };
        manifest.write(&partial)?;
        Ok(manifest)
    })();

    match result {
        Ok(manifest) => {
            replace_dir(&partial, out)?;
            Ok(manifest)
        }
        Err(e) => {
            // Leaves nothing behind that could be mistaken for a dataset (best effort: the
            // error being reported matters more than a failed clean-up).
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

struct SourceJob<'a> {
    recipe: &'a Recipe,
    tokenizer: &'a LlamaTokenizer,
    root: &'a Path,
    dtype: TokenDtype,
    bos: u32,
    eos: u32,
    progress: &'a Progress,
}

impl SourceJob<'_> {
    fn run(&self, source: &SourceSpec, weight: f64) -> Result<SourceManifest, DataError> {
        let mut pipeline = source.cleaner.pipeline()?;
        let (tx, rx) = sync_channel::<Document>(256);
        let mut read_report = ReadReport::default();
        let mut task = self.progress.task(&source.name);

        let (train, validation) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || self.write(source, rx));
            for item in read::documents(&source.reader, &source.paths, self.recipe.limits) {
                match item {
                    Ok(doc) => {
                        read_report.documents += 1;
                        read_report.bytes += doc.text.len() as u64;
                        task.inc(doc.text.len() as u64);
                        if let Some(doc) = pipeline.run(doc)
                            && tx.send(doc).is_err()
                        {
                            break; // the writer failed; its error is reported below
                        }
                    }
                    Err(e) => {
                        self.progress.warn(&format!("{}: {e}", source.name));
                        read_report.errors += 1;
                        if read_report.error_samples.len() < ERROR_SAMPLES {
                            read_report.error_samples.push(e);
                        }
                    }
                }
            }
            drop(tx);
            writer.join().unwrap_or_else(|_| {
                Err(DataError::Invalid(format!(
                    "{}: the writer thread panicked",
                    source.name
                )))
            })
        })?;
        task.finish(&format!(
            "{} errors, {} + {} tokens",
            read_report.errors, train.tokens, validation.tokens
        ));
        Ok(SourceManifest {
            name: source.name.clone(),
            weight,
            paths: source
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            reader: source.reader.clone(),
            cleaner: source.cleaner.clone(),
            read: read_report,
            stages: pipeline.reports().to_vec(),
            train,
            validation,
            epochs: None,
        })
    }

    /// Tokenises the cleaned documents and writes them to the train or validation shards.
    fn write(
        &self,
        source: &SourceSpec,
        docs: std::sync::mpsc::Receiver<Document>,
    ) -> Result<(SplitReport, SplitReport), DataError> {
        let writer = |split: &str| {
            let prefix = format!("{}/{split}", source.name);
            let r = self.recipe;
            ShardWriter::new(
                self.root,
                &prefix,
                self.dtype,
                r.shard_tokens,
                self.bos,
                self.eos,
            )
        };
        let (mut train_w, mut valid_w) = (writer("train"), writer("validation"));
        let (mut train, mut valid) = (SplitReport::default(), SplitReport::default());
        let mut encoder = Encoder::new(self.tokenizer);
        for doc in docs {
            if doc.text.trim().is_empty() {
                continue; // a cleaner-less source can pass blank documents through
            }
            let ids = encoder.encode(&doc.text)?;
            let held_out =
                is_validation(&doc.text, self.recipe.seed, self.recipe.validation_fraction);
            let (w, report) = if held_out {
                (&mut valid_w, &mut valid)
            } else {
                (&mut train_w, &mut train)
            };
            w.write_document(&ids)?;
            report.documents += 1;
            report.tokens += ids.len() as u64 + 2;
            report.bytes += doc.text.len() as u64;
        }
        train.shards = train_w.finish()?;
        valid.shards = valid_w.finish()?;
        Ok((train, valid))
    }
}

/// The split is a seeded hash of the text, so exact duplicates always land on the same side
/// and the split does not depend on reading order.
pub fn is_validation(text: &str, seed: u64, fraction: f64) -> bool {
    // The salt keeps the split independent of the seed's other uses (window shuffling).
    let h = xxh3_64_with_seed(text.as_bytes(), seed ^ 0x9e37_79b9_7f4a_7c15);
    (h as f64) < fraction * 2f64.powi(64)
}

/// Bulk tokenisation (no BOS/EOS: the shard writer adds them): the word-cache encoder where
/// the tokenizer's configuration allows it (same ids, several times faster), else the
/// `tokenizers` pipeline.
enum Encoder<'a> {
    Fast(Box<FastEncoder>),
    Pipeline(&'a LlamaTokenizer),
}

impl<'a> Encoder<'a> {
    fn new(tokenizer: &'a LlamaTokenizer) -> Self {
        FastEncoder::new(tokenizer).map_or(Self::Pipeline(tokenizer), |f| Self::Fast(Box::new(f)))
    }

    fn encode(&mut self, text: &str) -> Result<Vec<u32>, DataError> {
        Ok(match self {
            Self::Fast(f) => f.encode(text)?,
            Self::Pipeline(t) => t.encode(text, false)?,
        })
    }
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    out.with_file_name(name)
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), DataError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::io(dir, e)),
        _ => Ok(()),
    }
}

/// Moves the finished `partial` folder to `out`, replacing an old dataset there.
fn replace_dir(partial: &Path, out: &Path) -> Result<(), DataError> {
    if out.exists() {
        let old = sibling(out, "old");
        remove_dir_if_exists(&old)?;
        std::fs::rename(out, &old).map_err(|e| DataError::io(out, e))?;
        std::fs::rename(partial, out).map_err(|e| DataError::io(out, e))?;
        remove_dir_if_exists(&old)
    } else {
        std::fs::rename(partial, out).map_err(|e| DataError::io(out, e))
    }
}
