//! Trains a LLaMA-style tokenizer (Touvron et al., 2023, section 2.1): byte-pair encoding set up
//! as SentencePiece does it, with numbers split into single digits and unknown UTF-8 characters
//! decomposed into byte pieces.
//!
//! Conventions (the LLaMA tokenizer's, so the result loads and runs like it):
//! - Normaliser: prepend `▁`, then every space becomes `▁`; no Unicode normalisation (LLaMA's
//!   SentencePiece model uses the `identity` rule). A literal `▁` in the input is therefore read as
//!   a space and decodes as one: the one input `decode(encode(x)) == x` does not hold for, exactly
//!   as with SentencePiece.
//! - Words: a new word starts at every `▁` that follows another character, so a run of spaces joins
//!   the next word and whitespace-only pieces (indentation) can be learnt, as with LLaMA's
//!   `allow_whitespace_only_pieces`; every numeric character is a word of its own.
//! - Vocabulary: `<unk>` 0, `<s>` 1, `</s>` 2, the 256 byte pieces `<0x00>`…`<0xFF>` at 3…258
//!   (byte `b` is id `3 + b`, as in LLaMA), then the merged pieces in merge order, then the single
//!   characters kept by `character_coverage`. There is no `<pad>`: LLaMA trains on packed
//!   sequences and its vocabulary has none, so ours keeps LLaMA's ids.
//! - Special tokens are ordinary vocabulary entries, not "added tokens": the text `<s>` is encoded
//!   as characters, never as BOS, so `decode(encode(x)) == x` holds for text containing it.
//!   Training never forms a piece containing one of the reserved strings, and the decoder drops
//!   the three control pieces, so decoding skips BOS/EOS as for LLaMA.
//! - Decoder: the control pieces to nothing, `▁` to space, byte pieces to bytes, fuse, strip the
//!   one prepended space.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::{Tokenizer, Trainer};

use crate::error::TokenizerError;
use crate::tokenizer::LlamaTokenizer;
use crate::word_encoder::{SPACE, for_each_word};

/// The three control pieces, at ids 0, 1, 2.
pub const CONTROL_PIECES: [&str; 3] = ["<unk>", "<s>", "</s>"];
/// Id of the byte piece `<0x00>`; byte `b` is `BYTE_OFFSET + b`.
pub const BYTE_OFFSET: u32 = 3;
const RESERVED: usize = CONTROL_PIECES.len() + 256;

/// Settings of [`train_tokenizer`]; every field has a default (LLaMA's where it has one).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerTrainConfig {
    /// Size of the whole vocabulary, control and byte pieces included (LLaMA: 32,000).
    pub vocab_size: usize,
    /// A pair seen fewer times than this is never merged.
    pub min_frequency: u64,
    /// Fraction of the corpus's characters that must be pieces of their own; the rarest
    /// characters beyond it are left to byte fallback (SentencePiece's default, 0.9995).
    pub character_coverage: f64,
    /// Longest piece, in characters (SentencePiece's default, 16).
    pub max_piece_length: usize,
}

impl Default for TokenizerTrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32_000,
            min_frequency: 2,
            character_coverage: 0.9995,
            max_piece_length: 16,
        }
    }
}

/// The normaliser of LLaMA's `tokenizer.json`.
pub(crate) fn normalizer_spec() -> Value {
    json!({"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    ]})
}

/// The word split described in the module documentation, as `tokenizers` pre-tokenizers; it must
/// cut exactly as [`for_each_word`] with digits split (tested).
pub(crate) fn pre_tokenizer_spec() -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "▁*[^▁]+|▁+"}, "behavior": "Isolated", "invert": false},
        {"type": "Digits", "individual_digits": true}
    ]})
}

fn decoder_spec() -> Value {
    let mut steps: Vec<Value> = CONTROL_PIECES
        .iter()
        .map(|p| json!({"type": "Replace", "pattern": {"String": p}, "content": ""}))
        .collect();
    steps.extend([
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
        json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}),
    ]);
    json!({"type": "Sequence", "decoders": steps})
}

fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// Trains a tokenizer on `texts` (documents; streamed once, only word counts are kept).
pub fn train_tokenizer<I, S>(
    texts: I,
    cfg: &TokenizerTrainConfig,
) -> Result<LlamaTokenizer, TokenizerError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let fail = |m: String| Err(TokenizerError::Training(m));
    if cfg.vocab_size <= RESERVED {
        return fail(format!(
            "vocab_size {} leaves no room beyond the {RESERVED} control and byte pieces",
            cfg.vocab_size
        ));
    }
    if !(cfg.character_coverage > 0.0 && cfg.character_coverage <= 1.0) {
        return fail(format!(
            "character_coverage {} is not in (0, 1]",
            cfg.character_coverage
        ));
    }
    if cfg.max_piece_length == 0 {
        return fail("max_piece_length must be at least 1".into());
    }

    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut buf = String::new();
    for text in texts {
        for_each_word::<()>(text.as_ref(), true, &mut buf, |w| {
            match counts.get_mut(w) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(w.to_owned(), 1);
                }
            }
            Ok(())
        })
        .ok();
    }
    if counts.is_empty() {
        return fail("the training corpus is empty".into());
    }
    let alphabet = alphabet(&counts, cfg.character_coverage);
    let target = cfg.vocab_size - RESERVED;
    if alphabet.len() > target {
        return fail(format!(
            "character_coverage {} keeps {} characters, more than the {target} pieces \
             vocab_size {} leaves; lower the coverage or raise the vocabulary",
            cfg.character_coverage,
            alphabet.len(),
            cfg.vocab_size
        ));
    }
    let words = training_words(&counts, &alphabet);
    drop(counts);

    let mut trainer = BpeTrainer::builder()
        .vocab_size(target)
        .min_frequency(cfg.min_frequency)
        .show_progress(false)
        .initial_alphabet(alphabet.clone())
        .max_token_length(Some(cfg.max_piece_length))
        .build();
    let tk = |e: tokenizers::Error| TokenizerError::Tokenizers(e.to_string());
    // The trainer counts the words `process` returns, so each distinct word must come back as
    // often as it occurs; items "COUNT\0WORD" carry at most FEED_CHUNK occurrences each, which
    // bounds the memory a frequent word takes on a large corpus.
    const FEED_CHUNK: u64 = 1 << 16;
    let items = words.iter().flat_map(|(w, &n)| {
        (0..n.div_ceil(FEED_CHUNK))
            .map(move |k| format!("{}\0{w}", (n - k * FEED_CHUNK).min(FEED_CHUNK)))
    });
    trainer
        .feed(items, |item| {
            let parsed = item
                .split_once('\0')
                .and_then(|(c, w)| Some((c.parse().ok()?, w)));
            let Some((count, word)) = parsed else {
                return Err(format!("malformed training item {item:?}").into());
            };
            Ok(vec![word.to_owned(); count])
        })
        .map_err(tk)?;
    let mut model = BPE::default();
    trainer.train(&mut model).map_err(tk)?;

    let learnt = model.get_vocab().len();
    if learnt < target {
        return fail(format!(
            "the corpus yields only {} pieces with min_frequency {}, fewer than vocab_size {}; \
             add text or lower the vocabulary",
            learnt + RESERVED,
            cfg.min_frequency,
            cfg.vocab_size
        ));
    }
    let merges = serde_json::to_value(&model)
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?
        .get("merges")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    build(&model, merges)
}

/// The characters that are pieces: the most frequent ones covering `coverage` of all character
/// occurrences (ties by code point, for determinism), and always `▁`.
fn alphabet(counts: &HashMap<String, u64>, coverage: f64) -> HashSet<char> {
    let mut chars: HashMap<char, u64> = HashMap::new();
    for (w, &n) in counts {
        for c in w.chars() {
            *chars.entry(c).or_default() += n;
        }
    }
    let total: u64 = chars.values().sum();
    let mut sorted: Vec<(char, u64)> = chars.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = HashSet::from([SPACE]);
    let mut covered = 0u64;
    for (c, n) in sorted {
        if covered as f64 >= coverage * total as f64 {
            break;
        }
        covered += n;
        kept.insert(c);
    }
    kept
}

/// The words BPE learns from: each word cut at characters outside the alphabet (pieces never span
/// them; they are dropped and left to byte fallback) and before the `>` of any reserved string
/// (`<s>`, `<0x41>` …) so that no piece contains one: a piece equal to a byte piece would alias
/// its id, and the decoder erases control strings.
fn training_words(counts: &HashMap<String, u64>, alphabet: &HashSet<char>) -> HashMap<String, u64> {
    let reserved: HashSet<String> = CONTROL_PIECES
        .iter()
        .map(|s| s.to_string())
        .chain((0..=255u8).map(byte_piece))
        .collect();
    let mut out: HashMap<String, u64> = HashMap::new();
    let mut add = |s: &str, n: u64| {
        if !s.is_empty() {
            *out.entry(s.to_owned()).or_default() += n;
        }
    };
    for (w, &n) in counts {
        for part in w.split(|c: char| !alphabet.contains(&c)) {
            let mut start = 0;
            if part.contains('>') {
                for (i, _) in part.match_indices('<') {
                    let Some(close) = part[i..].find('>').map(|r| i + r) else {
                        break;
                    };
                    if reserved.contains(&part[i..=close]) {
                        add(&part[start..close], n);
                        start = close;
                    }
                }
            }
            add(&part[start..], n);
        }
    }
    out
}

/// Lays the trained pieces out after the reserved ones and assembles the tokenizer.
fn build(model: &BPE, merges: Value) -> Result<LlamaTokenizer, TokenizerError> {
    let mut pieces: Vec<(String, u32)> = model.get_vocab().into_iter().collect();
    // Merged pieces first (in the order they were learnt), then single characters, as in LLaMA.
    pieces.sort_by_key(|(p, id)| (p.chars().nth(1).is_none(), *id));
    let mut vocab = serde_json::Map::new();
    let names = CONTROL_PIECES
        .iter()
        .map(|s| s.to_string())
        .chain((0..=255u8).map(byte_piece))
        .chain(pieces.into_iter().map(|(p, _)| p));
    for (id, name) in names.enumerate() {
        vocab.insert(name, json!(id));
    }
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": normalizer_spec(),
        "pre_tokenizer": pre_tokenizer_spec(),
        "post_processor": null,
        "decoder": decoder_spec(),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": CONTROL_PIECES[0],
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }
    });
    let inner = Tokenizer::from_bytes(spec.to_string().as_bytes())
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
    Ok(LlamaTokenizer::wrap(inner))
}

/// Writes `tokenizer` as `tokenizer.json` at `path`, atomically: a reader sees the old file or the
/// whole new one (written to `path.tmp`, synced, then renamed).
pub fn save(tokenizer: &LlamaTokenizer, path: &Path) -> Result<(), TokenizerError> {
    use std::io::Write;
    let json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| TokenizerError::Io { path: p, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(json.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_strings_are_cut_from_training_words() {
        let counts = HashMap::from([("▁a<s>b<0x41></s>c<<unk>>".to_string(), 3)]);
        let alphabet = counts.keys().flat_map(|w| w.chars()).collect();
        let words = training_words(&counts, &alphabet);
        for w in words.keys() {
            for r in CONTROL_PIECES
                .iter()
                .map(|s| s.to_string())
                .chain([byte_piece(0x41)])
            {
                assert!(!w.contains(&r), "{w:?} contains {r:?}");
            }
        }
        assert_eq!(words.values().sum::<u64>(), 3 * words.len() as u64);
    }

    #[test]
    fn rare_characters_are_left_out_of_the_alphabet() {
        // 20 characters: `a` alone covers 90%; `b` is dropped, `▁` is always kept.
        let counts = HashMap::from([(format!("▁{}b", "a".repeat(18)), 1)]);
        let kept = alphabet(&counts, 0.9);
        assert_eq!(kept, HashSet::from(['▁', 'a']));
        let words = training_words(&counts, &kept);
        assert_eq!(words, HashMap::from([(format!("▁{}", "a".repeat(18)), 1)]));
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: TokenizerTrainConfig = toml::from_str("vocab_size = 2000").unwrap();
        assert_eq!(cfg.vocab_size, 2000);
        assert_eq!(cfg.max_piece_length, 16);
        assert_eq!(cfg.character_coverage, 0.9995);
        assert!(toml::from_str::<TokenizerTrainConfig>("vocab = 2000").is_err());
    }
}
