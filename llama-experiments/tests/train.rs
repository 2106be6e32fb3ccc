//! `llama train` on ndarray: exact resumption after a stop at any step, divergence handling,
//! and the recipe's pieces (schedule, clipping, decay groups) as the run records them.

#![cfg(feature = "ndarray")]

use std::path::{Path, PathBuf};

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Int, Tensor, TensorData};
use llama_data::recipe::Recipe;
use llama_data::{PrepareOptions, TokenizerTrainConfig, prepare, train_tokenizer};
use llama_experiments::backend::BackendJob;
use llama_experiments::train::metrics::{MetricRow, RunState, Status};
use llama_experiments::train::{RunConfig, TrainJob};

type B = Autodiff<NdArray>;

/// Held by each test for its whole body: the tests run one at a time. Two training runs in one
/// process were not independent: with `a_bf16_run_trains_like_f32_and_resumes_exactly` and
/// `a_killed_process_resumes_to_the_same_curve` running beside it, the stopped run of
/// `a_run_stopped_anywhere_…` started from a different first-step loss in about two of three
/// tries (6.24–6.27 against 6.2734; reproduced on this session's code and the previous one's),
/// though the runs seed and initialise their models under one lock (`train::run::init_model`).
/// Which process-wide state the runs share is not found yet; `llama train` runs one run per
/// process, so this only concerns the tests. (Session 19, with the lock removed and every initial
/// weight fingerprinted: 30 runs of the three tests side by side, 15 more with two cores kept busy,
/// and 15 rounds of two NdArray runs beside a Flex bf16 run in threads all agreed: not reproduced.)
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Real English (Austen from ../shared/data, else the GPL text every Debian machine has).
fn real_text() -> Option<String> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/corpus/books/austen_six_novels.txt");
    for p in [
        shared.as_path(),
        Path::new("/usr/share/common-licenses/GPL-3"),
    ] {
        if let Ok(t) = std::fs::read_to_string(p) {
            return Some(t.chars().take(400_000).collect());
        }
    }
    eprintln!("skipped: no real text");
    None
}

/// A prepared dataset of real text with a 512-piece tokenizer.
fn dataset(dir: &Path) -> Option<PathBuf> {
    let text = real_text()?;
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    for (i, chunk) in text.split("\n\n\n").enumerate() {
        std::fs::write(raw.join(format!("{i:05}.txt")), chunk).unwrap();
    }
    let tok = train_tokenizer(
        text.split("\n\n"),
        &TokenizerTrainConfig {
            vocab_size: 512,
            ..TokenizerTrainConfig::default()
        },
    )
    .unwrap();
    let tok_path = dir.join("tok.json");
    llama_data::tokenizer_training::save(&tok, &tok_path).unwrap();
    let recipe = Recipe::from_toml(&format!(
        "name='t'\nvalidation_fraction=0.1\n[[source]]\nname='austen'\nweight=1\npaths=['{}']\nreader={{format='text'}}\n",
        raw.display()
    ))
    .unwrap();
    let out = dir.join("ds");
    prepare(
        &recipe,
        &tok_path,
        &out,
        &PrepareOptions {
            overwrite: false,
            quiet: true,
        },
    )
    .unwrap();
    Some(out)
}

fn config(ds: &Path, steps: u64) -> RunConfig {
    let text = format!(
        r#"name = "test"
[model]
preset = "tiny"
[data]
dataset = "{}"
seq_len = 32
[optim]
lr = 3e-3
warmup_steps = 3
[train]
steps = {steps}
batch_tokens = 256
micro_batch = 4
seed = 5
log_every = 1
eval_every = 3
eval_batches = 2
checkpoint_every = 2
"#,
        ds.display()
    );
    toml::from_str(&text).unwrap()
}

fn job(config: RunConfig, out: &Path, resume: bool, stop_after: Option<u64>) -> TrainJob {
    TrainJob {
        config,
        out: out.to_path_buf(),
        resume,
        quiet: true,
        stop_after,
    }
}

fn run(config: RunConfig, out: &Path, resume: bool, stop_after: Option<u64>) -> Status {
    job(config, out, resume, stop_after)
        .run::<B>(Default::default())
        .unwrap()
        .status
}

fn rows(out: &Path) -> Vec<MetricRow> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn logits(out: &Path) -> Vec<f32> {
    let model =
        llama_model::load_native::<NdArray>(&out.join("model"), &Default::default()).unwrap();
    let ids = Tensor::<NdArray, 2, Int>::from_data(
        TensorData::new((0..32i64).collect::<Vec<_>>(), [1, 32]),
        &Default::default(),
    );
    model.forward(ids).into_data().to_vec().unwrap()
}

#[test]
fn a_run_stopped_anywhere_and_resumed_matches_the_uninterrupted_run_bit_for_bit() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let Some(ds) = dataset(dir.path()) else {
        return;
    };
    let whole = dir.path().join("whole");
    let s = run(config(&ds, 9), &whole, false, None);
    assert_eq!(s.state, RunState::Finished);
    let reference = rows(&whole);
    assert_eq!(
        reference.iter().filter(|r| r.train_loss.is_some()).count(),
        9
    );
    let first = reference[0].train_loss.unwrap();
    let last = reference.last().unwrap().train_loss.unwrap();
    assert!(last < first - 0.5, "loss fell from {first} to {last}");
    assert!(reference.iter().any(|r| r.val_loss.is_some()));
    for plot in ["loss.png", "loss.svg"] {
        assert!(
            std::fs::metadata(whole.join(plot)).unwrap().len() > 1000,
            "{plot}"
        );
    }
    let svg = std::fs::read_to_string(whole.join("loss.svg")).unwrap();
    assert!(
        svg.contains("validation") && svg.contains("tokens"),
        "legend and axis labels drawn"
    );

    // Stopped between checkpoints (after step 5; the last checkpoint is step 4) and after a
    // checkpoint (step 6), then resumed.
    for stop in [5, 6] {
        let out = dir.path().join(format!("stopped-{stop}"));
        let s = run(config(&ds, 9), &out, false, Some(stop));
        assert_eq!((s.state, s.step), (RunState::Running, stop));
        let s = run(config(&ds, 9), &out, true, None);
        assert_eq!(s.state, RunState::Finished);
        let resumed = rows(&out);
        assert_eq!(resumed.len(), reference.len());
        for (a, b) in reference.iter().zip(&resumed) {
            assert_eq!(a.step, b.step);
            assert_eq!(a.train_loss, b.train_loss, "step {}", a.step);
            assert_eq!(a.grad_norm, b.grad_norm, "step {}", a.step);
            assert_eq!(a.lr, b.lr, "step {}", a.step);
            assert_eq!(a.val_loss, b.val_loss, "step {}", a.step);
        }
        assert_eq!(
            logits(&whole),
            logits(&out),
            "final weights after stopping at {stop}"
        );
    }
    // A finished run is not started again by mistake.
    let err = job(config(&ds, 9), &whole, false, None)
        .run::<B>(Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn divergence_ends_the_run_with_a_status_not_a_crash() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let Some(ds) = dataset(dir.path()) else {
        return;
    };
    let mut cfg = config(&ds, 5);
    cfg.train.diverge_grad_norm = Some(1e-3);
    let out = dir.path().join("run");
    let s = run(cfg, &out, false, None);
    assert_eq!(s.state, RunState::Diverged);
    assert_eq!(s.step, 0);
    let on_disk = Status::read(&out).unwrap();
    assert_eq!(on_disk.state, RunState::Diverged);
    assert!(
        on_disk.message.contains("gradient norm"),
        "{}",
        on_disk.message
    );

    let mut cfg = config(&ds, 5);
    cfg.optim.lr = 1e6;
    cfg.optim.warmup_steps = 0;
    cfg.optim.grad_clip = None;
    let out = dir.path().join("nan");
    let s = run(cfg, &out, false, None);
    assert_eq!(s.state, RunState::Diverged, "{}", s.message);
}

#[test]
fn the_recipe_is_what_the_run_records() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let Some(ds) = dataset(dir.path()) else {
        return;
    };
    let out = dir.path().join("run");
    run(config(&ds, 6), &out, false, None);
    let r = rows(&out);
    let lr: Vec<f64> = r.iter().filter_map(|r| r.lr).collect();
    // Warmup over 3 steps to 3e-3, then cosine to 3e-4.
    assert!(
        (lr[0] - 1e-3).abs() < 1e-12 && (lr[2] - 3e-3).abs() < 1e-12,
        "{lr:?}"
    );
    assert!(lr[3..].windows(2).all(|w| w[1] < w[0]), "{lr:?}");
    // The gradient norm is recorded before clipping: early steps exceed 1.0 and still train.
    assert!(r.iter().filter_map(|r| r.grad_norm).all(f64::is_finite));
    let config: RunConfig =
        toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!(
        (config.optim.beta1, config.optim.beta2, config.optim.eps),
        (0.9, 0.95, 1e-8)
    );
    assert_eq!(config.optim.weight_decay, 0.1);
    assert_eq!(config.optim.grad_clip, Some(1.0));
}

#[test]
fn a_killed_process_resumes_to_the_same_curve() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let Some(ds) = dataset(dir.path()) else {
        return;
    };
    let mut cfg = config(&ds, 12);
    cfg.train.checkpoint_every = 3;
    let cfg_path = dir.path().join("run.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let llama = |out: &Path, resume: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_llama"));
        c.args(["--device", "ndarray", "train", "--quiet", "--config"])
            .arg(&cfg_path)
            .arg("--out")
            .arg(out);
        if resume {
            c.arg("--resume");
        }
        c
    };
    let whole = dir.path().join("whole");
    assert!(llama(&whole, false).status().unwrap().success());

    // SIGKILL once the run is past step 4 (whatever it is doing then: a step, a checkpoint write).
    let killed = dir.path().join("killed");
    let mut child = llama(&killed, false).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        if let Ok(s) = Status::read(&killed)
            && s.step >= 4
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never reached step 4"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = Status::read(&killed).unwrap();
    assert_eq!(at_kill.state, RunState::Running);
    assert!(at_kill.step < 12, "killed too late to test anything");
    assert!(llama(&killed, true).status().unwrap().success());

    let (a, b) = (rows(&whole), rows(&killed));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.step, x.train_loss, x.grad_norm, x.lr, x.val_loss),
            (y.step, y.train_loss, y.grad_norm, y.lr, y.val_loss)
        );
    }
    assert_eq!(logits(&whole), logits(&killed));
}

#[test]
fn bf16_is_refused_where_the_backend_cannot_compute_in_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let Some(ds) = dataset(dir.path()) else {
        return;
    };
    let mut cfg = config(&ds, 2);
    cfg.train.precision = llama_model::Precision::Bf16;
    let err = job(cfg, &dir.path().join("run"), false, None)
        .run::<B>(Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bf16") && err.contains("not supported"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists(), "nothing written");
}

/// bf16 compute on Flex (CPU bf16 arithmetic): trains like f32, saves f32 weights, and resumes
/// bit for bit like an f32 run.
#[cfg(feature = "flex")]
#[test]
fn a_bf16_run_trains_like_f32_and_resumes_exactly() {
    let _serial = serial();
    use burn::backend::Flex;
    type BF = Autodiff<Flex>;
    let dir = tempfile::tempdir().unwrap();
    let Some(ds) = dataset(dir.path()) else {
        return;
    };
    let go = |precision, out: &Path, resume, stop_after| {
        let mut config = config(&ds, 8);
        config.train.precision = precision;
        job(config, out, resume, stop_after)
            .run::<BF>(Default::default())
            .unwrap()
            .status
    };
    let full = dir.path().join("f32");
    let half = dir.path().join("bf16");
    assert_eq!(
        go(llama_model::Precision::F32, &full, false, None).state,
        RunState::Finished
    );
    let s = go(llama_model::Precision::Bf16, &half, false, None);
    assert_eq!(s.state, RunState::Finished);
    assert!(s.message.contains("bf16") || Status::read(&half).is_ok());
    let (a, b) = (rows(&full), rows(&half));
    let loss = |r: &[MetricRow]| r.iter().filter_map(|r| r.train_loss).collect::<Vec<_>>();
    let (la, lb) = (loss(&a), loss(&b));
    assert!(
        lb[7] < lb[0] - 0.5,
        "bf16 loss fell from {} to {}",
        lb[0],
        lb[7]
    );
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 0.02 * x, "f32 {la:?} vs bf16 {lb:?}");
    }
    assert_ne!(la, lb, "bf16 compute changed nothing");
    // The saved weights are f32 masters.
    let model = llama_model::load_native::<Flex>(&half.join("model"), &Default::default()).unwrap();
    assert_eq!(
        model.tok_embeddings.weight.val().dtype(),
        burn::tensor::DType::F32
    );
    // Stopped after step 5 and resumed: the same curve, bit for bit.
    let resumed = dir.path().join("bf16-resumed");
    go(llama_model::Precision::Bf16, &resumed, false, Some(5));
    go(llama_model::Precision::Bf16, &resumed, true, None);
    let c = rows(&resumed);
    assert_eq!(b.len(), c.len());
    for (x, y) in b.iter().zip(&c) {
        assert_eq!(
            (x.step, x.train_loss, x.grad_norm, x.val_loss),
            (y.step, y.train_loss, y.grad_norm, y.val_loss)
        );
    }
}

#[test]
fn the_optimiser_is_torchs_adamw_with_global_norm_clipping() {
    let _serial = serial();
    common::adamw::check_torch_adamw::<B>(&Default::default(), true, None);
}
