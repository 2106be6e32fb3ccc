//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Int, Tensor, TensorData};
use llama_model::{
    AttentionMask, FfnKind, Llama, LlamaConfig, NormKind, NormPlacement, PositionKind,
};

pub type B = burn::backend::NdArray<f32>;
pub type AB = burn::backend::Autodiff<B>;

pub fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// A small LLaMA config whose weights are large enough (`init_std` 0.2) that numerical differences
/// show in the logits.
pub fn small(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        multiple_of: 16,
        init_std: 0.2,
        ..LlamaConfig::llama(vocab, 32, 2, 4, 48)
    }
}

/// A LLaMA-shaped model with the usual 0.02 initialisation.
pub fn realistic(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        multiple_of: 16,
        ..LlamaConfig::llama(vocab, 64, 2, 4, 64)
    }
}

/// Every combination of the four knobs (2 × 2 × 4 × 4 = 64 configs); every other config uses
/// grouped-query attention (2 KV heads for 4 query heads) and every third ties its embeddings.
pub fn all_variants(vocab: usize) -> Vec<LlamaConfig> {
    let mut out = Vec::new();
    for norm in [NormKind::RmsNorm, NormKind::LayerNorm] {
        for norm_placement in [NormPlacement::Pre, NormPlacement::Post] {
            for ffn in [
                FfnKind::Swiglu,
                FfnKind::Geglu,
                FfnKind::Relu,
                FfnKind::Gelu,
            ] {
                for position in [
                    PositionKind::Rope,
                    PositionKind::Learned,
                    PositionKind::Sinusoidal,
                    PositionKind::None,
                ] {
                    let i = out.len();
                    out.push(LlamaConfig {
                        norm,
                        norm_placement,
                        ffn,
                        position,
                        n_kv_heads: (i % 2 == 1).then_some(2),
                        tie_embeddings: i % 3 == 0,
                        ..small(vocab)
                    });
                }
            }
        }
    }
    out
}

pub fn label(c: &LlamaConfig) -> String {
    format!(
        "{:?}/{:?}/{:?}/{:?}/kv{}/tied={}",
        c.norm,
        c.norm_placement,
        c.ffn,
        c.position,
        c.kv_heads(),
        c.tie_embeddings
    )
}

/// Deterministic pseudo-random token ids (an LCG, so tests need no RNG crate).
pub fn tokens<Bk: Backend>(
    batch: usize,
    t: usize,
    vocab: usize,
    seed: u64,
    device: &Bk::Device,
) -> Tensor<Bk, 2, Int> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let ids: Vec<i64> = (0..batch * t)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as i64
        })
        .collect();
    Tensor::from_data(TensorData::new(ids, [batch, t]), device)
}

pub fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Largest absolute difference divided by the largest magnitude (at least 1).
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The largest absolute difference of two tensors (compared in f32) and the largest magnitude of
/// `want`, for assertions of the form `diff <= tol · scale`.
pub fn diff_and_scale<Bk: Backend, const D: usize>(
    got: Tensor<Bk, D>,
    want: Tensor<Bk, D>,
) -> (f32, f32) {
    let (got, want) = (got.cast(DType::F32), want.cast(DType::F32));
    let scale = want.clone().abs().max().into_scalar().elem::<f32>();
    let diff = (got - want).abs().max().into_scalar().elem::<f32>();
    (diff, scale)
}

/// Asserts `diff <= tol · scale` ([`diff_and_scale`]), naming `what` when it fails.
pub fn assert_close<Bk: Backend, const D: usize>(
    what: &str,
    got: Tensor<Bk, D>,
    want: Tensor<Bk, D>,
    tol: f32,
) {
    let (diff, scale) = diff_and_scale(got, want);
    assert!(diff <= tol * scale, "{what}: {diff} against {scale}");
}

/// `../shared/data` beside the project (or `$LLAMA_SHARED_DATA`), when present.
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("LLAMA_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} is absent (set LLAMA_SHARED_DATA)",
            dir.display()
        );
        None
    }
}

/// Logits of one cached decoding step over the first `b` rows of `toks` (at least nine tokens
/// each): the first eight prefilled into a cache of ten positions, the ninth decoded.
pub fn cached_step_logits<Bk: Backend>(
    m: &Llama<Bk>,
    toks: &Tensor<Bk, 2, Int>,
    b: usize,
    device: &Bk::Device,
) -> Vec<f32> {
    let toks = toks.clone().narrow(0, 0, b);
    let mut cache = m.new_cache(b, 10, device);
    let pos = Llama::<Bk>::default_positions(b, 8, device);
    let prompt = toks.clone().narrow(1, 0, 8);
    m.forward_hidden(prompt, &pos, &AttentionMask::Causal, Some(&mut cache));
    let pos = Tensor::<Bk, 2, Int>::full([b, 1], 8, device);
    let h = m.forward_hidden(
        toks.narrow(1, 8, 1),
        &pos,
        &AttentionMask::Full,
        Some(&mut cache),
    );
    to_vec(m.logits(h))
}
