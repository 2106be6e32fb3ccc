mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use llama_model::generate::padding_mask;
use llama_model::position::Rope;
use llama_model::{AttentionMask, Llama};

#[test]
fn changing_future_tokens_never_changes_past_logits() {
    let vocab = 40;
    for cfg in all_variants(vocab) {
        let model = cfg.init::<B>(&dev()).unwrap();
        let t = 12;
        let a = tokens::<B>(2, t, vocab, 1, &dev());
        let future = tokens::<B>(2, t, vocab, 2, &dev());
        for cut in [0, 5, t - 2] {
            // Same tokens up to `cut`, different after.
            let b = Tensor::cat(
                vec![
                    a.clone().narrow(1, 0, cut + 1),
                    future.clone().narrow(1, cut + 1, t - cut - 1),
                ],
                1,
            );
            let la = to_vec(model.forward(a.clone()).narrow(1, 0, cut + 1));
            let lb = to_vec(model.forward(b).narrow(1, 0, cut + 1));
            assert!(
                rel_diff(&la, &lb) < 1e-6,
                "{} leaks the future at t={cut}",
                label(&cfg)
            );
        }
        // And the future does matter somewhere (the test can fail).
        let lf = to_vec(model.forward(future.clone()).narrow(1, t - 1, 1));
        let la = to_vec(model.forward(a.clone()).narrow(1, t - 1, 1));
        assert!(rel_diff(&la, &lf) > 1e-4);
    }
}

#[test]
fn kv_cache_decoding_equals_the_full_forward_pass_for_every_variant() {
    let vocab = 40;
    let t = 14;
    for cfg in all_variants(vocab) {
        let model = cfg.init::<B>(&dev()).unwrap();
        let toks = tokens::<B>(2, t, vocab, 3, &dev());
        let full = to_vec(model.forward(toks.clone()));
        let v = vocab;

        // Prefill 5 tokens, then a chunk of 4 (explicit mask with offset), then one at a time.
        let mut cache = model.new_cache(2, t, &dev());
        let mut got = Vec::new();
        let mut start = 0;
        for len in [5, 4, 1, 1, 1, 1, 1] {
            let chunk = toks.clone().narrow(1, start, len);
            let pos = Llama::<B>::default_positions(2, len, &dev()).add_scalar(start as i64);
            let mask = match (start, len) {
                (0, _) => AttentionMask::Causal,
                (_, 1) => AttentionMask::Full,
                _ => AttentionMask::Explicit(padding_mask::<B>(&[0, 0], start, len, &dev())),
            };
            let h = model.forward_hidden(chunk, &pos, &mask, Some(&mut cache));
            got.push(to_vec(model.logits(h)));
            start += len;
        }
        assert_eq!(start, t);
        assert_eq!(cache[0].len(), t);
        // Reassemble [batch, t, vocab] from the chunks.
        let mut cached = vec![0f32; full.len()];
        let mut s = 0;
        for (chunk, len) in got.iter().zip([5, 4, 1, 1, 1, 1, 1]) {
            for b in 0..2 {
                for j in 0..len {
                    let dst = (b * t + s + j) * v;
                    let src = (b * len + j) * v;
                    cached[dst..dst + v].copy_from_slice(&chunk[src..src + v]);
                }
            }
            s += len;
        }
        let d = rel_diff(&full, &cached);
        assert!(d <= 1e-5, "{}: cached decoding differs by {d}", label(&cfg));
    }
}

#[test]
fn left_padded_rows_give_the_same_logits_as_unpadded_ones() {
    let vocab = 40;
    for cfg in all_variants(vocab).into_iter().step_by(5) {
        let model = cfg.init::<B>(&dev()).unwrap();
        let toks = tokens::<B>(1, 6, vocab, 4, &dev());
        let alone = to_vec(model.forward(toks.clone()));
        let padded = Tensor::cat(vec![Tensor::<B, 2, Int>::zeros([1, 3], &dev()), toks], 1);
        let pos = llama_model::generate::positions::<B>(&[3], 0, 9, &dev());
        let mask = AttentionMask::Explicit(padding_mask::<B>(&[3], 0, 9, &dev()));
        let h = model.forward_hidden(padded, &pos, &mask, None);
        let got = to_vec(model.logits(h).narrow(1, 3, 6));
        assert!(rel_diff(&alone, &got) < 1e-5, "{}", label(&cfg));
    }
}

fn rotated_score(rope: &Rope<B>, q: &Tensor<B, 4>, k: &Tensor<B, 4>, m: i64, n: i64) -> f32 {
    let pos = |p: i64| Tensor::<B, 2, Int>::from_data(TensorData::new(vec![p], [1, 1]), &dev());
    let rq = rope.apply(q.clone(), &pos(m));
    let rk = rope.apply(k.clone(), &pos(n));
    (rq * rk).sum().into_scalar()
}

#[test]
fn rope_scores_depend_only_on_relative_position() {
    let hd = 16;
    let rope = Rope::<B>::new(hd, 512, 10_000.0, &dev());
    let vals = |seed: u64| -> Tensor<B, 4> {
        let v: Vec<f32> = (0..hd)
            .map(|i| ((i as u64 * 7919 + seed * 104729) % 97) as f32 / 48.0 - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(v, [1, 1, 1, hd]), &dev())
    };
    let (q, k) = (vals(1), vals(2));
    for (m, n) in [(0, 0), (5, 2), (3, 9), (100, 37)] {
        let base = rotated_score(&rope, &q, &k, m, n);
        for shift in [1, 17, 300] {
            let shifted = rotated_score(&rope, &q, &k, m + shift, n + shift);
            assert!(
                (base - shifted).abs() < 1e-4 * base.abs().max(1.0),
                "({m},{n})+{shift}: {base} vs {shifted}"
            );
        }
    }
    // A different relative offset gives a different score, and position 0 is the identity.
    assert!((rotated_score(&rope, &q, &k, 5, 2) - rotated_score(&rope, &q, &k, 5, 3)).abs() > 1e-3);
    let unrotated = (q.clone() * k.clone()).sum().into_scalar();
    assert!((rotated_score(&rope, &q, &k, 0, 0) - unrotated).abs() < 1e-6);
}

#[test]
fn ndarray_and_flex_give_the_same_logits() {
    use burn::backend::Flex;
    let vocab = 50;
    for cfg in all_variants(vocab).into_iter().step_by(3) {
        let model = cfg.init::<B>(&dev()).unwrap();
        let toks = tokens::<B>(2, 16, vocab, 5, &dev());
        let reference = to_vec(model.forward(toks.clone()));
        let fdev = Default::default();
        let flex = Llama::<Flex>::from_bytes(&cfg, model.to_bytes().unwrap(), &fdev).unwrap();
        let ftoks = Tensor::<Flex, 2, Int>::from_data(toks.into_data(), &fdev);
        let got = to_vec(flex.forward(ftoks));
        let d = rel_diff(&reference, &got);
        assert!(d <= 1e-5, "{}: flex differs by {d}", label(&cfg));
    }
}
