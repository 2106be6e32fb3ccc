//! Generation tasks: NaturalQuestions and TriviaQA (exact match of the first generated line, in
//! the paper's "Answer these questions" format) and GSM8K (the final number of a greedy
//! chain of thought, after few-shot worked solutions).

use std::path::Path;

use anyhow::{Result, bail};
use serde_json::Value;

use super::answers::{exact_match, gsm8k_correct};
use super::records::{Record, read};

/// One question to answer by generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenItem {
    pub source: String,
    pub question: String,
    /// Acceptable answers (QA) or the reference solution (GSM8K).
    pub answers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenKind {
    /// Exact match against any answer (NQ, TriviaQA).
    ExactMatch,
    /// The final number equals the reference solution's (GSM8K).
    FinalNumber,
}

#[derive(Debug, Clone, Copy)]
pub struct GenTask {
    pub name: &'static str,
    pub file: &'static str,
    /// The split as a `save_to_disk` folder (see `ChoiceTask::hf`).
    pub hf: &'static str,
    pub kind: GenKind,
    pub max_new_tokens: usize,
    pub default_shots: usize,
    parse: fn(&Record) -> Result<GenItem>,
}

pub const TASKS: &[GenTask] = &[
    GenTask {
        name: "naturalquestions",
        file: "nq_open_validation.jsonl",
        hf: "nq_open/none/validation",
        kind: GenKind::ExactMatch,
        max_new_tokens: 24,
        default_shots: 0,
        parse: nq,
    },
    GenTask {
        name: "triviaqa",
        file: "trivia_qa_validation.jsonl",
        hf: "trivia_qa/rc.wikipedia.nocontext/validation",
        kind: GenKind::ExactMatch,
        max_new_tokens: 24,
        default_shots: 0,
        parse: triviaqa,
    },
    GenTask {
        name: "gsm8k",
        file: "gsm8k_test.jsonl",
        hf: "gsm8k/main/test",
        kind: GenKind::FinalNumber,
        max_new_tokens: 256,
        default_shots: 8,
        parse: gsm8k,
    },
];

pub fn find(name: &str) -> Option<&'static GenTask> {
    TASKS.iter().find(|t| t.name == name)
}

pub fn load(task: &GenTask, path: &Path) -> Result<Vec<GenItem>> {
    read(path)?.iter().map(task.parse).collect()
}

fn nonempty(r: &Record, answers: Vec<String>) -> Result<Vec<String>> {
    if answers.is_empty() {
        bail!("{}: empty answer list", r.source);
    }
    Ok(answers)
}

fn nq(r: &Record) -> Result<GenItem> {
    Ok(GenItem {
        source: r.source.clone(),
        question: r.str("question")?.to_string(),
        answers: nonempty(r, r.str_list("answer")?)?,
    })
}

/// TriviaQA (`rc.nocontext`): every alias and normalised alias of `answer` is accepted.
fn triviaqa(r: &Record) -> Result<GenItem> {
    let answer = r.get("answer")?;
    let mut answers = Vec::new();
    for key in ["value", "aliases", "normalized_aliases"] {
        match answer.get(key) {
            Some(Value::String(s)) => answers.push(s.clone()),
            Some(Value::Array(a)) => {
                answers.extend(a.iter().filter_map(|v| v.as_str().map(String::from)))
            }
            _ => {}
        }
    }
    Ok(GenItem {
        source: r.source.clone(),
        question: r.str("question")?.to_string(),
        answers: nonempty(r, answers)?,
    })
}

fn gsm8k(r: &Record) -> Result<GenItem> {
    let solution = r.str("answer")?;
    if super::answers::final_number(solution).is_none() {
        bail!("{}: field `answer` holds no final number", r.source);
    }
    Ok(GenItem {
        source: r.source.clone(),
        question: r.str("question")?.to_string(),
        answers: vec![solution.to_string()],
    })
}

impl GenTask {
    /// The prompt for `item` after the solved `shots`.
    pub fn prompt(&self, shots: &[&GenItem], item: &GenItem) -> String {
        match self.kind {
            GenKind::ExactMatch => {
                let mut p = String::from("Answer these questions:\n");
                for s in shots {
                    p.push_str(&format!("Q: {}\nA: {}\n", s.question, s.answers[0]));
                }
                p.push_str(&format!("Q: {}\nA:", item.question));
                p
            }
            GenKind::FinalNumber => {
                let mut p = String::new();
                for s in shots {
                    p.push_str(&format!(
                        "Question: {}\nAnswer: {}\n\n",
                        s.question, s.answers[0]
                    ));
                }
                p.push_str(&format!("Question: {}\nAnswer:", item.question));
                p
            }
        }
    }

    /// The generated text up to where the model starts the next example.
    pub fn cut<'a>(&self, generated: &'a str) -> &'a str {
        let stops: &[&str] = match self.kind {
            GenKind::ExactMatch => &["\n"],
            GenKind::FinalNumber => &["\n\nQuestion:", "Question:", "\n\n\n"],
        };
        let t = generated.trim_start();
        let end = stops
            .iter()
            .filter_map(|s| t.find(s))
            .min()
            .unwrap_or(t.len());
        &t[..end]
    }

    pub fn correct(&self, generated: &str, item: &GenItem) -> bool {
        let answer = self.cut(generated);
        match self.kind {
            GenKind::ExactMatch => exact_match(answer, &item.answers),
            GenKind::FinalNumber => gsm8k_correct(answer, &item.answers[0]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::records::parse_line;

    #[test]
    fn records_prompts_and_answers() {
        let r = parse_line(
            r#"{"question":"who wrote hamlet","answer":["Shakespeare","William Shakespeare"]}"#,
            "nq",
            1,
        )
        .unwrap();
        let item = nq(&r).unwrap();
        let t = find("naturalquestions").unwrap();
        assert_eq!(
            t.prompt(&[], &item),
            "Answer these questions:\nQ: who wrote hamlet\nA:"
        );
        assert_eq!(
            t.prompt(&[&item], &item),
            "Answer these questions:\nQ: who wrote hamlet\nA: Shakespeare\nQ: who wrote hamlet\nA:"
        );
        assert!(t.correct(" William Shakespeare\nQ: who", &item));
        assert!(!t.correct(" Marlowe", &item));
        let r = parse_line(r#"{"question":"q","answer":{"aliases":["Sunset Blvd"],"normalized_aliases":["sunset boulevard"],"value":"Sunset Boulevard"}}"#, "tq", 2).unwrap();
        let tq = triviaqa(&r).unwrap();
        assert_eq!(tq.answers.len(), 3);
        assert!(find("triviaqa").unwrap().correct(" sunset boulevard.", &tq));
        let r = parse_line(
            r#"{"question":"2+3?","answer":"2+3=<<2+3=5>>5\n#### 5"}"#,
            "g",
            3,
        )
        .unwrap();
        let g = gsm8k(&r).unwrap();
        let t = find("gsm8k").unwrap();
        assert!(t.prompt(&[&g], &g).starts_with(
            "Question: 2+3?\nAnswer: 2+3=<<2+3=5>>5\n#### 5\n\nQuestion: 2+3?\nAnswer:"
        ));
        assert!(t.correct(
            " 2 plus 3 is 5.\n#### 5\n\nQuestion: 7 + 1?\nAnswer: #### 8",
            &g
        ));
        assert!(!t.correct(" It is 6.\n\nQuestion: 5?", &g));
        let bad = parse_line(r#"{"question":"q","answer":"no number"}"#, "g", 4).unwrap();
        assert_eq!(
            gsm8k(&bad).unwrap_err().to_string(),
            "g:4: field `answer` holds no final number"
        );
        let bad = parse_line(r#"{"question":"q","answer":[]}"#, "nq", 5).unwrap();
        assert_eq!(nq(&bad).unwrap_err().to_string(), "nq:5: empty answer list");
    }
}
