//! The LLaMA tokenizer in its three published forms reproduces llama.cpp's 47 reference cases
//! (../shared/data/tokenizer; skipped when absent).

use std::path::PathBuf;

use llama_data::LlamaTokenizer;

fn tokenizer_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LLAMA_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
        .join("tokenizer");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} is absent", dir.display());
        None
    }
}

/// `(input, expected ids)` as llama.cpp's test-tokenizer-0 reads them.
fn cases(dir: &std::path::Path) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(dir.join("llama_reference_cases.inp")).unwrap();
    let out = std::fs::read_to_string(dir.join("llama_reference_cases.out")).unwrap();
    let inputs: Vec<String> = inp
        .split("\n__ggml_vocab_test__\n")
        .map(str::to_string)
        .collect();
    let outputs: Vec<Vec<u32>> = out
        .split('\n') // 47 pieces: the last case, like the input after the final separator, is empty
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    let n = outputs.len();
    assert_eq!(n, 47);
    inputs.into_iter().take(n).zip(outputs).collect()
}

#[test]
fn all_three_forms_reproduce_the_reference_cases() {
    let Some(dir) = tokenizer_dir() else { return };
    let cases = cases(&dir);
    for file in [
        "llama-tokenizer.json",
        "llama-tokenizer.model",
        "llama-vocab.gguf",
    ] {
        let tok = LlamaTokenizer::from_file(&dir.join(file)).unwrap();
        assert_eq!(tok.vocab_size(), 32_000, "{file}");
        assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)), "{file}");
        let mut failed = Vec::new();
        for (text, expected) in &cases {
            let got = tok.encode(text, false).unwrap();
            if &got != expected {
                failed.push(format!("{text:?}: got {got:?}, expected {expected:?}"));
            }
        }
        assert!(
            failed.is_empty(),
            "{file}: {} of {} cases differ:\n{}",
            failed.len(),
            cases.len(),
            failed.join("\n")
        );
        assert_eq!(
            tok.encode("Hello world", true).unwrap(),
            vec![1, 15043, 3186]
        );
        assert_eq!(
            tok.decode(&tok.encode(" this is 🦙.cpp", true).unwrap())
                .unwrap(),
            " this is 🦙.cpp"
        );
    }
}

#[test]
fn broken_files_are_errors() {
    let tmp = std::env::temp_dir().join(format!("llama-tok-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for (name, body) in [
        ("a.json", &b"{\"model\": 3}"[..]),
        ("b.gguf", &b"GGUF\x03\x00\x00\x00\x01"[..]),
        ("c.model", &b"\x0a\xff\xff"[..]),
    ] {
        let p = tmp.join(name);
        std::fs::write(&p, body).unwrap();
        let e = LlamaTokenizer::from_file(&p)
            .err()
            .expect("an error")
            .to_string();
        assert!(e.contains(name), "{e}");
    }
    assert!(LlamaTokenizer::from_file(&tmp.join("missing.model")).is_err());
    std::fs::remove_dir_all(&tmp).ok();
}
