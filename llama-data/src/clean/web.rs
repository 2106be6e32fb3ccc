//! CommonCrawl and C4: CCNet line deduplication, the C4 quality rules, English only.

use serde::{Deserialize, Serialize};

use super::Stage;
use super::c4::{C4Quality, C4Rules};
use super::english::EnglishFilter;
use super::line_dedup::LineDedup;
use crate::error::DataError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// Run `line-dedup` (CCNet): drop lines already seen in earlier documents.
    pub line_dedup: bool,
    /// Size of the Bloom filter of seen lines, in bytes (64 MiB: about 0.1 % false positives
    /// after 50 million distinct lines with 7 probes). Memory stays this size whatever the corpus.
    pub bloom_bytes: usize,
    /// Bits probed per line in the Bloom filter.
    pub bloom_hashes: u32,
    /// Lines whose normalised form is shorter than this (in characters) are never deduplicated.
    pub min_dedup_chars: usize,
    /// Run `c4-quality`.
    pub c4: bool,
    /// C4: lines with fewer words are dropped. 5 as in the T5 paper (JMLR version) and the
    /// TFDS `c4_utils` code; some write-ups of C4 swap this with `min_sentences` (3 words).
    #[serde(alias = "min_words")]
    pub min_words_per_line: usize,
    /// C4: pages with fewer sentences (after line filtering) are dropped. 3 as in C4.
    pub min_sentences: usize,
    /// C4: lines with a "word" longer than this (characters) are dropped (TFDS: 1000).
    pub max_word_chars: usize,
    /// C4: a page containing any of these words (whole words, case-insensitive) or phrases (with
    /// spaces, substrings of the lowercased page) is dropped. C4 used the LDNOOBW list; empty by
    /// default so that no list is shipped in the code.
    pub bad_words: Vec<String>,
    /// Run `english`.
    pub english: bool,
    /// `english`: minimum whatlang confidence for English (CCNet's fastText threshold, 0.5).
    pub min_english_confidence: f64,
    /// `english`: accept text with many English stopwords without running whatlang.
    pub english_fast_path: bool,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            line_dedup: true,
            bloom_bytes: 64 << 20,
            bloom_hashes: 7,
            min_dedup_chars: 10,
            c4: true,
            min_words_per_line: 5,
            min_sentences: 3,
            max_word_chars: 1000,
            bad_words: Vec::new(),
            english: true,
            min_english_confidence: 0.5,
            english_fast_path: true,
        }
    }
}

/// `line-dedup`, `c4-quality`, `english`, in that order (the language is judged on the cleaned
/// text, as CCNet does after deduplication), each when enabled.
pub fn stages(s: &WebSettings) -> Result<Vec<Box<dyn Stage>>, DataError> {
    if !(0.0..=1.0).contains(&s.min_english_confidence) {
        return Err(DataError::Invalid(format!(
            "web cleaner: min_english_confidence must be in [0, 1], got {}",
            s.min_english_confidence
        )));
    }
    if s.line_dedup && s.bloom_bytes < 8 {
        return Err(DataError::Invalid(format!(
            "web cleaner: bloom_bytes must be at least 8, got {}",
            s.bloom_bytes
        )));
    }
    let mut out: Vec<Box<dyn Stage>> = Vec::new();
    if s.line_dedup {
        out.push(Box::new(LineDedup::new(
            s.bloom_bytes,
            s.bloom_hashes,
            s.min_dedup_chars,
        )));
    }
    if s.c4 {
        out.push(Box::new(C4Quality::new(C4Rules {
            min_words_per_line: s.min_words_per_line,
            min_sentences: s.min_sentences,
            max_word_chars: s.max_word_chars,
            bad_words: s.bad_words.clone(),
        })));
    }
    if s.english {
        out.push(Box::new(EnglishFilter::new(
            s.min_english_confidence,
            s.english_fast_path,
        )));
    }
    Ok(out)
}
