//! A one-row step's pre-norms go to a backend's registered norm-and-product kernel
//! (`norm_gemv`) for an RMSNorm model with stacked inference weights, and only there; the
//! kernel's `(h, y)` take the place of the norm (with its residual update) and the stacked product.
//! Flex bf16 with a native written in tensor ops (its own test binary: the registry is global).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use common::*;
use llama_model::knobs::{FfnKind, NormKind};
use llama_model::{EagerDecoder, Precision, Sampling, StaticDecoder, generate_with};

static WITH_DELTA: AtomicUsize = AtomicUsize::new(0);
static WITHOUT_DELTA: AtomicUsize = AtomicUsize::new(0);

fn float<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Checks the inputs it is given, counts, and computes the pair with the model's own operations
/// (so the tokens must not change).
fn native(
    x: FlexTensor,
    delta: Option<FlexTensor>,
    gamma: FlexTensor,
    eps: f64,
    w: FlexTensor,
) -> Option<(FlexTensor, FlexTensor)> {
    let x = float::<2>(x);
    let [rows, d] = x.dims();
    let w = float::<2>(w);
    assert_eq!(rows, 1);
    assert_eq!(w.dims()[0], d);
    assert_eq!(w.dtype(), DType::BF16);
    assert_eq!(x.dtype(), DType::F32, "the residual stream");
    let h = match delta {
        Some(delta) => {
            WITH_DELTA.fetch_add(1, Ordering::SeqCst);
            let delta = float::<2>(delta);
            assert_eq!(delta.dims(), [1, d]);
            llama_model::residual::add(x, delta)
        }
        None => {
            WITHOUT_DELTA.fetch_add(1, Ordering::SeqCst);
            x
        }
    };
    let a = llama_model::rms_norm::rms_norm_to(h.clone(), float::<1>(gamma), eps, w.dtype());
    let y = llama_model::gemv::matmul(a, w);
    Some((h.into_primitive().tensor(), y.into_primitive().tensor()))
}

fn calls() -> (usize, usize) {
    (
        WITH_DELTA.swap(0, Ordering::SeqCst),
        WITHOUT_DELTA.swap(0, Ordering::SeqCst),
    )
}

#[test]
fn one_row_steps_fold_the_norms_into_the_stacked_products() {
    let fdev = Default::default();
    let vocab = 64;
    let build = |cfg: &llama_model::LlamaConfig| {
        cfg.init::<Flex>(&fdev)
            .unwrap()
            .with_precision(Precision::Bf16)
            .with_inference_weights()
    };
    let cfg = small(vocab);
    let geglu = llama_model::LlamaConfig {
        ffn: FfnKind::Geglu,
        ..small(vocab)
    };
    let (model, geglu_model) = (build(&cfg), build(&geglu));
    let prompt: Vec<u32> = (1..=12).collect();
    let sampling = Sampling {
        max_new_tokens: 4,
        ..Default::default()
    };
    let one = std::slice::from_ref(&prompt);
    let two = [prompt.clone(), prompt[..7].to_vec()];
    let before = generate_with(&model, one, &sampling, &mut StaticDecoder).unwrap();
    let before_two = generate_with(&model, &two, &sampling, &mut StaticDecoder).unwrap();
    let before_geglu = generate_with(&geglu_model, one, &sampling, &mut StaticDecoder).unwrap();

    llama_model::norm_gemv::register_native::<Flex>(native);
    for (what, tokens) in [
        (
            "static",
            generate_with(&model, one, &sampling, &mut StaticDecoder).unwrap(),
        ),
        (
            "eager",
            generate_with(&model, one, &sampling, &mut EagerDecoder).unwrap(),
        ),
    ] {
        assert_eq!(tokens, before, "{what}");
    }
    // The prompt's pass has 12 rows; then three one-row steps, twice: per step the first
    // layer's attention norm has no pending update, every other norm has one.
    let layers = cfg.n_layers;
    assert_eq!(calls(), (2 * 3 * (2 * layers - 1), 2 * 3));
    assert_eq!(
        generate_with(&geglu_model, one, &sampling, &mut StaticDecoder).unwrap(),
        before_geglu
    );
    assert_eq!(
        calls(),
        (3 * (2 * layers - 1), 3),
        "GeGLU's gate/up are stacked too"
    );

    // Two rows per step: only the attention's stack (up to 16 rows) takes it, not the
    // feed-forward's (one row), and the kernel is asked only for one row: never.
    let two_rows = generate_with(&model, &two, &sampling, &mut StaticDecoder).unwrap();
    assert_eq!(two_rows, before_two);
    assert_eq!(calls(), (0, 0), "two rows per step");

    // Without stacked weights, or with LayerNorm: never.
    let plain = cfg
        .init::<Flex>(&fdev)
        .unwrap()
        .with_precision(Precision::Bf16);
    generate_with(&plain, one, &sampling, &mut StaticDecoder).unwrap();
    let layer_norm = llama_model::LlamaConfig {
        norm: NormKind::LayerNorm,
        ..small(vocab)
    };
    generate_with(&build(&layer_norm), one, &sampling, &mut StaticDecoder).unwrap();
    assert_eq!(calls(), (0, 0), "not stacked, or LayerNorm");
}
