//! Log-likelihood of continuations given contexts, batched, with shared contexts computed once.
//!
//! Requests that share a context (the choices of one question) form a group. When every
//! continuation of a group is one token (answer letters, " yes"/" no"), one forward pass over the
//! context scores them all, and many such contexts go through the model together. Otherwise the
//! context runs once into a KV cache, which is repeated for the group's continuations, scored
//! together in a second pass. Either way the numbers equal those of one full pass per choice
//! (`tests` checks that against the plain computation).

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use llama_model::generate::padding_mask;
use llama_model::{AttentionMask, Llama};
use serde::Serialize;

/// Token ids of a context (BOS included) and of a continuation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// `log P(continuation | context)` and whether greedy decoding would have produced it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LogLik {
    pub loglik: f64,
    pub greedy: bool,
    /// Only the continuation's last tokens fitted the model's window and were scored.
    pub truncated: bool,
}

/// Scores `requests` in order. `batch_tokens` bounds the tokens of one forward pass (at least one
/// context always goes through); `done(n)` is told how many requests are finished.
pub fn score<B: Backend>(
    model: &Llama<B>,
    requests: &[Request],
    batch_tokens: usize,
    done: &mut dyn FnMut(usize),
) -> Result<Vec<LogLik>> {
    let max = model.config().max_seq_len;
    for (i, r) in requests.iter().enumerate() {
        if r.context.is_empty() || r.continuation.is_empty() {
            bail!("request {i} has an empty context or continuation");
        }
    }
    // A continuation longer than the window keeps its last `max` tokens, after the token before
    // them (the part that fits is scored; such results are flagged `truncated`).
    let truncated: Vec<bool> = requests
        .iter()
        .map(|r| r.continuation.len() > max)
        .collect();
    let requests: Cow<[Request]> = if truncated.contains(&true) {
        Cow::Owned(requests.iter().map(|r| fit(r, max)).collect())
    } else {
        Cow::Borrowed(requests)
    };
    let requests = &requests[..];
    // Groups of requests with the same context, in order of first appearance.
    let mut index: HashMap<&[u32], usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let g = *index.entry(&r.context).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let mut out = vec![
        LogLik {
            loglik: 0.0,
            greedy: false,
            truncated: false,
        };
        requests.len()
    ];
    let (single, multi): (Vec<_>, Vec<_>) = groups
        .into_iter()
        .partition(|g| g.iter().all(|&i| requests[i].continuation.len() == 1));
    // One-token continuations: contexts batched, longest first, within the token budget.
    let mut single = single;
    single.sort_by_key(|g| std::cmp::Reverse(requests[g[0]].context.len()));
    let mut start = 0;
    while start < single.len() {
        let longest = requests[single[start][0]].context.len().min(max);
        let rows = (batch_tokens / longest.max(1)).max(1);
        let end = (start + rows).min(single.len());
        score_single_token(model, requests, &single[start..end], &mut out);
        done(single[start..end].iter().map(Vec::len).sum());
        start = end;
    }
    // Large groups (CrowS-Pairs: every sentence after the same `<s>`) go in slices that keep
    // the continuation pass within the token budget.
    for g in multi {
        let longest = g
            .iter()
            .map(|&i| requests[i].continuation.len())
            .max()
            .unwrap_or(1);
        for chunk in g.chunks((batch_tokens / longest).max(1)) {
            score_group(model, requests, chunk, &mut out);
            done(chunk.len());
        }
    }
    for (o, t) in out.iter_mut().zip(truncated) {
        o.truncated = t;
    }
    Ok(out)
}

/// `r` with its continuation cut to the last `max` tokens and the token before them as context.
fn fit(r: &Request, max: usize) -> Request {
    if r.continuation.len() <= max {
        return r.clone();
    }
    let all: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
    let keep = &all[all.len() - max - 1..];
    Request {
        context: keep[..1].to_vec(),
        continuation: keep[1..].to_vec(),
    }
}

fn device<B: Backend>(model: &Llama<B>) -> B::Device {
    model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device")
}

/// The last `keep` tokens of `ids`.
fn tail(ids: &[u32], keep: usize) -> &[u32] {
    &ids[ids.len().saturating_sub(keep)..]
}

fn int_tensor<B: Backend, const D: usize>(
    ids: Vec<i64>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D, Int> {
    Tensor::from_data(TensorData::new(ids, shape), device)
}

fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("f32 data")
}

fn host_i64<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().into_vec().expect("i64 data")
}

/// Groups whose continuations are single tokens: one forward pass over the (right-padded)
/// contexts, then the next-token distribution at each context's last position.
fn score_single_token<B: Backend>(
    model: &Llama<B>,
    requests: &[Request],
    groups: &[Vec<usize>],
    out: &mut [LogLik],
) {
    let dev = device(model);
    let max = model.config().max_seq_len;
    let contexts: Vec<&[u32]> = groups
        .iter()
        .map(|g| tail(&requests[g[0]].context, max))
        .collect();
    let (n, len) = (
        contexts.len(),
        contexts.iter().map(|c| c.len()).max().unwrap_or(1),
    );
    let ids: Vec<i64> = contexts
        .iter()
        .flat_map(|c| {
            c.iter()
                .map(|&t| t as i64)
                .chain(std::iter::repeat_n(0, len - c.len()))
        })
        .collect();
    let tokens = int_tensor::<B, 2>(ids, [n, len], &dev);
    let positions = Llama::<B>::default_positions(n, len, &dev);
    // Right padding only adds positions after each context: causal attention keeps it unseen.
    let hidden = model.forward_hidden(tokens, &positions, &AttentionMask::Causal, None);
    let d = hidden.dims()[2];
    let last: Vec<i64> = contexts.iter().map(|c| c.len() as i64 - 1).collect();
    let idx = int_tensor::<B, 3>(last, [n, 1, 1], &dev).expand([n, 1, d]);
    let logits = model
        .logits(hidden.gather(1, idx))
        .reshape([n, model.config().vocab_size]);
    let logp = log_softmax(logits.cast(DType::F32), 1);
    let width = groups.iter().map(Vec::len).max().unwrap_or(1);
    let targets: Vec<i64> = groups
        .iter()
        .flat_map(|g| {
            let t: Vec<i64> = g
                .iter()
                .map(|&i| requests[i].continuation[0] as i64)
                .collect();
            let pad = width - t.len();
            t.into_iter().chain(std::iter::repeat_n(0, pad))
        })
        .collect();
    let argmax = host_i64(logp.clone().argmax(1));
    let picked = host_f32(logp.gather(1, int_tensor::<B, 2>(targets, [n, width], &dev)));
    for (r, g) in groups.iter().enumerate() {
        for (j, &i) in g.iter().enumerate() {
            out[i] = LogLik {
                loglik: picked[r * width + j] as f64,
                greedy: argmax[r] == requests[i].continuation[0] as i64,
                truncated: false,
            };
        }
    }
}

/// One context, several continuations: the context into a KV cache once, then every continuation
/// (right-padded) against copies of that cache.
fn score_group<B: Backend>(
    model: &Llama<B>,
    requests: &[Request],
    group: &[usize],
    out: &mut [LogLik],
) {
    let dev = device(model);
    let max = model.config().max_seq_len;
    let conts: Vec<&[u32]> = group
        .iter()
        .map(|&i| requests[i].continuation.as_slice())
        .collect();
    let longest = conts.iter().map(|c| c.len()).max().unwrap_or(1);
    // The context loses its oldest tokens when context + continuation exceeds the window.
    let context = tail(&requests[group[0]].context, max + 1 - longest);
    let c = context.len();
    let mut cache = model.new_cache(1, c + longest - 1, &dev);
    let tokens = int_tensor::<B, 2>(context.iter().map(|&t| t as i64).collect(), [1, c], &dev);
    let positions = Llama::<B>::default_positions(1, c, &dev);
    let hidden = model.forward_hidden(tokens, &positions, &AttentionMask::Causal, Some(&mut cache));
    let first = log_softmax(model.logits(hidden.narrow(1, c - 1, 1)).cast(DType::F32), 2);
    let first_argmax = host_i64(first.clone().argmax(2))[0];
    let first = host_f32(first);
    let mut sums: Vec<LogLik> = conts
        .iter()
        .map(|x| LogLik {
            loglik: first[x[0] as usize] as f64,
            greedy: first_argmax == x[0] as i64,
            truncated: false,
        })
        .collect();
    if longest > 1 {
        let (n, t) = (conts.len(), longest - 1);
        let mut cache: Vec<_> = cache.iter().map(|l| l.repeat_row(n)).collect();
        let pad = |x: &[u32], from: usize| -> Vec<i64> {
            let v: Vec<i64> = x[from..].iter().map(|&t| t as i64).collect();
            let fill = t - v.len();
            v.into_iter().chain(std::iter::repeat_n(0, fill)).collect()
        };
        let inputs: Vec<i64> = conts
            .iter()
            .flat_map(|x| pad(&x[..x.len() - 1], 0))
            .collect();
        let targets: Vec<i64> = conts.iter().flat_map(|x| pad(x, 1)).collect();
        let tokens = int_tensor::<B, 2>(inputs, [n, t], &dev);
        let positions = int_tensor::<B, 1>((c as i64..(c + t) as i64).collect(), [t], &dev)
            .unsqueeze::<2>()
            .expand([n, t]);
        let mask = AttentionMask::Explicit(padding_mask::<B>(&vec![0; n], c, t, &dev));
        let hidden = model.forward_hidden(tokens, &positions, &mask, Some(&mut cache));
        let logp = log_softmax(model.logits(hidden).cast(DType::F32), 2);
        let argmax = host_i64(logp.clone().argmax(2));
        let picked = host_f32(logp.gather(2, int_tensor::<B, 3>(targets.clone(), [n, t, 1], &dev)));
        for (j, x) in conts.iter().enumerate() {
            for k in 0..x.len() - 1 {
                sums[j].loglik += picked[j * t + k] as f64;
                sums[j].greedy &= argmax[j * t + k] == targets[j * t + k];
            }
        }
    }
    for (j, &i) in group.iter().enumerate() {
        out[i] = sums[j];
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use llama_model::LlamaConfig;

    use super::*;

    type B = NdArray<f32>;

    /// The plain computation: one full causal pass over context + continuation per request.
    fn plain(model: &Llama<B>, r: &Request) -> LogLik {
        let dev = Default::default();
        let all: Vec<i64> = r
            .context
            .iter()
            .chain(&r.continuation)
            .map(|&t| t as i64)
            .collect();
        let n = all.len() - 1;
        let logits = model.forward(int_tensor::<B, 2>(all[..n].to_vec(), [1, n], &dev));
        let logp = host_f32(log_softmax(logits.cast(DType::F32), 2));
        let v = model.config().vocab_size;
        let mut out = LogLik {
            loglik: 0.0,
            greedy: true,
            truncated: false,
        };
        for (k, &tok) in all.iter().enumerate().skip(r.context.len()) {
            let row = &logp[(k - 1) * v..k * v];
            out.loglik += row[tok as usize] as f64;
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            out.greedy &= best == tok as usize;
        }
        out
    }

    #[test]
    fn batched_and_cached_scores_equal_one_pass_per_request() {
        let cfg = LlamaConfig {
            multiple_of: 16,
            init_std: 0.2,
            n_kv_heads: Some(2),
            ..LlamaConfig::llama(40, 32, 2, 4, 24)
        };
        let model = cfg.init::<B>(&Default::default()).unwrap();
        let r = |c: &[u32], x: &[u32]| Request {
            context: c.to_vec(),
            continuation: x.to_vec(),
        };
        let requests = vec![
            // A group with continuations of different lengths (the cached path).
            r(&[1, 5, 9, 2], &[7, 3, 3]),
            r(&[1, 5, 9, 2], &[8]),
            r(&[1, 5, 9, 2], &[11, 12]),
            // Single-token groups of different context lengths (the batched path).
            r(&[1, 4], &[6]),
            r(&[1, 4], &[9]),
            r(&[1, 3, 3, 3, 3, 3, 3], &[2]),
            // A context longer than the window keeps its last tokens.
            r(&(0..30).map(|i| (i % 39) + 1).collect::<Vec<_>>(), &[5, 6]),
        ];
        let mut seen = 0;
        let got = score(&model, &requests, 16, &mut |n| seen += n).unwrap();
        assert_eq!(seen, requests.len());
        for (i, (req, g)) in requests.iter().zip(&got).enumerate() {
            let mut req = req.clone();
            let keep = 24 + 1 - req.continuation.len();
            req.context = tail(&req.context, keep).to_vec();
            let want = plain(&model, &req);
            assert!(
                (want.loglik - g.loglik).abs() < 1e-4,
                "request {i}: {want:?} vs {g:?}"
            );
            assert_eq!(want.greedy, g.greedy, "request {i}");
        }
        // The model's own greedy continuation is flagged as greedy, in both paths.
        let ctx = [1u32, 5, 9, 2];
        let mut greedy = Vec::new();
        for _ in 0..3 {
            let all: Vec<i64> = ctx.iter().chain(&greedy).map(|&t| t as i64).collect();
            let n = all.len();
            let logits = model.forward(int_tensor::<B, 2>(all, [1, n], &Default::default()));
            greedy.push(host_i64(logits.narrow(1, n - 1, 1).argmax(2))[0] as u32);
        }
        let got = score(
            &model,
            &[r(&ctx, &greedy), r(&ctx, &greedy[..1])],
            16,
            &mut |_| {},
        )
        .unwrap();
        assert!(got[0].greedy && got[1].greedy, "{got:?}");
        // A continuation longer than the window: its last 24 tokens are scored after the one
        // before them, and the result says so.
        let long: Vec<u32> = (0..30).map(|i| (i % 37) + 2).collect();
        let got = score(&model, &[r(&[1, 4], &long)], 16, &mut |_| {}).unwrap();
        let all: Vec<u32> = [1, 4].iter().chain(&long).copied().collect();
        let want = plain(
            &model,
            &r(&all[all.len() - 25..all.len() - 24], &all[all.len() - 24..]),
        );
        assert!(
            got[0].truncated && (got[0].loglik - want.loglik).abs() < 1e-4,
            "{got:?} {want:?}"
        );
        let err = score(&model, &[r(&[], &[1])], 16, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
