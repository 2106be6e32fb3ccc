//! Perplexity on held-out shards (a `llama data prepare` folder's validation split) or on a raw
//! text file (tokenised whole, cut into windows of the model's context that overlap by one token,
//! so every token after the first is predicted exactly once).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use llama_data::dataset::PackedDataset;
use llama_data::{LlamaTokenizer, Manifest};
use llama_model::Llama;

use super::report::TaskResult;

/// Sum of next-token negative log-likelihoods over equal-length `windows`, and how many tokens
/// were predicted.
fn nll_sum<B: Backend>(model: &Llama<B>, windows: &[Vec<u32>], device: &B::Device) -> (f64, usize) {
    let (n, len) = (windows.len(), windows[0].len());
    let ids: Vec<i64> = windows.iter().flatten().map(|&t| t as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, len]), device);
    let logits = model.forward(tokens.clone().narrow(1, 0, len - 1));
    let logp = log_softmax(logits.cast(DType::F32), 2);
    let picked = logp.gather(2, tokens.narrow(1, 1, len - 1).unsqueeze_dim::<3>(2));
    let sum = picked
        .sum()
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64")[0];
    (-sum, n * (len - 1))
}

/// Batches of same-length windows within `batch_tokens`.
fn sum_windows<B: Backend>(
    model: &Llama<B>,
    windows: &[Vec<u32>],
    batch_tokens: usize,
    device: &B::Device,
) -> (f64, usize) {
    let (mut total, mut count) = (0.0, 0);
    let mut i = 0;
    while i < windows.len() {
        let len = windows[i].len();
        let mut j = i + 1;
        while j < windows.len() && windows[j].len() == len && (j - i + 1) * len <= batch_tokens {
            j += 1;
        }
        let (s, c) = nll_sum(model, &windows[i..j], device);
        total += s;
        count += c;
        i = j;
    }
    (total, count)
}

/// The perplexity over `windows` (tokens and mean NLL as details) and the summed NLL.
fn perplexity<B: Backend>(
    name: &str,
    model: &Llama<B>,
    windows: &[Vec<u32>],
    batch_tokens: usize,
    device: &B::Device,
) -> (TaskResult, f64) {
    let (total, count) = sum_windows(model, windows, batch_tokens, device);
    let nll = total / count as f64;
    let mut r = TaskResult::new(name, "perplexity", nll.exp(), windows.len());
    r.details.insert("tokens".into(), count as f64);
    r.details.insert("nll_mean".into(), nll);
    (r, total)
}

pub fn evaluate<B: Backend>(
    model: &Llama<B>,
    tok: &LlamaTokenizer,
    path: &Path,
    batch_tokens: usize,
) -> Result<TaskResult> {
    let device = model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let seq = model.config().max_seq_len;
    let name = format!("ppl:{}", path.display());
    let result = if path.join("manifest.json").is_file() {
        let manifest = Manifest::load(path)?;
        ensure!(
            manifest.tokenizer.vocab_size <= model.config().vocab_size,
            "{} was tokenised with {} tokens, more than the model's {}",
            path.display(),
            manifest.tokenizer.vocab_size,
            model.config().vocab_size
        );
        let data = PackedDataset::validation(path, seq)?;
        let windows: Vec<Vec<u32>> = (0..data.len()).filter_map(|i| data.get(i)).collect();
        ensure!(
            !windows.is_empty(),
            "{} has no validation windows of {seq} tokens",
            path.display()
        );
        perplexity(&name, model, &windows, batch_tokens, &device).0
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
        let ids = tok.encode(&text, true)?;
        ensure!(
            ids.len() >= 2,
            "{} has too little text to predict a token",
            path.display()
        );
        let windows: Vec<Vec<u32>> = (0..ids.len() - 1)
            .step_by(seq)
            .map(|s| ids[s..(s + seq + 1).min(ids.len())].to_vec())
            .collect();
        let (mut r, total) = perplexity(&name, model, &windows, batch_tokens, &device);
        r.details.insert(
            "bits_per_byte".into(),
            total / std::f64::consts::LN_2 / text.len().max(1) as f64,
        );
        r
    };
    Ok(result)
}
