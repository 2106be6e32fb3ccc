//! StackExchange (and other Q&A): "removed the HTML tags from text and sorted the answers by
//! score (from highest to lowest)". The answers, when the reader gives them in `meta.answers`,
//! follow the question.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Stage;
use crate::document::Document;
use crate::error::DataError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaSettings {
    /// Append the answers of `meta.answers` (objects with `text` and `score`) after the
    /// question, highest score first (ties keep their order).
    pub include_answers: bool,
    /// Keep at most this many answers (the best ones); 0 keeps all.
    pub max_answers: usize,
}

impl Default for QaSettings {
    fn default() -> Self {
        Self {
            include_answers: true,
            max_answers: 0,
        }
    }
}

pub fn stages(s: &QaSettings) -> Result<Vec<Box<dyn Stage>>, DataError> {
    Ok(vec![Box::new(Qa {
        settings: s.clone(),
    })])
}

/// Whether `s` has real markup (a closing tag or a void/block tag), rather than the odd `<x>`
/// of plain text (`-F <framework-dir>`), which an HTML parser would swallow.
fn looks_like_html(s: &str) -> bool {
    s.contains("</")
        || ["<br", "<p>", "<p ", "<img ", "<hr"]
            .iter()
            .any(|t| s.contains(t))
}

/// Visible text of an HTML fragment; plain text only has its entities decoded.
fn visible(s: &str) -> String {
    if looks_like_html(s) {
        crate::html::to_text(s)
    } else if s.contains('&') {
        crate::html::to_text(&s.replace('<', "&lt;"))
    } else {
        s.trim().to_string()
    }
}

/// A score as a number, whether given as a JSON number or a numeric string.
fn score(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

pub struct Qa {
    settings: QaSettings,
}

impl Stage for Qa {
    fn name(&self) -> &'static str {
        "qa"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        let mut text = visible(&doc.text);
        if self.settings.include_answers
            && let Some(Value::Array(answers)) = doc.meta.get("answers")
        {
            let mut scored: Vec<(f64, &str)> = answers
                .iter()
                .filter_map(|a| {
                    let t = a.get("text")?.as_str()?;
                    Some((a.get("score").map_or(0.0, score), t))
                })
                .collect();
            // Stable: equal scores keep the reader's order.
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            let limit = match self.settings.max_answers {
                0 => usize::MAX,
                n => n,
            };
            for (_, answer) in scored.into_iter().take(limit) {
                let answer = visible(answer);
                if !answer.is_empty() {
                    if !text.is_empty() {
                        text.push_str("\n\n");
                    }
                    text.push_str(&answer);
                }
            }
        }
        doc.text = text;
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(doc: Document, s: QaSettings) -> String {
        Qa { settings: s }
            .apply(doc)
            .map(|d| d.text)
            .unwrap_or_default()
    }

    #[test]
    fn html_is_stripped_and_answers_follow_by_score() {
        let doc = Document::new("q1", "<p>How do I <b>sort</b> a list?</p>").with_meta(
            "answers",
            json!([
                {"text": "<p>Use <code>sorted()</code>.</p>", "score": 3},
                {"text": "<p>Use <code>list.sort()</code>.</p>", "score": "10"},
                {"text": "Plain answer.", "score": 3},
                {"score": 50},
                "not an object"
            ]),
        );
        let out = run(doc, QaSettings::default());
        let q = out.find("How do I sort a list?").expect("question");
        let a = out.find("list.sort()").expect("best answer");
        let b = out.find("sorted()").expect("second");
        let c = out.find("Plain answer.").expect("third");
        assert!(q < a && a < b && b < c, "{out}");
        assert!(!out.contains('<'), "{out}");
    }

    #[test]
    fn max_answers_and_no_answers() {
        let doc = Document::new("q", "Why?").with_meta(
            "answers",
            json!([{"text": "Low.", "score": 1}, {"text": "High.", "score": 9}]),
        );
        let one = QaSettings {
            max_answers: 1,
            ..QaSettings::default()
        };
        assert_eq!(run(doc.clone(), one), "Why?\n\nHigh.");
        let none = QaSettings {
            include_answers: false,
            ..QaSettings::default()
        };
        assert_eq!(run(doc, none), "Why?");
        let plain = Document::new("q", "Pass -F <framework-dir> &amp; run");
        assert_eq!(
            run(plain, QaSettings::default()),
            "Pass -F <framework-dir> & run"
        );
        assert_eq!(
            run(
                Document::new("q", "  plain  ").with_meta("answers", "x"),
                QaSettings::default()
            ),
            "plain"
        );
    }
}
