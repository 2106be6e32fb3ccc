//! HumanEval (Chen et al., 2021): complete each function from its signature and docstring, run
//! the problem's tests on every sample in the sandbox, and report pass@k with the unbiased
//! estimator. Completions stop at the Codex paper's stop sequences.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use burn::tensor::backend::Backend;
use llama_data::LlamaTokenizer;
use llama_model::{Llama, Sampling, generate};
use serde_json::json;

use super::answers::pass_at_k;
use super::records::read;
use super::report::TaskResult;
use super::sandbox::{Limits, Outcome, run_python};

pub const FILE: &str = "humaneval.jsonl";

/// Where a completion ends: the next top-level statement.
const STOPS: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub source: String,
    pub task_id: String,
    pub prompt: String,
    pub entry_point: String,
    pub test: String,
}

pub fn load(path: &Path) -> Result<Vec<Problem>> {
    read(path)?
        .iter()
        .map(|r| {
            Ok(Problem {
                source: r.source.clone(),
                task_id: r.str("task_id")?.to_string(),
                prompt: r.str("prompt")?.to_string(),
                entry_point: r.str("entry_point")?.to_string(),
                test: r.str("test")?.to_string(),
            })
        })
        .collect()
}

pub fn truncate(completion: &str) -> &str {
    let end = STOPS
        .iter()
        .filter_map(|s| completion.find(s))
        .min()
        .unwrap_or(completion.len());
    &completion[..end]
}

/// The program the sandbox runs: prompt, completion, the tests, the call of `check`.
pub fn program(p: &Problem, completion: &str) -> String {
    format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        p.prompt, completion, p.test, p.entry_point
    )
}

/// How HumanEval is sampled.
#[derive(Debug, Clone)]
pub struct HumanEvalOptions {
    /// Samples per problem (n of pass@k).
    pub samples: usize,
    /// 0 is greedy.
    pub temperature: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub python: PathBuf,
    pub limits: Limits,
}

pub fn run<B: Backend>(
    model: &Llama<B>,
    tok: &LlamaTokenizer,
    problems: &[Problem],
    opts: &HumanEvalOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<(TaskResult, Vec<serde_json::Value>)> {
    let n = opts.samples.max(1);
    let max = model.config().max_seq_len;
    ensure!(
        opts.max_new_tokens < max,
        "HumanEval's {} new tokens exceed the model's context of {max}",
        opts.max_new_tokens
    );
    let mut passed_counts = Vec::with_capacity(problems.len());
    let mut items = Vec::with_capacity(problems.len());
    for (i, p) in problems.iter().enumerate() {
        let mut ids = tok
            .encode(&p.prompt, true)
            .with_context(|| p.source.clone())?;
        let room = max - opts.max_new_tokens;
        if ids.len() > room {
            ids.drain(..ids.len() - room);
        }
        let sampling = Sampling {
            max_new_tokens: opts.max_new_tokens,
            temperature: opts.temperature,
            top_p: (opts.temperature > 0.0).then_some(0.95),
            seed: opts.seed.wrapping_add(i as u64),
            stop_tokens: tok.eos.into_iter().collect(),
            ..Default::default()
        };
        let outs = generate(model, &vec![ids; n], &sampling)?;
        let mut passed = 0;
        let mut outcomes = Vec::with_capacity(n);
        for ids in outs {
            let text = tok.decode(&ids)?;
            let completion = truncate(&text);
            let outcome = run_python(&opts.python, &program(p, completion), opts.limits)?;
            passed += usize::from(outcome == Outcome::Passed);
            outcomes.push(json!({"completion": completion, "outcome": format!("{outcome:?}")}));
        }
        passed_counts.push(passed);
        items.push(
            json!({"task": "humaneval", "source": p.source, "task_id": p.task_id,
                          "passed": passed, "samples": outcomes}),
        );
        progress(1);
    }
    let pass = |k: usize| -> f64 {
        passed_counts
            .iter()
            .map(|&c| pass_at_k(n, c, k))
            .sum::<f64>()
            / problems.len().max(1) as f64
    };
    let mut r = TaskResult::new("humaneval", "pass@1", pass(1), problems.len());
    let p1 = r.value;
    r.stderr = (problems.len() > 1).then(|| (p1 * (1.0 - p1) / (problems.len() - 1) as f64).sqrt());
    for k in [10, 100] {
        if k <= n {
            r.details.insert(format!("pass@{k}"), pass(k));
        }
    }
    r.details.insert("samples_per_problem".into(), n as f64);
    r.details.insert("temperature".into(), opts.temperature);
    Ok((r, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_solutions_pass_and_wrong_ones_fail() {
        let python = Path::new("/usr/bin/python3");
        if !python.exists() {
            eprintln!("skipping: no /usr/bin/python3");
            return;
        }
        let p = Problem {
            source: "t:1".into(),
            task_id: "Toy/0".into(),
            prompt: "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n".into(),
            entry_point: "add".into(),
            test: "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n".into(),
        };
        let good = truncate("    return a + b\n\ndef unrelated():\n    pass\n");
        assert_eq!(good, "    return a + b\n");
        let run = |c: &str| run_python(python, &program(&p, c), Limits::default()).unwrap();
        assert_eq!(run(good), Outcome::Passed);
        assert!(matches!(run("    return a - b\n"), Outcome::Failed(_)));
        // The shared HumanEval file's own canonical solutions pass, when it is present.
        let shared =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/evals/humaneval.jsonl");
        if shared.is_file() {
            let records = read(&shared).unwrap();
            for (r, p) in records.iter().zip(load(&shared).unwrap()).take(10) {
                let sol = r.str("canonical_solution").unwrap();
                assert_eq!(
                    run_python(python, &program(&p, sol), Limits::default()).unwrap(),
                    Outcome::Passed,
                    "{}",
                    p.task_id
                );
            }
        }
    }
}
