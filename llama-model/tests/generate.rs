mod common;

use common::*;
use llama_model::{GenerateError, LlamaConfig, Sampling, generate};
use rand::{Rng, SeedableRng};
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
fn stops_inside_a_chunk_and_other_rows_draws_are_unchanged() {
    // Longer than one chunk of device-drawn tokens, sampled: a row that stops keeps its stop
    // token and drops the rest of its chunk; the other row draws from its own stream, so its
    // tokens are those of the run without the stop.
    let model = small(80).init::<B>(&dev()).unwrap();
    let prompts = vec![vec![1, 2, 3], vec![4, 5, 6, 7]];
    let n = llama_model::generate::CHUNK * 2 + 5;
    let hot = Sampling {
        max_new_tokens: n,
        temperature: 1.2,
        top_k: Some(20),
        seed: 11,
        ..Default::default()
    };
    let free = generate(&model, &prompts, &hot).unwrap();
    assert_eq!(free[0].len(), n);
    // A token of row 0 past the first chunk that row 1 never draws.
    let at = (llama_model::generate::CHUNK + 2..n)
        .find(|&i| !free[1].contains(&free[0][i]))
        .expect("a token only row 0 draws");
    let stop = free[0][at];
    let got = generate(
        &model,
        &prompts,
        &Sampling {
            stop_tokens: vec![stop],
            ..hot.clone()
        },
    )
    .unwrap();
    let first = free[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(got[0], free[0][..=first].to_vec());
    assert_eq!(got[1], free[1]);
}

/// Host picks of `logits` `[rows, vocab]` for the draws `(i + 0.5) / n`, against the device
/// sampler's.
fn host_and_device_picks(s: &Sampling, logits: &[f32], rows: usize, n: usize) -> Vec<(u32, u32)> {
    use burn::tensor::{Tensor, TensorData};
    let vocab = logits.len() / rows;
    let u: Vec<f32> = (0..n).map(|i| (i as f32 + 0.5) / n as f32).collect();
    let draws: Vec<f32> = u
        .iter()
        .flat_map(|&x| std::iter::repeat_n(x, rows))
        .collect();
    let sampler = llama_model::Sampler::<B>::from_draws(
        s,
        Tensor::from_data(TensorData::new(draws, [n, rows]), &dev()),
    );
    let t = Tensor::<B, 2>::from_data(TensorData::new(logits.to_vec(), [rows, vocab]), &dev());
    let mut out = Vec::new();
    for (i, &x) in u.iter().enumerate() {
        let got: Vec<i64> = sampler
            .sample(t.clone(), i)
            .into_data()
            .convert::<i64>()
            .into_vec()
            .unwrap();
        for r in 0..rows {
            let want = s.pick(&logits[r * vocab..(r + 1) * vocab], x as f64);
            out.push((want, got[r] as u32));
        }
    }
    out
}

#[test]
fn the_device_sampler_draws_what_the_host_reference_draws() {
    // 40 tokens split into blocks of 5, 41 (a prime) padded to 6 blocks of 7.
    for (rows, vocab) in [(3, 40), (2, 41)] {
        let mut rng = ChaCha8Rng::seed_from_u64(vocab as u64);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|i| rng.random::<f32>() * (1 + i / vocab) as f32 * 3.0)
            .collect();
        let base = Sampling {
            temperature: 0.8,
            ..Default::default()
        };
        let settings = [
            Sampling {
                temperature: 0.0,
                ..base.clone()
            },
            base.clone(),
            Sampling {
                temperature: 1.7,
                top_k: Some(5),
                ..base.clone()
            },
            Sampling {
                top_p: Some(0.6),
                ..base.clone()
            },
            Sampling {
                top_k: Some(12),
                top_p: Some(0.85),
                ..base.clone()
            },
            Sampling {
                top_p: Some(1.0),
                ..base.clone()
            },
        ];
        for s in &settings {
            let picks = host_and_device_picks(s, &logits, rows, 256);
            let wrong = picks.iter().filter(|(h, d)| h != d).count();
            assert_eq!(wrong, 0, "{s:?}: {wrong} of {} picks differ", picks.len());
            // The draws reach more than one token where the setting leaves a choice.
            let distinct: std::collections::HashSet<_> = picks.iter().map(|p| p.0).collect();
            assert!(s.temperature == 0.0 || distinct.len() > rows, "{s:?}");
        }
    }
    // Top-k keeps the tokens tied with the k-th (here two at 1.0 for k = 2), whatever order a
    // sort gives them; greedy picks the first of tied maxima.
    let tied = [2.0f32, 1.0, 1.0, 0.0, 3.0, 3.0];
    let k2 = Sampling {
        top_k: Some(2),
        temperature: 1.0,
        ..Default::default()
    };
    let picks = host_and_device_picks(&k2, &tied[..4], 1, 128);
    let seen: std::collections::HashSet<_> = picks.iter().map(|p| p.1).collect();
    assert!(picks.iter().all(|(h, d)| h == d), "{picks:?}");
    assert_eq!(seen, [0, 1, 2].into_iter().collect());
    let greedy = host_and_device_picks(&Sampling::default(), &tied, 1, 1);
    assert_eq!(greedy, vec![(4, 4)]);
}

#[test]
fn each_row_draws_from_its_own_stream() {
    let s = Sampling {
        seed: 9,
        temperature: 1.0,
        ..Default::default()
    };
    assert_eq!(s.draws(1, 5), s.draws(1, 8)[..5]);
    assert_ne!(s.draws(0, 5), s.draws(1, 5));
    assert!(s.draws(2, 1000).iter().all(|u| (0.0..1.0).contains(u)));
    let other = Sampling {
        seed: 10,
        ..s.clone()
    };
    assert_ne!(s.draws(0, 5), other.draws(0, 5));
}

#[test]
fn top_k_and_top_p_restrict_the_candidates() {
    // Probabilities 0.5, 0.3, 0.2 at temperature 1.
    let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let count = |s: &Sampling, rng: &mut ChaCha8Rng| {
        let mut c = [0usize; 3];
        for _ in 0..20_000 {
            c[s.pick(&logits, rng.random()) as usize] += 1;
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
        input: llama_model::StepInput<'_, B>,
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
