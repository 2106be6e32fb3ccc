mod common;

use common::*;
use llama_model::{GenerateError, LlamaConfig, Sampling, generate};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn greedy(n: usize) -> Sampling {
    Sampling {
        max_new_tokens: n,
        ..Default::default()
    }
}

#[test]
fn a_batch_of_different_lengths_generates_what_each_prompt_generates_alone() {
    let vocab = 60;
    for cfg in all_variants(vocab).into_iter().step_by(4) {
        let model = cfg.init::<B>(&dev()).unwrap();
        let prompts = vec![vec![3, 14, 15], vec![9, 2, 6, 5, 35, 8, 9], vec![7]];
        let batch = generate(&model, &prompts, &greedy(8)).unwrap();
        for (p, out) in prompts.iter().zip(&batch) {
            let alone = generate(&model, std::slice::from_ref(p), &greedy(8)).unwrap();
            assert_eq!(&alone[0], out, "{}", label(&cfg));
            assert_eq!(out.len(), 8);
        }
        // Greedy continuation agrees with the argmax of a plain forward pass.
        let mut seq: Vec<u32> = prompts[1].clone();
        seq.extend(&batch[1][..3]);
        let ids: Vec<i64> = seq.iter().map(|&x| x as i64).collect();
        let t = ids.len();
        let logits = model.forward(burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(ids, [1, t]),
            &dev(),
        ));
        let last = to_vec(logits.narrow(1, t - 1, 1));
        let argmax = last
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        assert_eq!(argmax, batch[1][3]);
    }
}

#[test]
fn sampling_is_seeded_and_top_k_one_is_greedy() {
    let model = small(80).init::<B>(&dev()).unwrap();
    let prompts = vec![vec![1, 2, 3], vec![4, 5]];
    let hot = |seed| Sampling {
        max_new_tokens: 12,
        temperature: 1.5,
        seed,
        ..Default::default()
    };
    let a = generate(&model, &prompts, &hot(7)).unwrap();
    assert_eq!(a, generate(&model, &prompts, &hot(7)).unwrap());
    assert_ne!(a, generate(&model, &prompts, &hot(8)).unwrap());
    let top1 = Sampling {
        top_k: Some(1),
        ..hot(9)
    };
    assert_eq!(
        generate(&model, &prompts, &top1).unwrap(),
        generate(&model, &prompts, &greedy(12)).unwrap()
    );
    let tiny_p = Sampling {
        top_p: Some(1e-6),
        ..hot(9)
    };
    assert_eq!(
        generate(&model, &prompts, &tiny_p).unwrap(),
        generate(&model, &prompts, &greedy(12)).unwrap()
    );
}

#[test]
fn stop_tokens_end_a_row_and_keep_the_others_going() {
    let model = small(80).init::<B>(&dev()).unwrap();
    let prompts = vec![vec![1, 2, 3], vec![4, 5, 6, 7]];
    let free = generate(&model, &prompts, &greedy(10)).unwrap();
    let stop = free[0][2];
    let first_in_row1 = free[1].iter().position(|&t| t == stop);
    let s = Sampling {
        stop_tokens: vec![stop],
        ..greedy(10)
    };
    let got = generate(&model, &prompts, &s).unwrap();
    let first = free[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(got[0], free[0][..=first].to_vec());
    match first_in_row1 {
        Some(i) => assert_eq!(got[1], free[1][..=i].to_vec()),
        None => assert_eq!(got[1], free[1]),
    }
}

#[test]
fn top_k_and_top_p_restrict_the_candidates() {
    // Probabilities 0.5, 0.3, 0.2 at temperature 1.
    let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let count = |s: &Sampling, rng: &mut ChaCha8Rng| {
        let mut c = [0usize; 3];
        for _ in 0..20_000 {
            c[s.pick(&logits, rng) as usize] += 1;
        }
        c
    };
    let plain = Sampling {
        temperature: 1.0,
        ..Default::default()
    };
    let c = count(&plain, &mut rng);
    assert!(
        (c[0] as f64 / 20_000.0 - 0.5).abs() < 0.02 && (c[2] as f64 / 20_000.0 - 0.2).abs() < 0.02,
        "{c:?}"
    );
    let c = count(
        &Sampling {
            top_k: Some(2),
            ..plain.clone()
        },
        &mut rng,
    );
    assert_eq!(c[2], 0);
    assert!((c[0] as f64 / 20_000.0 - 0.625).abs() < 0.02, "{c:?}");
    let c = count(
        &Sampling {
            top_p: Some(0.75),
            ..plain.clone()
        },
        &mut rng,
    );
    assert_eq!(c[2], 0, "top-p 0.75 keeps the two tokens reaching 0.8");
    let c = count(
        &Sampling {
            temperature: 0.0,
            ..plain
        },
        &mut rng,
    );
    assert_eq!(c, [20_000, 0, 0]);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let cfg = LlamaConfig {
        max_seq_len: 16,
        ..small(30)
    };
    let model = cfg.init::<B>(&dev()).unwrap();
    let e = |p: Vec<Vec<u32>>, s: Sampling| generate(&model, &p, &s).unwrap_err();
    assert!(matches!(e(vec![], greedy(2)), GenerateError::NoPrompts));
    assert!(matches!(
        e(vec![vec![1], vec![]], greedy(2)),
        GenerateError::EmptyPrompt(1)
    ));
    assert!(matches!(
        e(vec![vec![30]], greedy(2)),
        GenerateError::TokenOutOfRange { id: 30, .. }
    ));
    assert!(matches!(
        e(vec![vec![1; 10]], greedy(7)),
        GenerateError::TooLong { .. }
    ));
    assert!(matches!(
        e(
            vec![vec![1]],
            Sampling {
                temperature: -1.0,
                ..greedy(2)
            }
        ),
        GenerateError::Sampling(_)
    ));
    assert!(matches!(
        e(
            vec![vec![1]],
            Sampling {
                top_p: Some(1.5),
                ..greedy(2)
            }
        ),
        GenerateError::Sampling(_)
    ));
    assert!(matches!(
        e(
            vec![vec![1]],
            Sampling {
                top_k: Some(0),
                ..greedy(2)
            }
        ),
        GenerateError::Sampling(_)
    ));
    assert_eq!(
        generate(&model, &[vec![1; 10]], &greedy(6)).unwrap()[0].len(),
        6
    );
}

/// Records each step's logits of the decoder it wraps.
struct Recording<D> {
    inner: D,
    logits: Vec<Vec<f32>>,
}

impl<D: llama_model::Decoder<B>> llama_model::Decoder<B> for Recording<D> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn step(
        &mut self,
        model: &llama_model::Llama<B>,
        cache: &mut llama_model::KvCache<B>,
        input: llama_model::StepInput<'_>,
    ) -> burn::tensor::Tensor<B, 2> {
        let out = self.inner.step(model, cache, input);
        self.logits.push(to_vec(out.clone()));
        out
    }
}

/// The static-shape step (cache slot and mask on the device, attention over the whole capacity:
/// what the CUDA-graph decoder replays) computes the eager step's logits, padded rows included.
#[test]
fn the_static_decode_step_matches_the_eager_one() {
    use llama_model::{EagerDecoder, StaticDecoder, generate_with};
    let vocab = 60;
    let prompts = [vec![3, 14, 15], vec![9, 2, 6, 5, 35, 8, 9], vec![7]];
    for cfg in all_variants(vocab).into_iter().step_by(3) {
        let model = cfg.init::<B>(&dev()).unwrap();
        let hot = Sampling {
            max_new_tokens: 9,
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        };
        for prompts in [&prompts[..], &prompts[1..2]] {
            let mut eager = Recording {
                inner: EagerDecoder,
                logits: Vec::new(),
            };
            let mut fixed = Recording {
                inner: StaticDecoder,
                logits: Vec::new(),
            };
            let a = generate_with(&model, prompts, &hot, &mut eager).unwrap();
            let b = generate_with(&model, prompts, &hot, &mut fixed).unwrap();
            assert_eq!(a, b, "{}", label(&cfg));
            assert_eq!(eager.logits.len(), 8);
            assert_eq!(eager.logits.len(), fixed.logits.len());
            for (x, y) in eager.logits.iter().zip(&fixed.logits) {
                let worst = x
                    .iter()
                    .zip(y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-4, "{}: |Δ| {worst}", label(&cfg));
            }
        }
    }
}
