//! SwiGLU's gate in the epilogue of a decoded row's stacked gate/up product
//! (`gemv::register_native_swiglu`): one-row feed-forward sublayers of a model with inference
//! weights take the registered kernel, every other pass the product and gate apart, and the
//! logits stay those of the separate path. Flex bf16 (its own test binary: the registry is global
//! to the process).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, TensorPrimitive};
use common::*;
use llama_model::{FfnKind, Llama, Precision};

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// The gate over the stacked product's two halves, in tensor ops; counts its calls.
fn gated(x: FlexTensor, w: FlexTensor) -> Option<FlexTensor> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    let x = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(x));
    let w = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(w));
    let n = w.dims()[1] / 2;
    let a = x.clone().matmul(w.clone().narrow(1, 0, n));
    let b = x.matmul(w.narrow(1, n, n));
    Some((silu(a) * b).into_primitive().tensor())
}

#[test]
fn decoded_swiglu_takes_the_gated_product() {
    let fdev = Default::default();
    let vocab = 64;
    let variants = all_variants(vocab);
    // A LLaMA-shaped SwiGLU model and a GeGLU one (the same stacked gate/up weights), which never
    // takes the SwiGLU kernel.
    let geglu = variants
        .iter()
        .find(|c| c.ffn == FfnKind::Geglu)
        .expect("a GeGLU variant")
        .clone();
    let cases = [(small(vocab), true), (geglu, false)];
    let models: Vec<Llama<Flex>> = cases
        .iter()
        .map(|(cfg, _)| {
            cfg.init::<Flex>(&fdev)
                .unwrap()
                .with_precision(Precision::Bf16)
                .with_inference_weights()
        })
        .collect();
    let toks = tokens::<Flex>(2, 10, vocab, 4, &fdev);
    let before: Vec<_> = models
        .iter()
        .map(|m| [1, 2].map(|b| cached_step_logits(m, &toks, b, &fdev)))
        .collect();

    llama_model::gemv::register_native_swiglu::<Flex>(gated);
    for ((m, (cfg, swiglu)), before) in models.iter().zip(&cases).zip(&before) {
        CALLS.store(0, Ordering::SeqCst);
        let after = [1, 2].map(|b| cached_step_logits(m, &toks, b, &fdev));
        // The decoded row of the one-row step, in every layer; the prompts' passes and the
        // two-row step have more rows.
        let want = if *swiglu { cfg.n_layers } else { 0 };
        assert_eq!(CALLS.load(Ordering::SeqCst), want, "{}", label(cfg));
        for (a, b) in after.iter().zip(before) {
            let d = rel_diff(a, b);
            assert!(d < 1e-2, "{}: relative difference {d}", label(cfg));
        }
    }
}
