//! The `llama eval` job: resolve tasks, load the checkpoint once, score every task.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::backend::{AutodiffBackend, Backend};
use llama_data::LlamaTokenizer;
use llama_model::{Llama, Precision};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::bias;
use super::choice::{self, ANSWER_CONTEXT, ChoiceItem, ChoiceTask, Normalisation};
use super::decode;
use super::generation::{self, GenTask};
use super::humaneval;
use super::loglik::{LogLik, Request, score};
use super::perplexity;
use super::records::read;
use super::report::{EvalReport, TaskResult, accuracy};
use crate::backend::BackendJob;
use crate::checkpoint::load_checkpoint;

pub struct EvalJob {
    pub checkpoint: PathBuf,
    /// Default: `tokenizer.json` in the checkpoint or beside it (a training run's layout).
    pub tokenizer: Option<PathBuf>,
    pub tasks: Vec<String>,
    /// The folder of benchmark files (`boolq_validation.jsonl`, `mmlu/`, ...).
    pub evals: PathBuf,
    /// Few-shot examples (default: 0, MMLU 5).
    pub shots: Option<usize>,
    /// At most this many items per task (MMLU: per subject), the first ones.
    pub limit: Option<usize>,
    pub batch_tokens: usize,
    pub precision: Precision,
    pub seed: u64,
    pub quiet: bool,
    /// Per-item results (JSONL) go here when given.
    pub items: Option<PathBuf>,
    /// HumanEval: samples per problem (the n of pass@k) and their temperature (0: greedy).
    pub samples: usize,
    pub temperature: f64,
    /// The Python that runs HumanEval's tests (in the sandbox).
    pub python: PathBuf,
}

/// One scored item, for `--items`.
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    pub task: String,
    pub source: String,
    /// `log P(continuation | context)` per choice.
    pub logliks: Vec<f64>,
    /// The normalised scores the prediction is the argmax of.
    pub scores: Vec<f64>,
    pub pred: usize,
    pub gold: usize,
}

/// What a task name on the command line means.
enum Task {
    Choice(&'static ChoiceTask, PathBuf),
    Mmlu(Vec<(String, PathBuf, PathBuf)>),
    Generation(&'static GenTask, PathBuf),
    CrowsPairs(PathBuf),
    HumanEval(PathBuf),
    WinoGender(PathBuf, PathBuf),
    Perplexity(PathBuf),
}

/// Files of the tasks that are not one JSONL file of the choice or generation kind.
const CROWS_FILE: &str = "crows_pairs_anonymized.csv";
const WINOGENDER_FILES: [&str; 2] = ["winogender_all_sentences.tsv", "winogender_templates.tsv"];

fn resolve(name: &str, evals: &Path) -> Result<Task> {
    if let Some(path) = name.strip_prefix("ppl:") {
        let path = PathBuf::from(path);
        ensure!(path.exists(), "ppl:{} does not exist", path.display());
        return Ok(Task::Perplexity(path));
    }
    if name == "mmlu" {
        return Ok(Task::Mmlu(mmlu_subjects(evals)?));
    }
    let need = |file: &str| -> Result<PathBuf> {
        let path = evals.join(file);
        ensure!(path.is_file(), "task {name} needs {}", path.display());
        Ok(path)
    };
    // The JSONL file, else the Hugging Face `save_to_disk` folder.
    let either = |file: &str, hf: &str| -> Result<PathBuf> {
        let (jsonl, arrow) = (evals.join(file), evals.join(hf));
        if jsonl.is_file() {
            Ok(jsonl)
        } else if arrow.is_dir() {
            Ok(arrow)
        } else {
            bail!(
                "task {name} needs {} or a save_to_disk folder {}",
                jsonl.display(),
                arrow.display()
            )
        }
    };
    if let Some(task) = choice::find(name) {
        return Ok(Task::Choice(task, either(task.file, task.hf)?));
    }
    if let Some(task) = generation::find(name) {
        return Ok(Task::Generation(task, either(task.file, task.hf)?));
    }
    match name {
        "crows-pairs" => Ok(Task::CrowsPairs(need(CROWS_FILE)?)),
        "humaneval" => Ok(Task::HumanEval(need(humaneval::FILE)?)),
        "winogender" => Ok(Task::WinoGender(
            need(WINOGENDER_FILES[0])?,
            need(WINOGENDER_FILES[1])?,
        )),
        _ => {
            let known: Vec<&str> = choice::TASKS
                .iter()
                .map(|t| t.name)
                .chain(generation::TASKS.iter().map(|t| t.name))
                .collect();
            bail!(
                "unknown task `{name}` (known: {}, mmlu, humaneval, crows-pairs, winogender, ppl:PATH)",
                known.join(", ")
            )
        }
    }
}

/// MMLU's subjects as (name, test split, dev split): `mmlu/<subject>_{validation,dev}.jsonl`, else
/// the `save_to_disk` folders `hails/mmlu_no_train/<subject>/{validation,dev}`.
fn mmlu_subjects(evals: &Path) -> Result<Vec<(String, PathBuf, PathBuf)>> {
    let jsonl = evals.join("mmlu");
    let arrow = evals.join("hails/mmlu_no_train");
    let mut subjects = Vec::new();
    if jsonl.is_dir() {
        for e in std::fs::read_dir(&jsonl)?.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(subject) = file.strip_suffix("_validation.jsonl") {
                let dev = jsonl.join(format!("{subject}_dev.jsonl"));
                subjects.push((subject.to_string(), e.path(), dev));
            }
        }
    } else if arrow.is_dir() {
        for e in std::fs::read_dir(&arrow)?.flatten() {
            let dir = e.path();
            if dir.join("validation").is_dir() {
                let subject = e.file_name().to_string_lossy().into_owned();
                subjects.push((subject, dir.join("validation"), dir.join("dev")));
            }
        }
    }
    ensure!(
        !subjects.is_empty(),
        "MMLU needs {}/<subject>_validation.jsonl files or save_to_disk folders under {}",
        jsonl.display(),
        arrow.display()
    );
    subjects.sort();
    Ok(subjects)
}

fn tokenizer_path(job: &EvalJob) -> Result<PathBuf> {
    if let Some(t) = &job.tokenizer {
        return Ok(t.clone());
    }
    for dir in [Some(job.checkpoint.as_path()), job.checkpoint.parent()]
        .into_iter()
        .flatten()
    {
        let p = dir.join("tokenizer.json");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no tokenizer.json in or beside {}; pass --tokenizer",
        job.checkpoint.display()
    )
}

impl BackendJob for EvalJob {
    type Output = Result<EvalReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<EvalReport> {
        self.precision.check::<B>(&device)?;
        let tasks = self
            .tasks
            .iter()
            .map(|t| resolve(t, &self.evals))
            .collect::<Result<Vec<_>>>()?;
        let tok = LlamaTokenizer::from_file(&tokenizer_path(&self)?)?;
        let weights = self.precision.compute_dtype();
        let model = load_checkpoint::<B::InnerBackend>(&self.checkpoint, &device, weights)?
            .with_precision(self.precision)
            .with_inference_weights();
        ensure!(
            tok.vocab_size() <= model.config().vocab_size,
            "the tokenizer has {} tokens but the model's vocabulary has {}",
            tok.vocab_size(),
            model.config().vocab_size
        );
        let mut report = EvalReport::new(&self.checkpoint, self.precision);
        let mut items_out: Vec<serde_json::Value> = Vec::new();
        for (name, task) in self.tasks.iter().zip(tasks) {
            match task {
                Task::Choice(t, path) => {
                    let all = choice::load(t, &path)?;
                    let shots = self.shots.unwrap_or(0);
                    let prompted = with_shots(first(&all, self.limit), &all, shots, self.seed)?;
                    let (res, its) =
                        self.choice_task(&model, &tok, name, &prompted, t.normalisation, shots)?;
                    report.tasks.push(res);
                    items_out.extend(
                        its.iter()
                            .map(|i| serde_json::to_value(i).expect("plain data")),
                    );
                }
                Task::Mmlu(subjects) => {
                    let (res, its) = self.mmlu(&model, &tok, &subjects)?;
                    report.tasks.push(res);
                    items_out.extend(
                        its.iter()
                            .map(|i| serde_json::to_value(i).expect("plain data")),
                    );
                }
                Task::Generation(t, path) => {
                    let pool = generation::load(t, &path)?;
                    let items = first(&pool, self.limit);
                    let shots = self.shots.unwrap_or(t.default_shots);
                    let bar = self.progress(name, items.len());
                    let (res, its) = decode::run_generation(
                        &model,
                        &tok,
                        t,
                        items,
                        &pool,
                        shots,
                        self.seed,
                        &mut |n| {
                            if let Some(b) = &bar {
                                b.inc(n as u64)
                            }
                        },
                    )?;
                    report.tasks.push(res);
                    items_out.extend(its);
                }
                Task::HumanEval(path) => {
                    let all = humaneval::load(&path)?;
                    let problems = first(&all, self.limit);
                    let opts = humaneval::HumanEvalOptions {
                        samples: self.samples,
                        temperature: self.temperature,
                        max_new_tokens: 384.min(model.config().max_seq_len / 2),
                        seed: self.seed,
                        python: self.python.clone(),
                        limits: Default::default(),
                    };
                    let bar = self.progress(name, problems.len());
                    let (res, its) = humaneval::run(&model, &tok, problems, &opts, &mut |n| {
                        if let Some(b) = &bar {
                            b.inc(n as u64)
                        }
                    })?;
                    report.tasks.push(res);
                    items_out.extend(its);
                }
                Task::CrowsPairs(path) => {
                    let (res, its) = bias::run_crows(&self, &model, &tok, &path)?;
                    report.tasks.push(res);
                    items_out.extend(its);
                }
                Task::WinoGender(sentences, templates) => {
                    let (res, its) =
                        bias::run_winogender(&self, &model, &tok, &sentences, &templates)?;
                    report.tasks.push(res);
                    items_out.extend(its);
                }
                Task::Perplexity(path) => {
                    report.tasks.push(perplexity::evaluate(
                        &model,
                        &tok,
                        &path,
                        self.batch_tokens,
                    )?);
                }
            }
        }
        if let Some(path) = &self.items {
            let lines: Vec<String> = items_out
                .iter()
                .map(serde_json::to_string)
                .collect::<std::result::Result<_, _>>()?;
            llama_data::manifest::write_atomic(path, (lines.join("\n") + "\n").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(report)
    }
}

/// The first `limit` items.
pub(crate) fn first<T>(items: &[T], limit: Option<usize>) -> &[T] {
    &items[..limit.unwrap_or(items.len()).min(items.len())]
}

/// `shots` distinct indices into a pool of `pool` items, drawn with a seed per item, never the
/// item itself.
pub(crate) fn shot_indices(
    pool: usize,
    is_self: impl Fn(usize) -> bool,
    shots: usize,
    seed: u64,
    item: usize,
) -> Result<Vec<usize>> {
    ensure!(
        pool > shots,
        "{shots}-shot needs more than {shots} items in the file, it has {pool}"
    );
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (item as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    Ok(sample(&mut rng, pool, shots + 1)
        .into_iter()
        .filter(|&j| !is_self(j))
        .take(shots)
        .collect())
}

/// Each item with `shots` solved examples from the other items of its file.
fn with_shots(
    items: &[ChoiceItem],
    pool: &[ChoiceItem],
    shots: usize,
    seed: u64,
) -> Result<Vec<ChoiceItem>> {
    if shots == 0 {
        return Ok(items.to_vec());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let picks = shot_indices(
                pool.len(),
                |j| pool[j].source == item.source,
                shots,
                seed,
                i,
            )?;
            let prefix: String = picks
                .iter()
                .map(|&j| format!("{}\n\n", pool[j].solved()))
                .collect();
            Ok(item.with_prefix(&prefix))
        })
        .collect()
}

/// lm-evaluation-harness's pair encoding: trailing spaces of the context move to the
/// continuation; the continuation's tokens are those of `context + continuation` after the
/// context's own tokens (BOS first), so the boundary is tokenised as running text is.
pub fn encode_pair(tok: &LlamaTokenizer, context: &str, continuation: &str) -> Result<Request> {
    let trimmed = context.trim_end_matches(' ');
    let continuation = format!("{}{continuation}", &context[trimmed.len()..]);
    let ctx = tok.encode(trimmed, true)?;
    let whole = tok.encode(&format!("{trimmed}{continuation}"), true)?;
    let cont = if whole.len() > ctx.len() && whole[..ctx.len()] == ctx[..] {
        whole[ctx.len()..].to_vec()
    } else {
        tok.encode(&continuation, false)?
    };
    ensure!(
        !cont.is_empty(),
        "continuation {continuation:?} encodes to no tokens"
    );
    Ok(Request {
        context: ctx,
        continuation: cont,
    })
}

impl EvalJob {
    pub(crate) fn progress(&self, name: &str, total: usize) -> Option<indicatif::ProgressBar> {
        (!self.quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:14} {bar:30} {pos}/{len} requests [{elapsed}<{eta}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(name.to_string());
            bar
        })
    }

    /// Scores every choice of every item; returns the task's accuracy and the items.
    fn choice_task<B: Backend>(
        &self,
        model: &Llama<B>,
        tok: &LlamaTokenizer,
        name: &str,
        items: &[ChoiceItem],
        norm: Normalisation,
        shots: usize,
    ) -> Result<(TaskResult, Vec<ItemResult>)> {
        let mut requests = Vec::new();
        for item in items {
            for (c, x) in &item.choices {
                requests.push(encode_pair(tok, c, x).with_context(|| item.source.clone())?);
            }
        }
        let conditional = requests.len();
        if norm == Normalisation::Unconditional {
            for item in items {
                for (_, x) in &item.choices {
                    requests.push(encode_pair(tok, ANSWER_CONTEXT, x)?);
                }
            }
        }
        let scores = self.score_all(model, name, &requests)?;
        let mut out = Vec::with_capacity(items.len());
        let mut k = 0;
        for item in items {
            let n = item.choices.len();
            let logliks: Vec<f64> = scores[k..k + n].iter().map(|s| s.loglik).collect();
            let normalised: Vec<f64> = match norm {
                Normalisation::None => logliks.clone(),
                Normalisation::Chars => logliks
                    .iter()
                    .zip(&item.choices)
                    .map(|(l, (_, x))| l / x.chars().count().max(1) as f64)
                    .collect(),
                Normalisation::Unconditional => logliks
                    .iter()
                    .zip(&scores[conditional + k..conditional + k + n])
                    .map(|(l, u)| l - u.loglik)
                    .collect(),
            };
            k += n;
            out.push(ItemResult {
                task: name.to_string(),
                source: item.source.clone(),
                pred: argmax(&normalised),
                scores: normalised,
                logliks,
                gold: item.gold,
            });
        }
        let correct: Vec<bool> = out.iter().map(|i| i.pred == i.gold).collect();
        let mut res = accuracy(name, &correct, shots);
        res.normalisation = Some(norm);
        let truncated = scores.iter().filter(|s| s.truncated).count();
        if truncated > 0 {
            res.details
                .insert("truncated_continuations".into(), truncated as f64);
            if !self.quiet {
                eprintln!(
                    "warning: {name}: {truncated} continuations exceed the model's context; their last tokens were scored"
                );
            }
        }
        Ok((res, out))
    }

    /// MMLU: each subject with its description and the first `shots` (default 5) dev questions;
    /// the headline is the mean over subjects, with per-subject results under it.
    fn mmlu<B: Backend>(
        &self,
        model: &Llama<B>,
        tok: &LlamaTokenizer,
        subjects: &[(String, PathBuf, PathBuf)],
    ) -> Result<(TaskResult, Vec<ItemResult>)> {
        let shots = self.shots.unwrap_or(5);
        let mut parts = Vec::new();
        let mut items_out = Vec::new();
        for (subject, test, dev) in subjects {
            let items = read(test)?
                .iter()
                .map(choice::mmlu)
                .collect::<Result<Vec<_>>>()?;
            let mut prefix = choice::mmlu_description(subject);
            if shots > 0 {
                let dev_items = read(dev)
                    .with_context(|| format!("{shots}-shot MMLU needs the dev split"))?
                    .iter()
                    .map(choice::mmlu)
                    .collect::<Result<Vec<_>>>()?;
                ensure!(
                    dev_items.len() >= shots,
                    "{} has {} questions, fewer than {shots} shots",
                    dev.display(),
                    dev_items.len()
                );
                for d in &dev_items[..shots] {
                    prefix.push_str(&d.solved());
                    prefix.push_str("\n\n");
                }
            }
            let items: Vec<ChoiceItem> = first(&items, self.limit)
                .iter()
                .map(|i| i.with_prefix(&prefix))
                .collect();
            let name = format!("mmlu/{subject}");
            let (res, its) =
                self.choice_task(model, tok, &name, &items, Normalisation::None, shots)?;
            parts.push(res);
            items_out.extend(its);
        }
        Ok((report::mean_of_subtasks("mmlu", parts, shots), items_out))
    }
}

impl EvalJob {
    /// Scores of `requests`, with a progress bar.
    pub(crate) fn score_all<B: Backend>(
        &self,
        model: &Llama<B>,
        name: &str,
        requests: &[Request],
    ) -> Result<Vec<LogLik>> {
        let bar = self.progress(name, requests.len());
        let scores = score(model, requests, self.batch_tokens, &mut |n| {
            if let Some(b) = &bar {
                b.inc(n as u64)
            }
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(scores)
    }
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

use super::report;
