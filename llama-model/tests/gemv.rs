//! Few-row products (`gemv`): decoding's projections go to a backend's registered kernel, prefill
//! and training never do, and a kernel that declines falls back to the same product. NdArray f32
//! with a counting native (its own test binary: the registry is global to the process).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::flex::FlexTensor;
use burn::backend::ndarray::NdArrayTensor;
use burn::tensor::{Int, Tensor, TensorMetadata};
use common::*;
use llama_model::{Sampling, StaticDecoder, generate, generate_with};

static CALLS: AtomicUsize = AtomicUsize::new(0);
static MOST_ROWS: AtomicUsize = AtomicUsize::new(0);

/// Counts and declines, so the product is the backend's own.
fn counting(x: NdArrayTensor, _w: NdArrayTensor) -> Option<NdArrayTensor> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    let rows = x.shape()[0];
    MOST_ROWS.fetch_max(rows, Ordering::SeqCst);
    None
}

#[test]
fn decoding_projections_take_the_registered_product() {
    let cfg = small(60);
    assert!(!cfg.tie_embeddings, "the untied head is a projection too");
    // Per one-row pass: q, k, v, o, gate, up and down in every layer, and the head.
    let per_pass = 7 * cfg.n_layers + 1;
    let model = cfg.init::<B>(&dev()).unwrap();
    let prompt: Vec<u32> = (1..=12).collect();
    let sampling = Sampling {
        max_new_tokens: 4,
        ..Default::default()
    };
    let before = generate(&model, std::slice::from_ref(&prompt), &sampling).unwrap();

    llama_model::gemv::register_native::<B>(counting);
    // A 12-token pass (prefill) has more rows than a few-row product takes.
    let tokens = Tensor::<B, 1, Int>::from_ints(&prompt[..], &dev()).unsqueeze::<2>();
    let _ = model.forward(tokens);
    assert_eq!(CALLS.load(Ordering::SeqCst), 0);

    // The prompt's pass takes the head for its last position only (one row); then three one-row
    // decode steps.
    let after = generate(&model, std::slice::from_ref(&prompt), &sampling).unwrap();
    assert_eq!(
        after, before,
        "a declining kernel leaves the product as it was"
    );
    assert_eq!(CALLS.load(Ordering::SeqCst), 1 + 3 * per_pass);
    assert_eq!(MOST_ROWS.load(Ordering::SeqCst), 1);

    // The static-shape step (CUDA-graph decoding) goes the same way.
    CALLS.store(0, Ordering::SeqCst);
    let fixed = generate_with(
        &model,
        std::slice::from_ref(&prompt),
        &sampling,
        &mut StaticDecoder,
    )
    .unwrap();
    assert_eq!(fixed, before);
    assert_eq!(CALLS.load(Ordering::SeqCst), 1 + 3 * per_pass);
}

/// Declines every call (Flex bf16), so that only the out-major weights differ.
fn declining(_x: FlexTensor, _w: FlexTensor) -> Option<FlexTensor> {
    None
}

/// With a few-row product registered, `with_inference_weights` stores the projections out-major
/// (transposed views of `[out, in]` copies, stacked ones too): the same values, so the same
/// logits up to the products' summation order, in a full pass and in one- and two-row decoding.
#[test]
fn out_major_inference_weights_keep_the_logits() {
    use burn::backend::Flex;
    use llama_model::{Llama, Precision};
    let fdev = Default::default();
    let vocab = 64;
    let variants = all_variants(vocab);
    llama_model::gemv::register_native::<Flex>(declining);
    // One with grouped-query attention and a tied head, one untied GeGLU, one LLaMA-shaped.
    for cfg in [small(vocab), variants[3].clone(), variants[5].clone()] {
        let model = cfg
            .init::<Flex>(&fdev)
            .unwrap()
            .with_precision(Precision::Bf16);
        let toks = tokens::<Flex>(2, 10, vocab, 4, &fdev);
        let full = to_vec(model.forward(toks.clone()));
        let cast = model.clone().with_inference_weights();
        let w = cast.layers[0].attention.wq.weight.val();
        let [d_in, d_out] = w.dims();
        assert_eq!(
            to_vec(w.clone().transpose()),
            to_vec(
                model.layers[0]
                    .attention
                    .wq
                    .weight
                    .val()
                    .cast(w.dtype())
                    .transpose()
            ),
            "{}: the same values",
            label(&cfg)
        );
        assert_eq!([d_in, d_out], model.layers[0].attention.wq.weight.dims());
        let close = |a: &[f32], b: &[f32], what: &str| {
            let d = rel_diff(a, b);
            assert!(d < 2e-2, "{} {what}: relative difference {d}", label(&cfg));
        };
        close(&full, &to_vec(cast.forward(toks.clone())), "full pass");
        let decode = |m: &Llama<Flex>, b: usize| cached_step_logits(m, &toks, b, &fdev);
        for b in [2, 1] {
            close(
                &decode(&model, b),
                &decode(&cast, b),
                &format!("decode b{b}"),
            );
        }
    }
}
