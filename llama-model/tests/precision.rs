//! bf16 compute over f32 master weights, on Flex (a CPU backend with bf16 arithmetic): the
//! projections really run in bf16, their error against f32 is of bf16's size, and gradients and
//! parameters stay f32 (that a bf16 run trains like an f32 one is `bf16_training.rs`).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Int, Tensor};
use common::*;
use llama_model::{AttentionMask, Llama, LlamaConfig, Precision};

type F = Flex;
type AF = Autodiff<Flex>;

/// bf16 keeps 8 significant bits: one rounding is off by at most 2^-9 relative.
const BF16_EPS: f32 = 1.0 / 256.0;

fn fdev() -> burn::backend::flex::FlexDevice {
    Default::default()
}

/// `cfg` initialised on Flex, computing in bf16.
fn bf16_model(cfg: &LlamaConfig) -> Llama<F> {
    cfg.init::<F>(&fdev())
        .unwrap()
        .with_precision(Precision::Bf16)
}

#[test]
fn precision_support_is_checked_per_backend() {
    assert!(Precision::F32.check::<B>(&dev()).is_ok());
    let err = Precision::Bf16.check::<B>(&dev()).unwrap_err().to_string();
    assert!(err.contains("bf16") && err.contains("f32"), "{err}");
    assert!(Precision::Bf16.check::<F>(&fdev()).is_ok());
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert_eq!("F32".parse::<Precision>().unwrap(), Precision::F32);
    assert!("fp8".parse::<Precision>().is_err());
}

#[test]
fn bf16_logits_are_bf16_and_within_bf16_rounding_of_f32() {
    let vocab = 64;
    // The knob variants use large weights (`init_std` 0.2) whose rounding errors grow layer by
    // layer; the realistic model (0.02) stays within a couple of roundings.
    let mut configs: Vec<_> = all_variants(vocab)
        .into_iter()
        .step_by(5)
        .map(|c| (c, 16.0))
        .collect();
    configs.push((realistic(vocab), 4.0));
    for (cfg, tolerance) in configs {
        let model = cfg.init::<F>(&fdev()).unwrap();
        let toks = tokens::<F>(2, 24, vocab, 9, &fdev());
        let full = model.forward(toks.clone());
        assert_eq!(full.dtype(), DType::F32);
        let model = model.with_precision(Precision::Bf16);
        let half = model.forward(toks);
        // The projections ran in bf16 (the output head's result is bf16)...
        assert_eq!(half.dtype(), DType::BF16, "{}", label(&cfg));
        // ... so the logits differ from f32, by a few bf16 roundings at most.
        let d = rel_diff(&to_vec(full), &to_vec(half));
        assert!(d > 1e-5, "{}: bf16 gave f32 results ({d})", label(&cfg));
        assert!(
            d < tolerance * BF16_EPS,
            "{}: bf16 differs by {d}",
            label(&cfg)
        );
        // Parameters were not touched.
        assert_eq!(model.tok_embeddings.weight.val().dtype(), DType::F32);
    }
}

struct GradCompare<'a> {
    full: &'a GradientsParams,
    half: &'a GradientsParams,
    ids: Vec<String>,
    worst_cos: f64,
}

impl ModuleVisitor<AF> for GradCompare<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AF, D>>) {
        let (Some(a), Some(b)) = (
            self.full.get::<F, D>(param.id),
            self.half.get::<F, D>(param.id),
        ) else {
            self.ids
                .push(format!("{:?}: missing gradient", param.shape()));
            return;
        };
        if b.dtype() != DType::F32 {
            self.ids
                .push(format!("{:?}: gradient in {:?}", param.shape(), b.dtype()));
        }
        let (a, b) = (to_vec(a), to_vec(b));
        let dot: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64) * (*y as f64))
            .sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        self.worst_cos = self.worst_cos.min(dot / (na * nb).max(1e-30));
    }
}

#[test]
fn bf16_gradients_are_f32_and_point_the_same_way() {
    let vocab = 64;
    for cfg in [realistic(vocab), all_variants(vocab).swap_remove(21)] {
        let model = cfg.init::<AF>(&fdev()).unwrap();
        let toks = tokens::<AF>(2, 25, vocab, 3, &fdev());
        let loss = model.loss(toks.clone());
        let full = GradientsParams::from_grads(loss.backward(), &model);
        let model = model.with_precision(Precision::Bf16);
        let loss = model.loss(toks);
        assert_eq!(loss.dtype(), DType::F32, "the loss is reduced in f32");
        let half = GradientsParams::from_grads(loss.backward(), &model);
        let mut cmp = GradCompare {
            full: &full,
            half: &half,
            ids: Vec::new(),
            worst_cos: 1.0,
        };
        model.visit(&mut cmp);
        assert!(cmp.ids.is_empty(), "{}: {:?}", label(&cfg), cmp.ids);
        assert!(
            cmp.worst_cos > 0.99,
            "{}: a bf16 gradient is off by cos {}",
            label(&cfg),
            cmp.worst_cos
        );
    }
}

#[test]
fn bf16_cached_decoding_matches_a_full_bf16_pass() {
    let vocab = 64;
    let cfg = LlamaConfig {
        n_kv_heads: Some(2),
        ..realistic(vocab)
    };
    let model = bf16_model(&cfg);
    let toks = tokens::<F>(1, 12, vocab, 5, &fdev());
    let full = to_vec(model.forward(toks.clone()));
    let mut cache = model.new_cache(1, 12, &fdev());
    let mut got = Vec::new();
    for i in 0..12 {
        let tok = toks.clone().narrow(1, i, 1);
        let pos = Tensor::<F, 1, Int>::arange(i as i64..i as i64 + 1, &fdev()).unsqueeze::<2>();
        let h = model.forward_hidden(tok, &pos, &AttentionMask::Full, Some(&mut cache));
        got.extend(to_vec(model.logits(h)));
    }
    let d = rel_diff(&full, &got);
    assert!(d < 8.0 * BF16_EPS, "cached bf16 decoding differs by {d}");
}

#[test]
fn bf16_batched_generation_with_left_padding_matches_one_prompt_at_a_time() {
    use llama_model::{Sampling, generate};
    let vocab = 64;
    let greedy = Sampling {
        max_new_tokens: 6,
        ..Default::default()
    };
    for cfg in [realistic(vocab), all_variants(vocab).swap_remove(9)] {
        let model = bf16_model(&cfg);
        // The short prompts' pad queries see no key at all: they must stay finite.
        let prompts = vec![vec![3, 14, 15], vec![9, 2, 6, 5, 35, 8, 9], vec![7]];
        let batch = generate(&model, &prompts, &greedy).unwrap();
        for (p, out) in prompts.iter().zip(&batch) {
            let alone = generate(&model, std::slice::from_ref(p), &greedy).unwrap();
            assert_eq!(&alone[0], out, "{}", label(&cfg));
        }
    }
}

/// Inference weights cast once (and stacked for few-row steps) give exactly the numbers of casting
/// on every call, in a full pass and in cached decoding; only the projections change dtype.
#[test]
fn inference_weights_are_cast_once_with_the_same_logits() {
    let vocab = 64;
    // LLaMA-shaped, one with grouped-query attention and a tied head, one untied GeGLU.
    let variants = all_variants(vocab);
    for cfg in [realistic(vocab), variants[3].clone(), variants[5].clone()] {
        let model = bf16_model(&cfg);
        // Parameters initialise lazily: a first pass fixes them before the model is copied.
        let toks = tokens::<F>(2, 10, vocab, 4, &fdev());
        let full = to_vec(model.forward(toks.clone()));
        let cast = model.clone().with_inference_weights();
        let block = &cast.layers[0];
        assert_eq!(block.attention.wq.weight.val().dtype(), DType::BF16);
        assert_eq!(block.feed_forward.w2.weight.val().dtype(), DType::BF16);
        assert_eq!(cast.tok_embeddings.weight.val().dtype(), DType::F32);
        if let Some(out) = &cast.output {
            assert_eq!(out.weight.val().dtype(), DType::BF16);
        }
        let f32_params = |m: &Llama<F>| {
            let mut n = 0;
            m.visit(&mut CountF32(&mut n));
            n
        };
        assert!(f32_params(&cast) < f32_params(&model), "{}", label(&cfg));
        assert_eq!(full, to_vec(cast.forward(toks.clone())), "{}", label(&cfg));
        // Batch 2 and 1: few-row steps take the stacked q/k/v product, one row the stacked gate
        // and up projections too (`llama_model::stacked`).
        let decode = |m: &Llama<F>, b: usize| cached_step_logits(m, &toks, b, &fdev());
        for b in [2, 1] {
            assert_eq!(decode(&model, b), decode(&cast, b), "{} b{b}", label(&cfg));
        }
    }
}

/// Counts the f32 parameter tensors of a module.
struct CountF32<'a>(&'a mut usize);

impl<Bk: burn::tensor::backend::Backend> ModuleVisitor<Bk> for CountF32<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        if param.val().dtype() == DType::F32 {
            *self.0 += 1;
        }
    }
}
