//! Results: one row per task (metric, value, standard error, item count, shots), as JSON and as a
//! Markdown table.

use std::collections::BTreeMap;
use std::path::Path;

use llama_model::Precision;
use serde::Serialize;

use super::choice::Normalisation;

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub precision: Precision,
    pub tasks: Vec<TaskResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    /// `acc` (a fraction), `perplexity`, ...
    pub metric: String,
    pub value: f64,
    /// Standard error of `value` (for an accuracy: the sample standard deviation over √n).
    pub stderr: Option<f64>,
    pub items: usize,
    pub shots: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalisation: Option<Normalisation>,
    /// Further numbers (perplexity: tokens, nll, bits per byte).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, f64>,
    /// Per-subject results (MMLU).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<TaskResult>,
}

impl TaskResult {
    pub fn new(task: &str, metric: &str, value: f64, items: usize) -> Self {
        Self {
            task: task.to_string(),
            metric: metric.to_string(),
            value,
            stderr: None,
            items,
            shots: 0,
            normalisation: None,
            details: BTreeMap::new(),
            subtasks: Vec::new(),
        }
    }
}

/// Accuracy of `correct` with its standard error `sqrt(p(1 − p) / (n − 1))`.
pub fn accuracy(task: &str, correct: &[bool], shots: usize) -> TaskResult {
    let n = correct.len();
    let p = correct.iter().filter(|&&c| c).count() as f64 / n.max(1) as f64;
    let mut r = TaskResult::new(task, "acc", p, n);
    r.stderr = (n > 1).then(|| (p * (1.0 - p) / (n - 1) as f64).sqrt());
    r.shots = shots;
    r
}

/// The unweighted mean over subtasks (MMLU's "average"), its standard error from theirs
/// (independent subsets), and the item-weighted accuracy as a detail.
pub fn mean_of_subtasks(task: &str, parts: Vec<TaskResult>, shots: usize) -> TaskResult {
    let k = parts.len().max(1) as f64;
    let mean = parts.iter().map(|p| p.value).sum::<f64>() / k;
    let items: usize = parts.iter().map(|p| p.items).sum();
    let mut r = TaskResult::new(task, "acc", mean, items);
    r.stderr = Some(
        parts
            .iter()
            .map(|p| p.stderr.unwrap_or(0.0).powi(2))
            .sum::<f64>()
            .sqrt()
            / k,
    );
    r.shots = shots;
    let weighted =
        parts.iter().map(|p| p.value * p.items as f64).sum::<f64>() / items.max(1) as f64;
    r.details.insert("acc_item_weighted".into(), weighted);
    r.subtasks = parts;
    r
}

impl EvalReport {
    pub fn new(checkpoint: &Path, precision: Precision) -> Self {
        Self {
            checkpoint: checkpoint.display().to_string(),
            precision,
            tasks: Vec::new(),
        }
    }

    /// The task table, then a per-subject table for tasks that have subtasks.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Checkpoint `{}` ({} compute)\n\n| task | metric | value | ± stderr | items | shots |\n|---|---|---:|---:|---:|---:|\n",
            self.checkpoint, self.precision
        );
        let row = |t: &TaskResult| {
            let pct = matches!(
                t.metric.as_str(),
                "acc" | "exact_match" | "pct_stereotype" | "pass@1"
            );
            let f = |v: f64| {
                if pct {
                    format!("{:.2}", 100.0 * v)
                } else {
                    format!("{v:.4}")
                }
            };
            format!(
                "| {} | {}{} | {} | {} | {} | {} |\n",
                t.task,
                t.metric,
                if pct { " (%)" } else { "" },
                f(t.value),
                t.stderr.map(f).unwrap_or_else(|| "–".into()),
                t.items,
                t.shots
            )
        };
        for t in &self.tasks {
            s.push_str(&row(t));
        }
        for t in self.tasks.iter().filter(|t| !t.subtasks.is_empty()) {
            s.push_str(&format!(
                "\n{} by subset\n\n| task | metric | value | ± stderr | items | shots |\n|---|---|---:|---:|---:|---:|\n",
                t.task
            ));
            for p in &t.subtasks {
                s.push_str(&row(p));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_its_standard_error() {
        let r = accuracy("x", &[true, false, true, true], 0);
        assert_eq!(r.value, 0.75);
        assert!((r.stderr.unwrap() - (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-15);
        let m = mean_of_subtasks(
            "m",
            vec![
                accuracy("a", &[true, true], 5),
                accuracy("b", &[false; 4], 5),
            ],
            5,
        );
        assert_eq!(m.value, 0.5);
        assert!((m.details["acc_item_weighted"] - 2.0 / 6.0).abs() < 1e-15);
        let mut rep = EvalReport::new(Path::new("ck"), Precision::F32);
        rep.tasks.push(m);
        let md = rep.markdown();
        assert!(md.contains("| m | acc (%) | 50.00 |"), "{md}");
        assert!(md.contains("m by subset"), "{md}");
    }
}
