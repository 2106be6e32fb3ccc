//! The `llama` binary as a user runs it.

use std::process::Command;

fn llama(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llama"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn params_json_gives_the_papers_exact_counts() {
    for (preset, params) in [
        ("llama-7b", 6_738_415_616u64),
        ("llama-13b", 13_015_864_320),
        ("llama-33b", 32_528_943_616),
        ("llama-65b", 65_285_660_672),
    ] {
        let (code, out, _) = llama(&["params", "--preset", preset, "--json"]);
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["params"].as_u64(), Some(params), "{preset}");
        assert_eq!(v.as_object().unwrap().len(), 3);
        assert!(v["non_embedding_params"].as_u64().unwrap() < params);
        assert!(
            v["flops_per_token"].as_u64().unwrap()
                > 6 * v["non_embedding_params"].as_u64().unwrap()
        );
    }
    let (code, out, _) = llama(&["params", "--preset", "llama-7b"]);
    assert_eq!(code, 0);
    assert!(out.contains("6,738,415,616"), "{out}");
}

#[test]
fn params_reads_config_files_and_reports_bad_ones_in_one_line() {
    let dir = std::env::temp_dir().join(format!("llama-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("m.toml");
    std::fs::write(
        &good,
        "vocab_size = 32000\ndim = 4096\nn_layers = 32\nn_heads = 32\nmax_seq_len = 2048\n",
    )
    .unwrap();
    let (code, out, _) = llama(&["params", "--config", good.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("6738415616"), "{out}");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"vocab_size": 100, "dim": 30, "n_layers": 2, "n_heads": 4, "max_seq_len": 8}"#,
    )
    .unwrap();
    let (code, _, err) = llama(&["params", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not divisible by n_heads"), "{err}");
    let (code, _, err) = llama(&["params", "--config", "/nonexistent/x.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/x.toml"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn asking_for_a_backend_that_is_not_compiled_in_names_the_feature() {
    for (device, feature) in [
        ("cuda:0", "cuda"),
        ("tch-cuda:0", "tch"),
        ("wgpu", "wgpu"),
        ("flex", "flex"),
    ] {
        let compiled = match feature {
            "cuda" => cfg!(feature = "cuda"),
            "tch" => cfg!(feature = "tch"),
            "wgpu" => cfg!(feature = "wgpu"),
            _ => cfg!(feature = "flex"),
        };
        if compiled {
            continue;
        }
        let (code, _, err) = llama(&["--device", device, "params", "--preset", "tiny"]);
        assert_eq!(code, 1);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(&format!("--features {feature}")), "{err}");
    }
    let (code, _, err) = llama(&["--device", "tpu", "devices"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown device"));
    let (code, out, _) = llama(&["devices"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == "ndarray"));
}

#[test]
fn check_runs_on_the_cpu() {
    let (code, out, err) = llama(&["check", "--devices", "ndarray", "--seq", "8", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[1]["logits_rel"].as_f64(), Some(0.0));
    assert!(rows[1]["cached_vs_full_rel"].as_f64().unwrap() < 1e-5);
}
