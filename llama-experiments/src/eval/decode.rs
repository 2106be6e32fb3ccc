//! Running generation tasks: prompts batched through `llama_model::generate` (greedy, stopped at
//! end-of-sequence or the token budget), answers cut at the task's stop strings and checked.

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use llama_data::LlamaTokenizer;
use llama_model::{Llama, Sampling, generate};
use serde_json::json;

use super::generation::{GenItem, GenTask};
use super::report::{TaskResult, accuracy};
use super::run::shot_indices;

/// Prompts per `generate` call.
const BATCH: usize = 8;

/// Greedy answers for `items` (each after `shots` solved examples drawn from `pool`, which holds
/// the items at the same indices); returns the accuracy and one JSON object per item.
#[allow(clippy::too_many_arguments)]
pub fn run_generation<B: Backend>(
    model: &Llama<B>,
    tok: &LlamaTokenizer,
    task: &GenTask,
    items: &[GenItem],
    pool: &[GenItem],
    shots: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<(TaskResult, Vec<serde_json::Value>)> {
    let max = model.config().max_seq_len;
    // A short-context model gets half its window for the answer.
    let new_tokens = task.max_new_tokens.min(max / 2).max(1);
    let mut prompts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let picks = if shots > 0 {
            shot_indices(pool.len(), |j| j == i, shots, seed, i)?
        } else {
            Vec::new()
        };
        let shown: Vec<&GenItem> = picks.iter().map(|&j| &pool[j]).collect();
        let text = task.prompt(&shown, item);
        let mut ids = tok
            .encode(&text, true)
            .with_context(|| item.source.clone())?;
        // A prompt longer than the window keeps its end (the question), losing early examples.
        let room = max - new_tokens;
        if ids.len() > room {
            ids.drain(..ids.len() - room);
        }
        prompts.push(ids);
    }
    let sampling = Sampling {
        max_new_tokens: new_tokens,
        stop_tokens: tok.eos.into_iter().collect(),
        ..Default::default()
    };
    let mut correct = Vec::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (chunk, batch) in items.chunks(BATCH).zip(prompts.chunks(BATCH)) {
        let generated = generate(model, batch, &sampling)?;
        for (item, ids) in chunk.iter().zip(generated) {
            let text = tok.decode(&ids)?;
            let ok = task.correct(&text, item);
            correct.push(ok);
            out.push(json!({
                "task": task.name,
                "source": item.source,
                "generated": task.cut(&text),
                "correct": ok,
            }));
        }
        progress(chunk.len());
    }
    let metric = match task.kind {
        super::generation::GenKind::ExactMatch => "exact_match",
        super::generation::GenKind::FinalNumber => "acc",
    };
    let mut r = accuracy(task.name, &correct, shots);
    r.metric = metric.to_string();
    r.details.insert("max_new_tokens".into(), new_tokens as f64);
    Ok((r, out))
}
