//! The `llama` binary as a user runs it.

mod common;
use common::llama;

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
    for (device, feature, compiled) in [
        ("cuda:0", "cuda", cfg!(feature = "cuda-untuned")),
        ("tch-cuda:0", "tch", cfg!(feature = "tch")),
        ("wgpu", "wgpu", cfg!(feature = "wgpu")),
        ("flex", "flex", cfg!(feature = "flex")),
    ] {
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
fn bf16_on_a_backend_without_bf16_arithmetic_is_one_clear_line() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/train/tiny-sample.toml"
    );
    let out = std::env::temp_dir().join(format!("llama-bf16-refused-{}", std::process::id()));
    let args = ["--device", "ndarray", "train", "--config", config, "--out"];
    let mut argv = args.to_vec();
    let out_s = out.to_string_lossy().into_owned();
    argv.extend([out_s.as_str(), "--precision", "bf16"]);
    let (code, _, err) = llama(&argv);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("bf16") && err.contains("not supported"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run writes nothing");
    let (code, _, err) = llama(&["train", "--config", config, "--precision", "fp8"]);
    assert_eq!(code, 2, "clap rejects it: {err}");
    assert!(err.contains("fp8"), "{err}");
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

/// Row 0 of a parity fixture: its tokens and the float64 logits transformers computed for them.
fn fixture_row(name: &str) -> (std::path::PathBuf, Vec<i64>, Vec<f64>, usize) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../llama-model/tests/fixtures/hf")
        .join(name);
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tok = st.tensor("tokens").unwrap();
    let t = tok.shape()[1];
    let tokens: Vec<i64> = tok
        .data()
        .chunks_exact(8)
        .take(t)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let lg = st.tensor("logits").unwrap();
    let v = lg.shape()[2];
    let logits: Vec<f64> = lg
        .data()
        .chunks_exact(8)
        .take(t * v)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (dir, tokens, logits, v)
}

#[test]
fn score_matches_transformers_on_a_hugging_face_checkpoint() {
    for name in ["mha-untied", "gqa-tied", "gqa-sharded"] {
        let (dir, tokens, logits, v) = fixture_row(name);
        let t = tokens.len();
        let mut nll = 0.0;
        let mut argmax = vec![];
        for p in 0..t {
            let row = &logits[p * v..(p + 1) * v];
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            argmax.push(row.iter().position(|&x| x == max).unwrap() as u64);
            if p + 1 < t {
                let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                nll += lse - row[tokens[p + 1] as usize];
            }
        }
        let expected = nll / (t - 1) as f64;
        let ids = std::env::temp_dir().join(format!("ids-{name}-{}.json", std::process::id()));
        std::fs::write(&ids, serde_json::to_string(&tokens).unwrap()).unwrap();
        // The Hugging Face directory, and for two fixtures its Meta-layout twin.
        let meta = dir.join("../../meta").join(name);
        let mut dirs = vec![dir.clone()];
        if meta.is_dir() {
            dirs.push(meta);
        }
        // And our own layout, saved from the imported model.
        let native =
            std::env::temp_dir().join(format!("llama-native-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&native).ok();
        let model =
            llama_model::load_hf::<burn::backend::NdArray>(&dir, &Default::default()).unwrap();
        llama_model::save_native(&model, &native).unwrap();
        dirs.push(native.clone());
        for dir in dirs {
            let (code, out, err) = llama(&[
                "--device",
                "ndarray",
                "score",
                "--checkpoint",
                dir.to_str().unwrap(),
                "--ids",
                ids.to_str().unwrap(),
                "--json",
            ]);
            assert_eq!(code, 0, "{err}");
            let r: serde_json::Value = serde_json::from_str(&out).unwrap();
            let got = r["nll_mean"].as_f64().unwrap();
            assert!(
                (got - expected).abs() / expected < 1e-5,
                "{name}: {got} vs {expected}"
            );
            assert_eq!(r["n_predicted"].as_u64(), Some(t as u64 - 1));
            let got_argmax: Vec<u64> = r["argmax"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(got_argmax, argmax, "{name}");
        }
        std::fs::remove_file(&ids).ok();
        std::fs::remove_dir_all(&native).ok();
    }
}

#[test]
fn score_reports_bad_input_in_one_line() {
    let (dir, ..) = fixture_row("mha-untied");
    let d = dir.to_str().unwrap();
    let tmp = std::env::temp_dir().join(format!("llama-score-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let file = |n: &str, body: &str| {
        let p = tmp.join(n);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    for (ids, needle) in [
        (file("a.json", "[1, 2, 9999]"), "outside the vocabulary"),
        (file("b.json", "[1]"), "at least 2"),
        (file("c.json", "{\"ids\": 3}"), "not a JSON array"),
    ] {
        let (code, _, err) = llama(&["score", "--checkpoint", d, "--ids", &ids]);
        assert_eq!(code, 1);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    let ok = file("d.json", "[1, 2, 3]");
    let (code, _, err) = llama(&["score", "--checkpoint", tmp.to_str().unwrap(), "--ids", &ok]);
    assert_eq!(code, 1);
    assert!(err.contains("not a checkpoint"), "{err}");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn generate_runs_end_to_end_with_the_llama_tokenizer() {
    let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/tokenizer/llama-tokenizer.model");
    if !tokenizer.is_file() {
        eprintln!("skipping: {} is absent", tokenizer.display());
        return;
    }
    // A random model with the LLaMA vocabulary, exported as a Hugging Face directory.
    let dir = std::env::temp_dir().join(format!("llama-gen-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let cfg = llama_model::LlamaConfig {
        multiple_of: 16,
        ..llama_model::LlamaConfig::llama(32_000, 16, 1, 2, 64)
    };
    let model = cfg
        .init::<burn::backend::NdArray>(&Default::default())
        .unwrap();
    llama_model::save_hf(&model, &dir).unwrap();
    let run_on = |device: &str, extra: &[&str], prompts: &[&str]| {
        let mut args = vec![
            "--device",
            device,
            "generate",
            "--checkpoint",
            dir.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--max-new-tokens",
            "6",
            "--json",
        ];
        args.extend(extra);
        for p in prompts {
            args.extend(["--prompt", p]);
        }
        let (code, out, err) = llama(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let run = |prompts: &[&str]| run_on("ndarray", &[], prompts);
    let batch = run(&["Hello world", "The llama is"]);
    assert_eq!(batch.as_array().unwrap().len(), 2);
    let alone = run(&["The llama is"]);
    assert_eq!(alone[0]["ids"], batch[1]["ids"]);
    let ids = batch[0]["ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 6);
    assert!(batch[0]["text"].is_string());
    // bf16 on Flex: the checkpoint's projections are read straight into bf16 (`load_hf_as`).
    if cfg!(feature = "flex") {
        let bf16 = ["--precision", "bf16"];
        let batch = run_on("flex", &bf16, &["Hello world", "The llama is"]);
        let alone = run_on("flex", &bf16, &["The llama is"]);
        assert_eq!(alone[0]["ids"], batch[1]["ids"]);
        let ids = batch[0]["ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 6);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_phases_split_a_training_step() {
    let (code, out, err) = llama(&[
        "--device", "ndarray", "bench", "--preset", "tiny", "--batch", "2", "--seq", "16",
        "--warmup", "1", "--iters", "3", "--phases", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let part = |k: &str| v["phases"][k].as_f64().unwrap_or(-1.0);
    let parts = ["forward_s", "backward_s", "optimizer_s"].map(part);
    assert!(parts.iter().all(|&p| p > 0.0), "{v}");
    // Synchronised parts cannot be much faster than the whole step they split (slack for
    // the medians of different steps on a shared machine).
    let step = v["median_step_s"].as_f64().unwrap();
    assert!(parts.iter().sum::<f64>() > 0.5 * step, "{v}");
    // Without the flag there is no such field.
    let (code, out, err) = llama(&[
        "--device", "ndarray", "bench", "--preset", "tiny", "--batch", "1", "--seq", "8",
        "--warmup", "0", "--iters", "1", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("median_step_s") && !out.contains("phases"),
        "{out}"
    );
}

#[test]
fn bench_times_train_prefill_decode_and_generate_steps() {
    for mode in ["train", "prefill", "decode", "generate"] {
        let (code, out, err) = llama(&[
            "--device",
            "ndarray",
            "bench",
            "--preset",
            "tiny",
            "--mode",
            mode,
            "--batch",
            "2",
            "--seq",
            "16",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--peak-flops",
            "1e12",
            "--peak-bandwidth",
            "1e11",
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["mode"], mode);
        assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["mfu"].as_f64().unwrap() > 0.0, "{v}");
        if mode == "decode" {
            // The cache at the median timed step: 16 prompt tokens, 1 warm-up, 2 / 2 timed.
            let cfg = llama_model::LlamaConfig::preset("tiny").unwrap();
            let bytes = cfg.decode_bytes(2, 18, 4, 4);
            assert_eq!(v["decode_bytes"].as_u64(), Some(bytes), "{v}");
            let step = v["median_step_s"].as_f64().unwrap();
            let mbu = v["mbu"].as_f64().unwrap();
            assert!(
                (mbu - bytes as f64 / step / 1e11).abs() < 1e-9 * mbu.max(1.0),
                "{v}"
            );
            // Two more steps queued back to back (positions 19 and 20; the upper middle, 20).
            let pipelined = v["pipelined_step_s"].as_f64().unwrap();
            let bytes = cfg.decode_bytes(2, 20, 4, 4);
            let mbu = v["pipelined_mbu"].as_f64().unwrap();
            assert!(pipelined > 0.0, "{v}");
            assert!(
                (mbu - bytes as f64 / pipelined / 1e11).abs() < 1e-9 * mbu.max(1.0),
                "{v}"
            );
        } else if mode == "generate" {
            // The mean of 2 decode steps (cache at 16 + 1) after one warm-up generation.
            let cfg = llama_model::LlamaConfig::preset("tiny").unwrap();
            assert_eq!(
                v["decode_bytes"].as_u64(),
                Some(cfg.decode_bytes(2, 17, 4, 4))
            );
            assert!(v["prompt_s"].as_f64().unwrap() > 0.0, "{v}");
            assert_eq!(v["warmup_steps_s"].as_array().unwrap().len(), 1, "{v}");
            assert_eq!(v["decoder"], "eager", "{v}");
            assert!(v.get("pipelined_step_s").is_none(), "{v}");
            assert_eq!(v["sampling"]["temperature"], 0.8, "{v}");
            assert_eq!(v["sampling"]["top_p"], 0.95, "{v}");
        } else {
            assert!(
                v.get("mbu").is_none()
                    && v.get("decode_bytes").is_none()
                    && v.get("pipelined_step_s").is_none()
                    && v.get("prompt_s").is_none(),
                "{v}"
            );
        }
        assert_eq!(
            (v["batch"].as_u64(), v["seq"].as_u64()),
            (Some(2), Some(16))
        );
    }
    // The draw is chosen with --temperature, --top-k and --top-p, in generate mode only.
    let (code, out, err) = llama(&[
        "--device",
        "ndarray",
        "bench",
        "--preset",
        "tiny",
        "--mode",
        "generate",
        "--batch",
        "1",
        "--seq",
        "8",
        "--warmup",
        "0",
        "--iters",
        "3",
        "--temperature",
        "0.5",
        "--top-k",
        "5",
        "--top-p",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["sampling"],
        serde_json::json!({"temperature": 0.5, "top_k": 5, "top_p": 1.0}),
        "{v}"
    );
    let (code, _, err) = llama(&[
        "--device",
        "ndarray",
        "bench",
        "--preset",
        "tiny",
        "--mode",
        "decode",
        "--temperature",
        "0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("apply to --mode generate"), "{err}");
    // Room in tiny's 256 positions for the timed steps but not for the pipelined ones.
    let (code, out, err) = llama(&[
        "--device", "ndarray", "bench", "--preset", "tiny", "--mode", "decode", "--batch", "1",
        "--seq", "253", "--warmup", "1", "--iters", "2", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["median_step_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v.get("pipelined_step_s").is_none(), "{v}");
    // The config benches/pytorch_reference.py builds its model from.
    let (code, out, _) = llama(&["params", "--preset", "125m", "--model-json"]);
    assert_eq!(code, 0);
    let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (c["dim"].as_u64(), c["n_layers"].as_u64()),
        (Some(768), Some(12))
    );
    let (hidden, multiple) = (
        c["ffn_hidden"].as_u64().unwrap(),
        c["multiple_of"].as_u64().unwrap(),
    );
    assert!(hidden.is_multiple_of(multiple), "{c}");
    assert!(c["params"].as_u64().unwrap() > 100_000_000, "{c}");
    let (code, _, err) = llama(&[
        "--device", "ndarray", "bench", "--preset", "tiny", "--dtype", "bf16",
    ]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bf16"), "{err}");
    let (code, _, err) = llama(&[
        "--device", "ndarray", "bench", "--preset", "tiny", "--seq", "100000",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("max_seq_len"), "{err}");
}

#[test]
fn bad_comparison_knobs_in_the_environment_are_one_clear_line() {
    for (var, value) in [
        ("LLAMA_OPTIM_BUCKET_ELEMS", "lots"),
        ("LLAMA_OPTIM_BUCKET_ELEMS", "0"),
        ("LLAMA_ATTENTION", "flash"),
        ("LLAMA_LOSS", "fancy"),
        ("LLAMA_NORM", "flash"),
        // The fused kernels need tch-cuda: on another device asking for them is an error too.
        ("LLAMA_ROPE", "fused"),
        ("LLAMA_SWIGLU", "fused"),
        ("LLAMA_SWIGLU", "torch"),
        ("LLAMA_ADAMW", "foreach"),
        ("LLAMA_RESIDUAL", "fused"),
        ("LLAMA_WEIGHT_GRAD", "bf16"),
        // cuBLAS's products need CubeCL's `--device cuda`.
        ("LLAMA_PRODUCT", "cublas"),
        ("LLAMA_PRODUCT", "cutlass"),
        // Decoding's kernel knobs (tch-cuda), checked on every device.
        ("LLAMA_GEMV_SWIGLU", "fused"),
        ("LLAMA_GEMV_GRID", "persistent"),
        ("LLAMA_NORM_EARLY", "late"),
        ("LLAMA_ATTN_VALUES", "wide"),
        ("LLAMA_ATTN_PRELOAD", "on"),
        ("LLAMA_GEMV_LOADS", "uncached"),
        ("LLAMA_ATTN_SPLIT", "on"),
        ("LLAMA_ATTN_KEYS", "4"),
        ("LLAMA_ROPE_SLOT_ATTENTION", "on"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama"))
            .args(["--device", "ndarray", "bench", "--preset", "tiny"])
            .args(["--mode", "train", "--batch", "1", "--seq", "8"])
            .args(["--warmup", "1", "--iters", "1"])
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}={value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(var) && err.contains(value), "{err}");
    }
    // The opt-in operations (RMSNorm, rotary, SwiGLU's closed form) train end to end.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama"))
        .args(["--device", "ndarray", "bench", "--preset", "tiny", "--json"])
        .args(["--mode", "train", "--batch", "1", "--seq", "8"])
        .args(["--warmup", "1", "--iters", "1"])
        .env("LLAMA_NORM", "operation")
        .env("LLAMA_ROPE", "operation")
        .env("LLAMA_SWIGLU", "operation")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
