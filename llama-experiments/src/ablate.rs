//! `llama ablate --spec SPEC.toml`: a sweep of training runs, variants × learning rates × seeds,
//! one run directory each, then a summary table (Markdown, CSV, JSON) and the validation curves
//! per variant. Finished runs are skipped when the sweep is launched again, and a run that was
//! interrupted is resumed from its last checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::backend::DeviceSpec;
use crate::plot::{Series, line_plot};
use crate::train::config::model_config;
use crate::train::metrics::{MetricRow, RunState, Status};
use crate::train::{RunConfig, TrainJob};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationSpec {
    pub name: String,
    /// The run config every variant starts from (relative to the spec file).
    pub base: PathBuf,
    pub seeds: Vec<u64>,
    /// Peak learning rates to sweep; empty: the base config's.
    #[serde(default)]
    pub lrs: Vec<f64>,
    #[serde(rename = "variant")]
    pub variants: Vec<Variant>,
    /// What `--quick` changes: fewer steps and seeds (for CI).
    #[serde(default)]
    pub quick: Option<Quick>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// `LlamaConfig` fields overriding the base model (`norm = "layer_norm"`, ...).
    #[serde(default)]
    pub model: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quick {
    pub steps: u64,
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub eval_every: Option<u64>,
    #[serde(default)]
    pub eval_batches: Option<usize>,
    #[serde(default)]
    pub variants: Vec<String>,
}

/// One row of the summary: a variant at one learning rate, over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub variant: String,
    pub lr: f64,
    pub params: u64,
    pub seeds: usize,
    pub final_val_loss_mean: Option<f64>,
    pub final_val_loss_std: Option<f64>,
    pub best_val_loss_mean: Option<f64>,
    pub best_val_loss_std: Option<f64>,
    pub perplexity: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub diverged: usize,
    /// Final validation loss minus the first variant's (the baseline), and whether that exceeds
    /// two standard errors of the difference over seeds.
    pub delta_vs_baseline: Option<f64>,
    pub exceeds_seed_noise: Option<bool>,
}

impl AblationSpec {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut spec: AblationSpec = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message().trim()))?;
        if spec.base.is_relative() {
            spec.base = path.parent().unwrap_or(Path::new("")).join(&spec.base);
        }
        if spec.variants.is_empty() || spec.seeds.is_empty() {
            bail!(
                "{}: needs at least one [[variant]] and one seed",
                path.display()
            );
        }
        Ok(spec)
    }
}

/// One run of a sweep.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub variant: String,
    pub lr: f64,
    pub seed: u64,
    pub dir: PathBuf,
    pub config: RunConfig,
}

/// Every run of the sweep, in order.
pub fn plan(
    spec: &AblationSpec,
    out: &Path,
    quick: bool,
    dataset: Option<&Path>,
) -> Result<Vec<PlannedRun>> {
    let mut base = RunConfig::from_file(&spec.base)?;
    if let Some(d) = dataset {
        base.data.dataset = d.to_path_buf();
    }
    let q = match (&spec.quick, quick) {
        (Some(q), true) => Some(q),
        (None, true) => bail!("the spec has no [quick] section"),
        _ => None,
    };
    let seeds = q.map_or(spec.seeds.clone(), |q| q.seeds.clone());
    let names = q.map_or(Vec::new(), |q| q.variants.clone());
    let lrs = if spec.lrs.is_empty() {
        vec![base.optim.lr]
    } else {
        spec.lrs.clone()
    };
    let mut runs = Vec::new();
    for v in spec
        .variants
        .iter()
        .filter(|v| names.is_empty() || names.contains(&v.name))
    {
        for &lr in &lrs {
            for &seed in &seeds {
                let mut c = base.clone();
                c.name = format!("{}/{}", spec.name, v.name);
                c.model.extend(v.model.clone());
                c.optim.lr = lr;
                c.train.seed = seed;
                if let Some(q) = q {
                    c.train.steps = q.steps;
                    c.optim.warmup_steps = c.optim.warmup_steps.min(q.steps / 4);
                    c.train.eval_every = q.eval_every.unwrap_or(c.train.eval_every.min(q.steps));
                    c.train.eval_batches = q.eval_batches.unwrap_or(c.train.eval_batches);
                }
                let lr_part = if lrs.len() > 1 {
                    format!("-lr{lr:e}")
                } else {
                    String::new()
                };
                let dir = out.join(&v.name).join(format!("seed{seed}{lr_part}"));
                runs.push(PlannedRun {
                    variant: v.name.clone(),
                    lr,
                    seed,
                    dir,
                    config: c,
                });
            }
        }
    }
    Ok(runs)
}

/// Runs the sweep (skipping finished runs) and writes the summary into `out`.
pub fn ablate(
    spec: &AblationSpec,
    out: &Path,
    quick: bool,
    dataset: Option<&Path>,
    device: DeviceSpec,
) -> Result<Vec<SummaryRow>> {
    let runs = plan(spec, out, quick, dataset)?;
    for (
        i,
        PlannedRun {
            variant,
            lr,
            seed,
            dir,
            config,
        },
    ) in runs.iter().enumerate()
    {
        let status = Status::read(dir).ok();
        if status
            .as_ref()
            .is_some_and(|s| s.state != RunState::Running)
        {
            eprintln!(
                "[{}/{}] {variant} lr {lr:e} seed {seed}: done ({:?}), skipped",
                i + 1,
                runs.len(),
                status.map(|s| s.state)
            );
            continue;
        }
        eprintln!("[{}/{}] {variant} lr {lr:e} seed {seed}", i + 1, runs.len());
        let job = TrainJob {
            config: config.clone(),
            out: dir.clone(),
            resume: status.is_some(),
            quiet: true,
            stop_after: None,
        };
        device.run(job)??;
    }
    let rows = summarise(&runs)?;
    write_summary(out, &rows)?;
    plot_curves(out, &runs)?;
    Ok(rows)
}

fn mean_std(xs: &[f64]) -> (Option<f64>, Option<f64>) {
    if xs.is_empty() {
        return (None, None);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    // Sample standard deviation (n − 1), 0 for a single seed.
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (Some(mean), Some(var.sqrt()))
}

fn summarise(runs: &[PlannedRun]) -> Result<Vec<SummaryRow>> {
    let mut rows: Vec<SummaryRow> = Vec::new();
    // Each run's status.json is read once; rows group them by (variant, lr).
    let mut statuses: Vec<Vec<Status>> = Vec::new();
    for run in runs {
        let status = Status::read(&run.dir)?;
        let idx = match rows
            .iter()
            .position(|r| r.variant == run.variant && r.lr == run.lr)
        {
            Some(i) => i,
            None => {
                let c = &run.config;
                let vocab = llama_data::Manifest::load(&c.data.dataset)?
                    .tokenizer
                    .vocab_size;
                let params = model_config(&c.model, vocab, c.data.seq_len)?
                    .param_counts()
                    .total;
                rows.push(SummaryRow {
                    variant: run.variant.clone(),
                    lr: run.lr,
                    params,
                    seeds: 0,
                    final_val_loss_mean: None,
                    final_val_loss_std: None,
                    best_val_loss_mean: None,
                    best_val_loss_std: None,
                    perplexity: None,
                    tokens_per_s: None,
                    diverged: 0,
                    delta_vs_baseline: None,
                    exceeds_seed_noise: None,
                });
                statuses.push(Vec::new());
                rows.len() - 1
            }
        };
        statuses[idx].push(status);
    }
    let mut finals_by_row: Vec<Vec<f64>> = Vec::new();
    for (r, group) in rows.iter_mut().zip(&statuses) {
        let finished: Vec<&Status> = group
            .iter()
            .filter(|s| s.state == RunState::Finished)
            .collect();
        let of = |f: fn(&Status) -> Option<f64>| {
            finished.iter().filter_map(|s| f(s)).collect::<Vec<f64>>()
        };
        let finals = of(|s| s.final_val_loss);
        r.seeds = group.len();
        r.diverged = group
            .iter()
            .filter(|s| s.state == RunState::Diverged)
            .count();
        (r.final_val_loss_mean, r.final_val_loss_std) = mean_std(&finals);
        (r.best_val_loss_mean, r.best_val_loss_std) = mean_std(&of(|s| s.best_val_loss));
        r.perplexity = r.final_val_loss_mean.map(f64::exp);
        r.tokens_per_s = mean_std(&of(|s| s.tokens_per_s)).0;
        finals_by_row.push(finals);
    }
    // Against the first variant at the same learning rate: the difference of means and two
    // standard errors of it (seeds independent).
    let snapshot = rows.clone();
    for (i, r) in rows.iter_mut().enumerate() {
        let Some(b) = snapshot.iter().position(|x| x.lr == r.lr) else {
            continue;
        };
        if b == i {
            continue;
        }
        let (base, this) = (&finals_by_row[b], &finals_by_row[i]);
        if let (Some(mb), Some(sb), Some(mt), Some(st)) = (
            snapshot[b].final_val_loss_mean,
            snapshot[b].final_val_loss_std,
            r.final_val_loss_mean,
            r.final_val_loss_std,
        ) {
            let se = (sb * sb / base.len() as f64 + st * st / this.len() as f64).sqrt();
            r.delta_vs_baseline = Some(mt - mb);
            r.exceeds_seed_noise =
                (base.len() > 1 && this.len() > 1).then_some((mt - mb).abs() > 2.0 * se);
        }
    }
    Ok(rows)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn write_summary(out: &Path, rows: &[SummaryRow]) -> Result<()> {
    let mut md = String::from(
        "| variant | lr | params | seeds | final val loss | best val loss | perplexity | Δ vs baseline | > seed noise | tokens/s | diverged |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut csv = String::from(
        "variant,lr,params,seeds,final_val_loss_mean,final_val_loss_std,best_val_loss_mean,best_val_loss_std,perplexity,delta_vs_baseline,exceeds_seed_noise,tokens_per_s,diverged\n",
    );
    for r in rows {
        let pm = |m: Option<f64>, s: Option<f64>| format!("{} ± {}", opt(m, 4), opt(s, 4));
        md += &format!(
            "| {} | {:e} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.variant,
            r.lr,
            r.params,
            r.seeds,
            pm(r.final_val_loss_mean, r.final_val_loss_std),
            pm(r.best_val_loss_mean, r.best_val_loss_std),
            opt(r.perplexity, 2),
            r.delta_vs_baseline
                .map_or("–".into(), |d| format!("{d:+.4}")),
            r.exceeds_seed_noise
                .map_or("–", |b| if b { "yes" } else { "no" }),
            opt(r.tokens_per_s, 0),
            if r.diverged > 0 {
                format!("yes ({} of {})", r.diverged, r.seeds)
            } else {
                "no".into()
            },
        );
        let f = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.variant,
            r.lr,
            r.params,
            r.seeds,
            f(r.final_val_loss_mean),
            f(r.final_val_loss_std),
            f(r.best_val_loss_mean),
            f(r.best_val_loss_std),
            f(r.perplexity),
            f(r.delta_vs_baseline),
            r.exceeds_seed_noise
                .map_or(String::new(), |b| b.to_string()),
            f(r.tokens_per_s),
            r.diverged
        );
    }
    let write = |name: &str, text: &str| {
        llama_data::manifest::write_atomic(&out.join(name), text.as_bytes())
    };
    write("summary.md", &md)?;
    write("summary.csv", &csv)?;
    write("summary.json", &serde_json::to_string_pretty(rows)?)?;
    Ok(())
}

/// `val_curves.png/svg`: the validation loss against tokens, averaged over seeds, per variant.
fn plot_curves(out: &Path, runs: &[PlannedRun]) -> Result<()> {
    let mut series: Vec<Series> = Vec::new();
    let mut names: Vec<(String, f64)> = Vec::new();
    for PlannedRun { variant: v, lr, .. } in runs {
        if !names.contains(&(v.clone(), *lr)) {
            names.push((v.clone(), *lr));
        }
    }
    let multi_lr = names.iter().any(|n| n.1 != names[0].1);
    for (v, lr) in names {
        let mut by_tokens: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
        for PlannedRun { dir, .. } in runs.iter().filter(|r| r.variant == v && r.lr == lr) {
            let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) else {
                continue;
            };
            for row in text
                .lines()
                .filter_map(|l| serde_json::from_str::<MetricRow>(l).ok())
            {
                if let Some(val) = row.val_loss {
                    by_tokens.entry(row.tokens).or_default().push(val);
                }
            }
        }
        let points = by_tokens
            .into_iter()
            .map(|(t, v)| (t as f64, v.iter().sum::<f64>() / v.len() as f64))
            .collect();
        let name = if multi_lr {
            format!("{v} lr {lr:e}")
        } else {
            v
        };
        series.push(Series { name, points });
    }
    line_plot(
        &out.join("val_curves"),
        "validation loss (mean over seeds)",
        "tokens",
        "cross-entropy (nats)",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, Some(2.5));
        assert!((s.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[7.0]), (Some(7.0), Some(0.0)));
        assert_eq!(mean_std(&[]), (None, None));
    }

    #[test]
    fn the_shipped_spec_covers_every_swap_and_a_quick_sweep() {
        let spec = AblationSpec::from_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../experiments/core-ablation.toml"
        )))
        .unwrap();
        let names: Vec<&str> = spec.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "llama",
                "post-layernorm",
                "pre-layernorm",
                "relu-mlp",
                "gelu-mlp",
                "learned-positions",
                "sinusoidal",
                "no-positions",
                "gpt-style"
            ]
        );
        assert!(spec.seeds.len() >= 3);
        let dir = Path::new("/nonexistent-out");
        let full = plan(&spec, dir, false, None).unwrap();
        let quick = plan(&spec, dir, true, None).unwrap();
        assert_eq!(full.len(), 27);
        assert_eq!(quick.len(), 18);
        assert!(
            quick
                .iter()
                .all(|r| r.config.train.steps == 4 && r.config.train.eval_batches == 2)
        );
        // Every variant's knobs parse into a valid model of (nearly) the LLaMA size.
        let base = model_config(&full[0].config.model, 8000, 64)
            .unwrap()
            .param_counts()
            .total as f64;
        for r in &full {
            let p = model_config(&r.config.model, 8000, 64)
                .unwrap()
                .param_counts()
                .total as f64;
            assert!(
                (p / base - 1.0).abs() < 0.02,
                "{}: {p} vs {base}",
                r.variant
            );
        }
    }
}
