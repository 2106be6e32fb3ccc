//! Few-row products (`gemv`): decoding's projections go to a backend's registered kernel, prefill
//! and training never do, and a kernel that declines falls back to the same product. NdArray f32
//! with a counting native (its own test binary: the registry is global to the process).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

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
    assert_eq!(after, before, "a declining kernel leaves the product as it was");
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
