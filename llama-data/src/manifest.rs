//! `manifest.json`: everything a prepared dataset holds and how it was made — the recipe, the
//! tokenizer's hash, what every reader and cleaning stage kept and dropped, the token shards with
//! their hashes, and the epochs each source gets. Written last, so a dataset folder without one
//! is incomplete.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::clean::{CleanerSpec, StageReport};
use crate::error::DataError;
use crate::read::{ReadError, ReaderSpec};
use crate::shard::{ShardInfo, TokenDtype, sha256_file};

pub const MANIFEST_FILE: &str = "manifest.json";
/// The tokenizer is copied into the dataset under this name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub recipe: String,
    pub seed: u64,
    pub validation_fraction: f64,
    pub token_budget: Option<u64>,
    pub dtype: TokenDtype,
    pub tokenizer: TokenizerInfo,
    pub sources: Vec<SourceManifest>,
    /// Wall-clock seconds `prepare` took.
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// Where it was loaded from when the dataset was made.
    pub origin: String,
    /// SHA-256 of the tokenizer file.
    pub sha256: String,
    pub vocab_size: usize,
    pub bos: u32,
    pub eos: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceManifest {
    pub name: String,
    /// Normalised sampling weight.
    pub weight: f64,
    pub paths: Vec<String>,
    pub reader: ReaderSpec,
    pub cleaner: CleanerSpec,
    pub read: ReadReport,
    pub stages: Vec<StageReport>,
    pub train: SplitReport,
    pub validation: SplitReport,
    /// Epochs over this source's training tokens for the recipe's token budget.
    pub epochs: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadReport {
    pub documents: u64,
    pub bytes: u64,
    pub errors: u64,
    /// The first errors, verbatim (the count above is complete).
    pub error_samples: Vec<ReadError>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    pub documents: u64,
    pub tokens: u64,
    pub bytes: u64,
    pub shards: Vec<ShardInfo>,
}

impl Manifest {
    /// Reads `DIR/manifest.json`; a folder without one is not a (complete) dataset.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            DataError::Invalid(format!(
                "{} is not a prepared dataset (no readable {MANIFEST_FILE}: {e})",
                dir.display()
            ))
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
        if m.format != FORMAT {
            return Err(DataError::Invalid(format!(
                "{}: format {} (this build reads {FORMAT})",
                path.display(),
                m.format
            )));
        }
        Ok(m)
    }

    /// Writes `DIR/manifest.json` through a temporary file and a rename.
    pub fn write(&self, dir: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| DataError::Invalid(format!("manifest: {e}")))?;
        write_atomic(&dir.join(MANIFEST_FILE), text.as_bytes())
    }

    /// Recomputes every shard's SHA-256; returns the files whose hash differs.
    pub fn verify(&self, dir: &Path) -> Result<Vec<String>, DataError> {
        let mut bad = Vec::new();
        for s in &self.sources {
            for shard in s.train.shards.iter().chain(&s.validation.shards) {
                if sha256_file(&dir.join(&shard.file))? != shard.sha256 {
                    bad.push(shard.file.clone());
                }
            }
        }
        Ok(bad)
    }

    pub fn train_tokens(&self) -> u64 {
        self.sources.iter().map(|s| s.train.tokens).sum()
    }

    /// A plain-text table: per source weight, documents, tokens, epochs and what cleaning kept.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<14} {:>7} {:>9} {:>8} {:>12} {:>11} {:>9} {:>7}\n",
            "source", "weight", "read", "errors", "train tok", "valid tok", "kept", "epochs"
        );
        for s in &self.sources {
            let kept = s.train.documents + s.validation.documents;
            let epochs = match s.epochs {
                None => "-".to_string(),
                Some(e) if e >= 1e4 => format!("{e:.1e}"),
                Some(e) => format!("{e:.2}"),
            };
            out += &format!(
                "{:<14} {:>6.1}% {:>9} {:>8} {:>12} {:>11} {:>9} {:>7}\n",
                s.name,
                100.0 * s.weight,
                s.read.documents,
                s.read.errors,
                s.train.tokens,
                s.validation.tokens,
                kept,
                epochs
            );
        }
        out
    }

    /// Per source, what each cleaning stage kept and dropped.
    pub fn stage_table(&self) -> String {
        let mut out = format!(
            "{:<14} {:<22} {:>9} {:>9} {:>13} {:>13}\n",
            "source", "stage", "docs in", "dropped", "bytes in", "bytes out"
        );
        for s in &self.sources {
            for st in &s.stages {
                out += &format!(
                    "{:<14} {:<22} {:>9} {:>9} {:>13} {:>13}\n",
                    s.name, st.stage, st.docs_in, st.docs_dropped, st.bytes_in, st.bytes_out
                );
            }
        }
        out
    }
}

/// Writes `path` via `path.tmp` + fsync + rename, so a crash never leaves a partial file there.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| DataError::io(&tmp, e))?;
    f.sync_all().map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}
