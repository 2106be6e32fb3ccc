//! Every knob combination trains: forward, backward with a gradient for every parameter, and a few
//! AdamW steps that lower the held-out loss on real English text (bytes as tokens, so this crate
//! needs no tokenizer).

mod common;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use llama_model::LlamaConfig;

struct GradCheck<'a> {
    grads: &'a GradientsParams,
    total: usize,
    missing: Vec<String>,
}

impl ModuleVisitor<AB> for GradCheck<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        self.total += 1;
        match self.grads.get::<B, D>(param.id) {
            Some(g)
                if g.clone().abs().sum().into_scalar() > 0.0
                    && !g.clone().is_nan().any().into_scalar() => {}
            _ => self.missing.push(format!("{:?}", param.shape())),
        }
    }
}

/// `batch` windows of `len` bytes starting at pseudo-random offsets of `text`.
fn windows(text: &[u8], batch: usize, len: usize, seed: u64) -> Tensor<B, 2, Int> {
    let mut s = seed;
    let mut ids = Vec::with_capacity(batch * len);
    for _ in 0..batch {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = ((s >> 33) as usize) % (text.len() - len);
        ids.extend(text[start..start + len].iter().map(|&b| b as i64));
    }
    Tensor::from_data(TensorData::new(ids, [batch, len]), &dev())
}

/// Jane Austen from ../shared/data, else the GPL-3 text every Debian machine carries.
fn real_text() -> Option<Vec<u8>> {
    if let Some(data) = shared_data()
        && let Ok(t) = std::fs::read(data.join("corpus/books/austen_six_novels.txt"))
    {
        return Some(t);
    }
    match std::fs::read("/usr/share/common-licenses/GPL-3") {
        Ok(t) => {
            eprintln!("using /usr/share/common-licenses/GPL-3 as the real text");
            Some(t)
        }
        Err(_) => {
            eprintln!(
                "skipping: no real text found (../shared/data or /usr/share/common-licenses/GPL-3)"
            );
            None
        }
    }
}

#[test]
fn every_knob_combination_trains_on_real_text() {
    let Some(text) = real_text() else { return };
    let (train, heldout) = text.split_at(text.len() * 9 / 10);
    let seq = 33; // 32 predictions per row
    let eval = windows(heldout, 16, seq, 99);
    let mut report = Vec::new();
    for cfg in all_variants(256) {
        let cfg = LlamaConfig {
            init_std: 0.02,
            ..cfg
        };
        let mut model = cfg.init::<AB>(&dev()).unwrap();
        let before = model.valid().loss(eval.clone()).into_scalar();

        let mut optim = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(0.1)
            .init::<AB, llama_model::Llama<AB>>();
        for step in 0..12 {
            let batch = windows(train, 8, seq, step);
            let loss = model.loss(Tensor::from_inner(batch));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            if step == 0 {
                let mut check = GradCheck {
                    grads: &grads,
                    total: 0,
                    missing: vec![],
                };
                model.visit(&mut check);
                assert!(check.total >= 2 + 4 * cfg.n_layers, "{}", label(&cfg));
                assert!(
                    check.missing.is_empty(),
                    "{}: no gradient for {:?}",
                    label(&cfg),
                    check.missing
                );
            }
            model = optim.step(1e-2, model, grads);
        }
        let after = model.valid().loss(eval.clone()).into_scalar();
        report.push(format!("{}: {before:.3} -> {after:.3}", label(&cfg)));
        assert!(
            after.is_finite() && after < before - 0.5,
            "{}: held-out loss {before} -> {after}",
            label(&cfg)
        );
    }
    eprintln!("{}", report.join("\n"));
}
