//! Data recipes: which sources, how to read and clean each, and their sampling weights (Table 1 of
//! the paper), as a TOML file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clean::CleanerSpec;
use crate::error::DataError;
use crate::read::{ReadLimits, ReaderSpec};

/// A data recipe. Paths are relative to the recipe file's folder.
///
/// ```toml
/// name = "sample"
/// seed = 1234
/// validation_fraction = 0.005
///
/// [[source]]
/// name = "wikipedia"
/// weight = 4.5
/// paths = ["wikipedia"]
/// reader = { format = "mediawiki" }
/// cleaner = { kind = "wikipedia" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    /// Seeds the train/validation split and the dataset's shuffling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Share of each source's documents (by a seeded hash of the text) held out for validation.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Tokens the mixture is meant to train on, to report the epochs each source gets (Table 1's
    /// "Epochs" column). Optional.
    #[serde(default)]
    pub token_budget: Option<u64>,
    /// Tokens per shard file (the last shard of a source is smaller).
    #[serde(default = "default_shard_tokens")]
    pub shard_tokens: u64,
    #[serde(default)]
    pub limits: ReadLimits,
    #[serde(rename = "source")]
    pub sources: Vec<SourceSpec>,
}

/// One source of the mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Also the folder name of its shards: letters, digits, `-` and `_`.
    pub name: String,
    /// Sampling weight; weights are normalised over the recipe (Table 1 gives percentages).
    pub weight: f64,
    /// Files or folders, relative to the recipe's folder.
    pub paths: Vec<PathBuf>,
    pub reader: ReaderSpec,
    #[serde(default)]
    pub cleaner: CleanerSpec,
}

fn default_seed() -> u64 {
    1234
}
fn default_validation_fraction() -> f64 {
    0.005
}
fn default_shard_tokens() -> u64 {
    1 << 26
}

impl Recipe {
    /// Reads and checks a recipe; its source paths become relative to the working directory.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let mut recipe = Self::from_toml(&text)
            .map_err(|e| DataError::Invalid(format!("recipe {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        for source in &mut recipe.sources {
            for p in &mut source.paths {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(recipe)
    }

    /// Parses and checks a recipe (paths left as written).
    pub fn from_toml(text: &str) -> Result<Self, DataError> {
        let recipe: Recipe =
            toml::from_str(text).map_err(|e| DataError::Invalid(one_line(text, &e)))?;
        recipe.check()?;
        Ok(recipe)
    }

    fn check(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Invalid(m));
        if self.sources.is_empty() {
            return bad("the recipe has no [[source]]".into());
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!(
                "validation_fraction {} is not in [0, 1)",
                self.validation_fraction
            ));
        }
        if self.shard_tokens == 0 {
            return bad("shard_tokens must be positive".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.sources {
            let valid = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return bad(format!(
                    "source name `{}`: use letters, digits, `-`, `_`",
                    s.name
                ));
            }
            if !names.insert(&s.name) {
                return bad(format!("source `{}` appears twice", s.name));
            }
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return bad(format!(
                    "source `{}`: weight {} must be positive",
                    s.name, s.weight
                ));
            }
            if s.paths.is_empty() {
                return bad(format!("source `{}` has no paths", s.name));
            }
            // Builds the stages once so that bad cleaner settings fail before any work.
            s.cleaner.pipeline()?;
        }
        Ok(())
    }

    /// Weights normalised to sum to one, in source order.
    pub fn normalised_weights(&self) -> Vec<f64> {
        let total: f64 = self.sources.iter().map(|s| s.weight).sum();
        self.sources.iter().map(|s| s.weight / total).collect()
    }
}

/// `line L, column C: message` (toml's own rendering spans several lines with a source excerpt).
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {msg}")
        }
        None => msg,
    }
}

/// Epochs a source gets when `budget` tokens are drawn from the mixture: its share of the budget
/// over its own size (Table 1's "Epochs" column).
pub fn epochs(weight: f64, budget: u64, source_tokens: u64) -> Option<f64> {
    (source_tokens > 0).then(|| weight * budget as f64 / source_tokens as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE1: &str = include_str!("../../configs/data/llama-table1.toml");

    #[test]
    fn table1_recipe_has_the_papers_mixture() {
        let r = Recipe::from_toml(TABLE1).unwrap();
        let names: Vec<_> = r.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "commoncrawl",
                "c4",
                "github",
                "wikipedia",
                "books",
                "arxiv",
                "stackexchange"
            ]
        );
        let w = r.normalised_weights();
        let expect = [0.67, 0.15, 0.045, 0.045, 0.045, 0.025, 0.02];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        assert_eq!(r.token_budget, Some(1_400_000_000_000));
    }

    #[test]
    fn table1_epochs_follow_from_the_disk_sizes() {
        // Table 1's Books row: 4.5 % of 1.4T tokens and 2.23 epochs means ~28.25B book tokens.
        let e = epochs(0.045, 1_400_000_000_000, 28_251_000_000).unwrap();
        assert!((e - 2.23).abs() < 0.005, "{e}");
        assert_eq!(epochs(0.5, 10, 0), None);
    }

    #[test]
    fn bad_recipes_are_rejected_with_the_reason() {
        let cases = [
            ("name = 'x'\nsource = []", "no [[source]]"),
            (
                "name='x'\n[[source]]\nname='a b'\nweight=1\npaths=['p']\nreader={format='text'}",
                "source name",
            ),
            (
                "name='x'\n[[source]]\nname='a'\nweight=0\npaths=['p']\nreader={format='text'}",
                "weight",
            ),
            (
                "name='x'\n[[source]]\nname='a'\nweight=1\npaths=['p']\nreader={format='pdf'}",
                "pdf",
            ),
            (
                "name='x'\nbogus=1\n[[source]]\nname='a'\nweight=1\npaths=['p']\nreader={format='text'}",
                "bogus",
            ),
            (
                "name='x'\nvalidation_fraction=1.5\n[[source]]\nname='a'\nweight=1\npaths=['p']\nreader={format='text'}",
                "validation_fraction",
            ),
        ];
        for (text, needle) in cases {
            let err = Recipe::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
