//! The run directory's records: `metrics.jsonl` and `metrics.csv` (one row per logged step or
//! evaluation) and `status.json` (running, finished, diverged or failed).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub step: u64,
    pub tokens: u64,
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub train_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    /// Before clipping.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mfu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_ppl: Option<f64>,
}

const CSV_HEADER: &str =
    "step,tokens,elapsed_s,train_loss,lr,grad_norm,tokens_per_s,mfu,val_loss,val_ppl";

impl MetricRow {
    fn csv(&self) -> String {
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
        format!(
            "{},{},{},{},{},{},{},{},{},{}",
            self.step,
            self.tokens,
            self.elapsed_s,
            f(self.train_loss),
            f(self.lr),
            f(self.grad_norm),
            f(self.tokens_per_s),
            f(self.mfu),
            f(self.val_loss),
            f(self.val_ppl)
        )
    }
}

/// Appends rows to both files, flushing each, so a killed run keeps what it logged.
pub struct MetricsLog {
    jsonl: PathBuf,
    csv: PathBuf,
    pub rows: Vec<MetricRow>,
}

impl MetricsLog {
    /// Opens the run's log; with `keep_until`, rows after that step (logged after the checkpoint
    /// a resumed run restarts from) are dropped, so the resumed log has no duplicates.
    pub fn open(dir: &Path, keep_until: Option<u64>) -> Result<Self> {
        let jsonl = dir.join("metrics.jsonl");
        let csv = dir.join("metrics.csv");
        let mut rows = Vec::new();
        if let Some(until) = keep_until
            && let Ok(text) = std::fs::read_to_string(&jsonl)
        {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let row: MetricRow = serde_json::from_str(line)
                    .with_context(|| format!("{}: bad row", jsonl.display()))?;
                if row.step <= until {
                    rows.push(row);
                }
            }
        }
        let log = Self { jsonl, csv, rows };
        log.rewrite()?;
        Ok(log)
    }

    fn rewrite(&self) -> Result<()> {
        let mut j = String::new();
        let mut c = format!("{CSV_HEADER}\n");
        for r in &self.rows {
            j += &serde_json::to_string(r)?;
            j.push('\n');
            c += &r.csv();
            c.push('\n');
        }
        llama_data::manifest::write_atomic(&self.jsonl, j.as_bytes())?;
        llama_data::manifest::write_atomic(&self.csv, c.as_bytes())?;
        Ok(())
    }

    pub fn push(&mut self, row: MetricRow) -> Result<()> {
        append(&self.jsonl, &serde_json::to_string(&row)?)?;
        append(&self.csv, &row.csv())?;
        self.rows.push(row);
        Ok(())
    }
}

fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Finished,
    Diverged,
    Failed,
}

/// `status.json`: what a reader of the run directory needs to know without parsing logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub step: u64,
    pub steps: u64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub final_val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub best_val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_s: Option<f64>,
    pub params: u64,
}

impl Status {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        llama_data::manifest::write_atomic(&dir.join("status.json"), text.as_bytes())?;
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("status.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}
