//! A fast bulk encoder for SentencePiece-style BPE tokenizers. The `tokenizers` pipeline tracks
//! offsets through its normaliser and pre-tokenizer for every piece of every text, which dominates
//! the cost of tokenising a corpus. The words BPE sees never change between texts, so this encoder
//! cuts the text into those words itself and memoises each word's ids; the BPE model runs only on
//! a cache miss. It is built only for configurations whose output it reproduces exactly.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::Value;
use tokenizers::models::ModelWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{Model, Tokenizer};

use crate::error::TokenizerError;
use crate::tokenizer::LlamaTokenizer;
use crate::tokenizer_training::{normalizer_spec, pre_tokenizer_spec};

/// SentencePiece's whitespace symbol (U+2581).
pub(crate) const SPACE: char = '▁';

/// Words longer than this (in bytes) are not memoised: they are rare and would bloat the cache.
const MAX_CACHED_WORD: usize = 64;
/// The cache is cleared when it holds this many words, which bounds its memory (~100 MB).
const MAX_CACHED_WORDS: usize = 1 << 20;

/// Calls `f` with every word BPE sees in `text`: the text normalised LLaMA's way (`▁` prepended,
/// every space as `▁`) and cut before each `▁` that follows a character other than `▁`, so a run
/// of spaces joins the next word (SentencePiece's `allow_whitespace_only_pieces`); with
/// `split_digits`, every numeric character is a word of its own (the `Digits` pre-tokenizer, which
/// tests `char::is_numeric`). A literal `▁` counts as a space, as in the normalised text. `buf` is
/// scratch space reused between calls. Scans bytes and copies whole runs: this is the hot loop of
/// bulk encoding.
pub(crate) fn for_each_word<E>(
    text: &str,
    split_digits: bool,
    buf: &mut String,
    mut f: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    if text.is_empty() {
        return Ok(()); // the Prepend normaliser leaves an empty text empty
    }
    // The pending word is `spaces` times `▁` followed by `text[start..i]` (which has no space).
    let mut emit = |spaces: usize, run: &str| {
        if spaces == 0 {
            return f(run);
        }
        buf.clear();
        (0..spaces).for_each(|_| buf.push(SPACE));
        buf.push_str(run);
        f(buf)
    };
    let bytes = text.as_bytes();
    let (mut spaces, mut start, mut i) = (1, 0, 0);
    while i < bytes.len() {
        let b = bytes[i];
        let (is_space, is_digit, len) = if b == b' ' {
            (true, false, 1)
        } else if b.is_ascii() {
            (false, b.is_ascii_digit(), 1)
        } else {
            let c = text[i..].chars().next().unwrap_or(SPACE);
            (c == SPACE, c.is_numeric(), c.len_utf8())
        };
        if is_space {
            if start < i {
                emit(spaces, &text[start..i])?;
                spaces = 0;
            }
            spaces += 1;
            start = i + len;
        } else if split_digits && is_digit {
            if spaces > 0 || start < i {
                emit(spaces, &text[start..i])?;
                spaces = 0;
            }
            emit(0, &text[i..i + len])?;
            start = i + len;
        }
        i += len;
    }
    if spaces > 0 || start < bytes.len() {
        emit(spaces, &text[start..])?;
    }
    Ok(())
}

/// Encodes like [`LlamaTokenizer::encode`] (without BOS) with a per-word cache. Not `Sync`: give
/// each thread its own (`Clone` or build another).
#[derive(Clone)]
pub struct FastEncoder {
    model: BPE,
    split_digits: bool,
    /// Contents of the added tokens the pipeline would cut out of raw text (LLaMA's `<s>` …):
    /// a text containing one is encoded by the full pipeline instead.
    added: Vec<String>,
    pipeline: Tokenizer,
    cache: HashMap<String, Vec<u32>, BuildHasherDefault<WordHasher>>,
    buf: String,
}

/// A multiply-rotate hash over 8-byte chunks. SipHash (std's default) resists hash flooding,
/// which a bounded cache over a batch job's own corpus does not need, and costs a large share of
/// the encoder's time on short words.
#[derive(Default, Clone, Copy)]
struct WordHasher(u64);

impl WordHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(w) ^ (rest.len() as u64) << 59);
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weakest; the table indexes by them.
        self.0 ^ (self.0 >> 29)
    }
}

impl FastEncoder {
    /// `None` unless `tok` is a configuration this encoder reproduces exactly: the LLaMA normaliser
    /// (prepend `▁`, spaces to `▁`), a BPE model without dropout, no truncation or padding, added
    /// tokens matched on raw text only, and either the pre-tokenizer of
    /// [`crate::tokenizer_training`] or none at all with a vocabulary in which no piece has `▁`
    /// after another character (then BPE over the whole text cannot merge across our word
    /// boundaries, so word-by-word BPE is identical; the real LLaMA vocabulary qualifies).
    pub fn new(tok: &LlamaTokenizer) -> Option<Self> {
        let inner = tok.inner();
        let normalizer = serde_json::to_value(inner.get_normalizer()?).ok()?;
        if normalizer != canonical::<NormalizerWrapper>(normalizer_spec())? {
            return None;
        }
        if inner.get_truncation().is_some() || inner.get_padding().is_some() {
            return None;
        }
        let ModelWrapper::BPE(model) = inner.get_model() else {
            return None;
        };
        if model.dropout.is_some_and(|p| p > 0.0)
            || model.continuing_subword_prefix.is_some()
            || model.end_of_word_suffix.is_some()
        {
            return None;
        }
        let split_digits = match inner.get_pre_tokenizer() {
            Some(p) => {
                let ours = canonical::<PreTokenizerWrapper>(pre_tokenizer_spec())?;
                if serde_json::to_value(p).ok()? != ours {
                    return None;
                }
                true
            }
            None => {
                // Whole-text BPE: our cuts are exact only if no piece spans one, and with
                // `ignore_merges` the model would look the whole text up first.
                let spans = |p: &String| p.trim_start_matches(SPACE).contains(SPACE);
                if model.ignore_merges || model.get_vocab().keys().any(spans) {
                    return None;
                }
                false
            }
        };
        let mut added = Vec::new();
        for t in inner.get_added_tokens_decoder().values() {
            if t.normalized {
                return None; // matched on normalised text: not worth reproducing
            }
            added.push(t.content.clone());
        }
        Some(Self {
            model: model.clone(),
            split_digits,
            added,
            pipeline: inner.clone(),
            cache: HashMap::default(),
            buf: String::new(),
        })
    }

    /// Token ids of `text`, without BOS.
    pub fn encode(&mut self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut ids)?;
        Ok(ids)
    }

    /// Appends the token ids of `text` (without BOS) to `ids`.
    pub fn encode_into(&mut self, text: &str, ids: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let tokenizers_error = |e: tokenizers::Error| TokenizerError::Tokenizers(e.to_string());
        if self.added.iter().any(|a| text.contains(a.as_str())) {
            let enc = self
                .pipeline
                .encode(text, false)
                .map_err(tokenizers_error)?;
            ids.extend_from_slice(enc.get_ids());
            return Ok(());
        }
        let (model, cache) = (&self.model, &mut self.cache);
        for_each_word(text, self.split_digits, &mut self.buf, |word| {
            if let Some(hit) = cache.get(word) {
                ids.extend_from_slice(hit);
                return Ok(());
            }
            let start = ids.len();
            ids.extend(
                model
                    .tokenize(word)
                    .map_err(tokenizers_error)?
                    .iter()
                    .map(|t| t.id),
            );
            if word.len() <= MAX_CACHED_WORD {
                if cache.len() >= MAX_CACHED_WORDS {
                    cache.clear();
                }
                cache.insert(word.to_owned(), ids[start..].to_vec());
            }
            Ok(())
        })
    }
}

/// A component's specification as the `tokenizers` crate serialises it, for comparison.
fn canonical<T: serde::de::DeserializeOwned + serde::Serialize>(spec: Value) -> Option<Value> {
    serde_json::to_value(serde_json::from_value::<T>(spec).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str, split_digits: bool) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word::<()>(text, split_digits, &mut String::new(), |w| {
            out.push(w.to_string());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn words_follow_sentencepiece() {
        assert!(words("", true).is_empty());
        assert_eq!(words("Hello world", true), ["▁Hello", "▁world"]);
        assert_eq!(words(" a   b ", true), ["▁▁a", "▁▁▁b", "▁"]);
        assert_eq!(words("x12 ab3", true), ["▁x", "1", "2", "▁ab", "3"]);
        assert_eq!(words("  12", true), ["▁▁▁", "1", "2"]);
        assert_eq!(words("x12 ab3", false), ["▁x12", "▁ab3"]);
        assert_eq!(words("a\n\nb\tc", true), ["▁a\n\nb\tc"]);
        assert_eq!(words("a▁ ▁b½ ", true), ["▁a", "▁▁▁b", "½", "▁"]);
    }
}
