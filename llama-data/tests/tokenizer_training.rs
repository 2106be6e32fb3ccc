//! Tokenizer training on real text (../shared/data/corpus; skipped when absent) and the fast
//! encoder against the `tokenizers` pipeline, for trained tokenizers and the real LLaMA one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use llama_data::tokenizer_training::{BYTE_OFFSET, save};
use llama_data::{
    FastEncoder, LlamaTokenizer, TokenizerError, TokenizerTrainConfig, train_tokenizer,
};
use proptest::prelude::*;

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LLAMA_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    if dir.join("corpus").is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent", dir.join("corpus").display());
        None
    }
}

/// The `text` (or CCNet `raw_content`) field of every line of a JSONL file.
fn jsonl_texts(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let t = v.get("text").or_else(|| v.get("raw_content"))?;
            t.as_str().map(str::to_string)
        })
        .collect()
}

/// ~2.5 MB of training text: Wikipedia paragraphs, four plays, Botchan.
fn training_texts(dir: &Path) -> Vec<String> {
    let corpus = dir.join("corpus");
    let mut texts = jsonl_texts(&corpus.join("wikipedia/wiki_paragraphs.jsonl"));
    for book in [
        "hamlet_gut.txt",
        "macbeth_gut.txt",
        "othello_gut.txt",
        "lear_gut.txt",
        "botchan.txt",
    ] {
        let body = std::fs::read_to_string(corpus.join("books").join(book)).unwrap();
        texts.extend(body.split("\n\n").map(str::to_string));
    }
    texts
}

/// About `limit` bytes of other real text (Reddit, CommonCrawl, LaTeX), unseen in training.
fn other_texts(dir: &Path, limit: usize) -> Vec<String> {
    let corpus = dir.join("corpus");
    let mut texts = jsonl_texts(&corpus.join("qa/reddit_posts.jsonl"));
    texts.extend(jsonl_texts(&corpus.join("web/cc_en_head-0091.jsonl")));
    let mut latex: Vec<PathBuf> = std::fs::read_dir(corpus.join("latex"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    latex.sort();
    texts.extend(
        latex
            .iter()
            .take(40)
            .filter_map(|p| std::fs::read_to_string(p).ok()),
    );
    let mut total = 0;
    texts
        .into_iter()
        .take_while(|t| {
            total += t.len();
            total <= limit
        })
        .collect()
}

const VOCAB: usize = 2000;

/// One tokenizer trained at vocabulary 2000, shared by the tests.
fn trained() -> Option<&'static LlamaTokenizer> {
    static TOK: OnceLock<Option<LlamaTokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = data_dir()?;
        let cfg = TokenizerTrainConfig {
            vocab_size: VOCAB,
            ..Default::default()
        };
        let start = Instant::now();
        let tok = train_tokenizer(training_texts(&dir), &cfg).unwrap();
        eprintln!("trained vocabulary {VOCAB} in {:.1?}", start.elapsed());
        Some(tok)
    })
    .as_ref()
}

fn pieces(tok: &LlamaTokenizer, text: &str) -> Vec<String> {
    tok.encode(text, false)
        .unwrap()
        .iter()
        .map(|&id| tok.inner().id_to_token(id).unwrap())
        .collect()
}

#[test]
fn vocabulary_is_laid_out_like_llamas() {
    let Some(tok) = trained() else { return };
    assert_eq!(tok.vocab_size(), VOCAB);
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
    let inner = tok.inner();
    for (id, piece) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        assert_eq!(inner.token_to_id(piece), Some(id as u32));
    }
    for b in 0..=255u32 {
        assert_eq!(
            inner.id_to_token(BYTE_OFFSET + b),
            Some(format!("<0x{b:02X}>"))
        );
    }
    // Merged pieces follow the bytes; single characters come last; ids are dense.
    let first = inner.id_to_token(259).unwrap();
    assert!(first.chars().count() >= 2, "{first:?}");
    assert_eq!(
        inner.id_to_token(VOCAB as u32 - 1).unwrap().chars().count(),
        1
    );
    assert_eq!(inner.id_to_token(VOCAB as u32), None);
    let vocab = inner.get_vocab(true);
    assert!(
        vocab
            .keys()
            .all(|p| p.chars().count() <= 16 || p.starts_with("<0x"))
    );
    assert!(inner.get_added_tokens_decoder().is_empty());
}

#[test]
fn numbers_are_split_into_digits() {
    let Some(tok) = trained() else { return };
    assert_eq!(pieces(tok, "12345"), ["▁", "1", "2", "3", "4", "5"]);
    let p = pieces(tok, "in 2024, x42");
    assert!(
        p.iter()
            .all(|p| !p.chars().any(char::is_numeric) || p.chars().count() == 1),
        "{p:?}"
    );
    assert_eq!(
        p.iter()
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
            .count(),
        6
    );
}

#[test]
fn unknown_characters_fall_back_to_bytes() {
    let Some(tok) = trained() else { return };
    // U+1D518 is four UTF-8 bytes; 語 never occurs in the training text.
    assert_eq!(
        pieces(tok, "𝔘"),
        ["▁", "<0xF0>", "<0x9D>", "<0x94>", "<0x98>"]
    );
    let ids = tok.encode("a語", false).unwrap();
    assert!(ids.iter().all(|&id| id != 0), "no <unk>: {ids:?}");
    assert_eq!(&ids[ids.len() - 3..], [3 + 0xE8, 3 + 0xAA, 3 + 0x9E]);
    assert_eq!(tok.decode(&ids).unwrap(), "a語");
}

#[test]
fn control_strings_in_text_are_text() {
    let Some(tok) = trained() else { return };
    let text = "<s>x</s> <unk><0x41> <s>";
    let ids = tok.encode(text, false).unwrap();
    assert!(ids.iter().all(|&id| id > 2), "{ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), text);
    // BOS and EOS themselves decode to nothing.
    let mut with = tok.encode("Hello there", true).unwrap();
    with.push(2);
    assert_eq!(with[0], 1);
    assert_eq!(tok.decode(&with).unwrap(), "Hello there");
}

#[test]
fn a_literal_whitespace_symbol_reads_as_a_space() {
    // SentencePiece's convention: U+2581 is the space symbol, so it decodes as a space.
    let Some(tok) = trained() else { return };
    assert_eq!(
        tok.encode("a▁b", false).unwrap(),
        tok.encode("a b", false).unwrap()
    );
    assert_eq!(
        tok.decode(&tok.encode("▁a▁", false).unwrap()).unwrap(),
        " a "
    );
}

fn fast(tok: &LlamaTokenizer) -> FastEncoder {
    FastEncoder::new(tok).expect("the configuration is recognised")
}

/// Text built from pieces that stress the tokenizer: spaces at either end and in runs, newlines,
/// tabs, control characters, digits, emoji, CJK, combining marks, control-piece look-alikes.
fn tricky_text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\u{0}", "\u{7f}", "\u{200b}", "the", "The",
        " of", "Hamlet", "ing", "1", "42", "3.14", "½", "²", "٣", "🦙", "👍🏽", "語", "日本", "é",
        "e\u{301}", "𝔘", "<s>", "</s>", "<unk>", "<0x41>", "<", ">", ".", ",", "'", "\"", "-",
    ]);
    prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn decode_inverts_encode(text in prop_oneof![any::<String>(), tricky_text()]) {
        let Some(tok) = trained() else { return Ok(()) };
        // U+2581 is the space symbol (see `a_literal_whitespace_symbol_reads_as_a_space`).
        let text = text.replace('▁', "_");
        let ids = tok.encode(&text, false).unwrap();
        prop_assert_eq!(tok.decode(&ids).unwrap(), text.clone());
        let with_bos = tok.encode(&text, true).unwrap();
        prop_assert_eq!(tok.decode(&with_bos).unwrap(), text.clone());
        prop_assert_eq!(fast(tok).encode(&text).unwrap(), ids);
    }

    #[test]
    fn fast_encoder_matches_the_pipeline(text in prop_oneof![any::<String>(), tricky_text()]) {
        let Some(tok) = trained() else { return Ok(()) };
        // Literal U+2581 included: both read it as a space.
        let mut enc = fast(tok);
        prop_assert_eq!(enc.encode(&text).unwrap(), tok.encode(&text, false).unwrap());
        // Again from the cache.
        prop_assert_eq!(enc.encode(&text).unwrap(), tok.encode(&text, false).unwrap());
    }
}

#[test]
fn fast_encoder_matches_the_pipeline_on_real_text() {
    let Some(tok) = trained() else { return };
    let Some(dir) = data_dir() else { return };
    let texts = other_texts(&dir, 1 << 20);
    assert!(texts.iter().map(String::len).sum::<usize>() > 900_000);
    let mut enc = fast(tok);
    for text in &texts {
        assert_eq!(enc.encode(text).unwrap(), tok.encode(text, false).unwrap());
        assert_eq!(
            tok.decode(&enc.encode(text).unwrap()).unwrap(),
            text.replace('▁', " ")
        );
    }
}

#[test]
fn saved_tokenizer_loads_back_identical() {
    let Some(tok) = trained() else { return };
    let Some(dir) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    save(tok, &path).unwrap();
    assert!(!tmp.path().join("tokenizer.json.tmp").exists());
    let back = LlamaTokenizer::from_file(&path).unwrap();
    assert_eq!(
        (back.bos, back.eos, back.vocab_size()),
        (tok.bos, tok.eos, VOCAB)
    );
    let mut enc = fast(&back);
    for text in other_texts(&dir, 200_000)
        .iter()
        .chain([&"<s> 12 🦙\t x ".to_string()])
    {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(back.encode(text, true).unwrap(), ids);
        assert_eq!(enc.encode(text).unwrap(), ids[1..]);
        assert_eq!(back.decode(&ids).unwrap(), tok.decode(&ids).unwrap());
    }
    // A second save replaces the file.
    save(&back, &path).unwrap();
    assert_eq!(
        LlamaTokenizer::from_file(&path).unwrap().vocab_size(),
        VOCAB
    );
    assert!(matches!(
        save(tok, &tmp.path().join("no/such/dir.json")),
        Err(TokenizerError::Io { .. })
    ));
}

#[test]
fn training_is_deterministic() {
    let texts = [
        "the cat sat on the mat",
        "the dog sat on the log 12",
        "a cat and a dog",
    ];
    let cfg = TokenizerTrainConfig {
        vocab_size: 290,
        min_frequency: 1,
        ..Default::default()
    };
    let a = train_tokenizer(texts, &cfg).unwrap();
    let b = train_tokenizer(texts, &cfg).unwrap();
    assert_eq!(
        a.inner().to_string(false).unwrap(),
        b.inner().to_string(false).unwrap()
    );
    assert_eq!(a.vocab_size(), 290);
    assert_eq!(
        a.decode(&a.encode(" the cat 7 ", true).unwrap()).unwrap(),
        " the cat 7 "
    );
}

#[test]
fn bad_settings_and_corpora_are_errors() {
    let texts = ["the cat sat on the mat"];
    let err = |cfg: TokenizerTrainConfig| {
        matches!(
            train_tokenizer(texts, &cfg),
            Err(TokenizerError::Training(_))
        )
    };
    let base = TokenizerTrainConfig {
        vocab_size: 270,
        min_frequency: 1,
        ..Default::default()
    };
    assert!(err(TokenizerTrainConfig {
        vocab_size: 259,
        ..base.clone()
    }));
    assert!(err(TokenizerTrainConfig {
        character_coverage: 0.0,
        ..base.clone()
    }));
    assert!(err(TokenizerTrainConfig {
        character_coverage: f64::NAN,
        ..base.clone()
    }));
    assert!(err(TokenizerTrainConfig {
        max_piece_length: 0,
        ..base.clone()
    }));
    // More pieces than the text can yield, and more characters than the vocabulary holds.
    assert!(err(TokenizerTrainConfig {
        vocab_size: 5000,
        ..base.clone()
    }));
    assert!(err(TokenizerTrainConfig {
        vocab_size: 262,
        ..base.clone()
    }));
    assert!(matches!(
        train_tokenizer(Vec::<String>::new(), &base),
        Err(TokenizerError::Training(_))
    ));
}

fn llama(dir: &Path, file: &str) -> LlamaTokenizer {
    LlamaTokenizer::from_file(&dir.join("tokenizer").join(file)).unwrap()
}

#[test]
fn fast_encoder_reproduces_the_llama_tokenizer() {
    let Some(dir) = data_dir() else { return };
    let inp = std::fs::read_to_string(dir.join("tokenizer/llama_reference_cases.inp")).unwrap();
    let mut cases: Vec<String> = inp
        .split("\n__ggml_vocab_test__\n")
        .map(str::to_string)
        .collect();
    cases.extend(["<s>Hello</s> <unk>".to_string(), " 12 ²). a".to_string()]);
    cases.extend(other_texts(&dir, 300_000));
    for file in ["llama-tokenizer.json", "llama-tokenizer.model"] {
        let tok = llama(&dir, file);
        let mut enc = fast(&tok);
        for text in &cases {
            assert_eq!(
                enc.encode(text).unwrap(),
                tok.encode(text, false).unwrap(),
                "{file}: {text:?}"
            );
        }
    }
}

#[test]
fn unrecognised_configurations_are_refused() {
    let Some(dir) = data_dir() else { return };
    let json = std::fs::read_to_string(dir.join("tokenizer/llama-tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.json");
    std::fs::write(&path, v.to_string()).unwrap();
    assert!(FastEncoder::new(&LlamaTokenizer::from_file(&path).unwrap()).is_none());
    v["pre_tokenizer"] = serde_json::Value::Null;
    v["normalizer"] = serde_json::json!({"type": "NFKC"});
    std::fs::write(&path, v.to_string()).unwrap();
    assert!(FastEncoder::new(&LlamaTokenizer::from_file(&path).unwrap()).is_none());
}

/// Throughput of the pipeline and of the fast encoder over ~30 MB of the corpus, by hand:
/// `cargo test --release -p llama-data --test tokenizer_training -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let Some(dir) = data_dir() else { return };
    let corpus = dir.join("corpus");
    let mut texts = training_texts(&dir);
    for book in std::fs::read_dir(corpus.join("books")).unwrap() {
        let body = std::fs::read_to_string(book.unwrap().path()).unwrap();
        texts.extend(body.split("\n\n").map(str::to_string));
    }
    texts.extend(other_texts(&dir, 8 << 20));
    for f in [
        "web/amazon_reviews.jsonl",
        "web/nyt_articles.jsonl",
        "web/cc_en_head-0174.jsonl",
    ] {
        texts.extend(jsonl_texts(&corpus.join(f)));
    }
    for tex in std::fs::read_dir(corpus.join("latex")).unwrap() {
        texts.extend(std::fs::read_to_string(tex.unwrap().path()).ok());
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    let mb = bytes as f64 / 1e6;
    let start = Instant::now();
    let cfg = TokenizerTrainConfig {
        vocab_size: 32_000,
        ..Default::default()
    };
    let trained = train_tokenizer(texts.iter(), &cfg);
    eprintln!(
        "training at 32000 on {mb:.1} MB: {:.1?} ({})",
        start.elapsed(),
        trained
            .as_ref()
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| e.to_string())
    );
    let mut toks = vec![("LLaMA", llama(&dir, "llama-tokenizer.json"))];
    if let Ok(t) = trained {
        toks.insert(0, ("trained 32000", t));
    }
    for (name, tok) in &toks {
        let start = Instant::now();
        let mut n = 0usize;
        for t in &texts {
            n += tok.encode(t, false).unwrap().len();
        }
        let pipeline = start.elapsed().as_secs_f64();
        let mut enc = fast(tok);
        let start = Instant::now();
        let mut m = 0usize;
        for t in &texts {
            m += enc.encode(t).unwrap().len();
        }
        let quick = start.elapsed().as_secs_f64();
        assert_eq!(n, m);
        let start = Instant::now();
        for t in &texts {
            m -= enc.encode(t).unwrap().len();
        }
        let warm = start.elapsed().as_secs_f64();
        assert_eq!(m, 0);
        eprintln!(
            "{name}: {mb:.1} MB, {n} tokens; pipeline {:.2} MB/s, fast encoder {:.2} MB/s \
             ({:.1}x), {:.2} MB/s on a second pass (warm cache)",
            mb / pipeline,
            mb / quick,
            pipeline / quick,
            mb / warm
        );
    }
}
