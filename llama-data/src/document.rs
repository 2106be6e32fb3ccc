//! The unit that flows from readers through cleaners into the tokenizer.

use serde_json::{Map, Value};

/// One document of a source: a Wikipedia article, a web page, a source file, a book, a paper, a
/// question with its answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from: the file path, plus `#n` (record number) or `:title` when one file
    /// holds many documents. Stable across runs, used in warnings and for the split hash.
    pub id: String,
    pub text: String,
    /// Reader-provided fields: every JSONL field besides the text, `title`, `license` (an SPDX
    /// expression, code reader), `url`, `answers` (Q&A), ...
    pub meta: Map<String, Value>,
}

impl Document {
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: text.into(),
            meta: Map::new(),
        }
    }

    pub fn with_meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.meta.insert(key.to_string(), value.into());
        self
    }

    /// A string field of `meta`, if present.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta.get(key).and_then(Value::as_str)
    }
}
