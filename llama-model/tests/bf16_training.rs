//! A bf16 run over f32 master weights trains like an f32 one, on Flex (a CPU backend with bf16
//! arithmetic). Its own test binary: the model is drawn from Flex's seeded generator, which is
//! global to the process, so no other test may draw from it at the same time.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use common::*;
use llama_model::{Llama, Precision};

type AF = Autodiff<Flex>;

/// Loss after each of `steps` AdamW steps on one fixed batch.
fn fit(model: Llama<AF>, toks: &Tensor<AF, 2, Int>, steps: usize) -> (Vec<f32>, Llama<AF>) {
    let mut optim = AdamWConfig::new().init();
    let mut model = model;
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = model.loss(toks.clone());
        losses.push(loss.clone().into_scalar());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    (losses, model)
}

#[test]
fn bf16_training_follows_f32_and_keeps_f32_master_weights() {
    let (vocab, dev) = (64, Default::default());
    // Seeded: the gap between the curves depends on the draw, with a tail. Over seeds 0–23 the
    // largest gap was 0.5–2.3 % of the starting loss (seed 0: 1.0 %), and an unseeded draw in CI
    // once reached 3.2 %.
    AF::seed(&dev, 0);
    let init = realistic(vocab).init::<AF>(&dev).unwrap();
    let toks = tokens::<AF>(4, 33, vocab, 17, &dev);
    let (full, _) = fit(init.clone(), &toks, 30);
    let (half, model) = fit(init.with_precision(Precision::Bf16), &toks, 30);
    let f0 = full[0];
    assert!(half[29] < f0 - 1.0, "bf16 did not learn: {half:?}");
    // The two curves stay within 3 % of the starting loss of each other at every step.
    for (k, (f, h)) in full.iter().zip(&half).enumerate() {
        assert!(
            (h - f).abs() < 0.03 * f0,
            "step {k}: bf16 {h} vs f32 {f}\n{full:?}\n{half:?}"
        );
    }
    // The updated weights are still f32 (AdamW applied f32 updates to f32 masters).
    assert_eq!(
        model.layers[0].attention.wq.weight.val().dtype(),
        DType::F32
    );
    let inference = model.valid();
    assert_eq!(inference.precision(), Precision::Bf16);
}
