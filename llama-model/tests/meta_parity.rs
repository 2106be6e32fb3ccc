//! Meta's original layout (params.json + consolidated.NN.pth): the same weights as the Hugging Face
//! fixtures, with interleaved RoPE rows and model-parallel shards, give transformers' logits.

mod common;

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use llama_model::{load_hf, load_meta};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn meta_checkpoints_equal_their_hugging_face_twins() {
    for (name, ranks) in [("mha-untied", 1), ("gqa-sharded", 2)] {
        let meta = load_meta::<B>(&fixtures().join("meta").join(name), &dev()).unwrap();
        let hf = load_hf::<B>(&fixtures().join("hf").join(name), &dev()).unwrap();
        let (m, h) = (meta.config(), hf.config());
        assert_eq!(
            (
                m.vocab_size,
                m.dim,
                m.n_layers,
                m.n_heads,
                m.kv_heads(),
                m.ffn_hidden()
            ),
            (
                h.vocab_size,
                h.dim,
                h.n_layers,
                h.n_heads,
                h.kv_heads(),
                h.ffn_hidden()
            )
        );
        assert_eq!(
            (m.rope_theta, m.norm_eps, m.tie_embeddings),
            (h.rope_theta, h.norm_eps, h.tie_embeddings)
        );
        let ids: Vec<i64> = (0..24)
            .map(|i| (i * 13 + 5) % h.vocab_size as i64)
            .collect();
        let toks = || Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [2, 12]), &dev());
        let a = to_vec(meta.forward(toks()));
        let b = to_vec(hf.forward(toks()));
        let d = rel_diff(&a, &b);
        eprintln!("{name} ({ranks} ranks): Meta vs Hugging Face logits differ by {d:.2e}");
        assert!(d <= 1e-6, "{name}: {d}");
    }
}

#[test]
fn a_pickle_with_code_is_refused_without_running_it() {
    let marker = std::path::Path::new("/tmp/llama-pwned-by-pickle");
    std::fs::remove_file(marker).ok();
    let err = load_meta::<B>(&fixtures().join("meta/evil"), &dev())
        .unwrap_err()
        .to_string();
    assert!(!marker.exists(), "the pickle ran code");
    assert!(err.contains("consolidated.00.pth"), "{err}");
}

#[test]
fn a_directory_without_shards_is_not_a_checkpoint() {
    let d = std::env::temp_dir().join(format!("llama-meta-empty-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        fixtures().join("meta/mha-untied/params.json"),
        d.join("params.json"),
    )
    .unwrap();
    let err = load_meta::<B>(&d, &dev()).unwrap_err().to_string();
    assert!(err.contains("no checkpoint"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}
