//! Benchmark records: JSON objects that remember where they came from (`file:line`), so that a
//! missing field or a bad label is reported against the line that holds it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// One record (a JSON object) and its `file:line`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub source: String,
    pub fields: Map<String, Value>,
}

/// Parses one JSONL line.
pub fn parse_line(line: &str, file: &str, number: usize) -> Result<Record> {
    let source = format!("{file}:{number}");
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(fields)) => Ok(Record { source, fields }),
        Ok(_) => bail!("{source}: not a JSON object"),
        Err(e) => bail!("{source}: not valid JSON ({e})"),
    }
}

/// The records of a JSONL file, or of a Hugging Face `save_to_disk` folder / `.arrow` stream.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    if path.is_dir() || path.extension().is_some_and(|e| e == "arrow") {
        super::arrow::read_dataset(path)
    } else {
        read_jsonl(path)
    }
}

/// Every non-empty line of a JSONL file.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = path.display().to_string();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l, &file, i + 1))
        .collect()
}

impl Record {
    pub fn get(&self, name: &str) -> Result<&Value> {
        match self.fields.get(name) {
            Some(v) => Ok(v),
            None => bail!("{}: missing field `{name}`", self.source),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str> {
        match self.get(name)? {
            Value::String(s) => Ok(s),
            other => bail!(
                "{}: field `{name}` must be a string, not {other}",
                self.source
            ),
        }
    }

    pub fn str_list(&self, name: &str) -> Result<Vec<String>> {
        let bad = || anyhow::anyhow!("{}: field `{name}` must be a list of strings", self.source);
        self.get(name)?
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect()
    }

    /// A label stored as a number or a numeric string, counted from `base` (0 or 1), as a 0-based
    /// index. (Range checks against the choice count are the caller's.)
    pub fn index(&self, name: &str, base: usize) -> Result<usize> {
        let raw = match self.get(name)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match raw {
            Some(v) if v >= base as i64 => Ok((v - base as i64) as usize),
            Some(v) => bail!(
                "{}: label {v} is out of range (labels start at {base})",
                self.source
            ),
            None => bail!(
                "{}: field `{name}` must be an integer label, not {}",
                self.source,
                self.get(name)?
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_errors() {
        let r = parse_line(
            r#"{"a":"2","b":3,"c":"x","d":["p","q"],"e":[1]}"#,
            "f.jsonl",
            3,
        )
        .unwrap();
        assert_eq!(r.index("a", 1).unwrap(), 1);
        assert_eq!(r.index("b", 0).unwrap(), 3);
        assert_eq!(
            r.index("c", 0).unwrap_err().to_string(),
            "f.jsonl:3: field `c` must be an integer label, not \"x\""
        );
        assert_eq!(
            r.index("b", 5).unwrap_err().to_string(),
            "f.jsonl:3: label 3 is out of range (labels start at 5)"
        );
        assert_eq!(r.str_list("d").unwrap(), vec!["p", "q"]);
        assert!(
            r.str_list("e")
                .unwrap_err()
                .to_string()
                .contains("list of strings")
        );
        assert_eq!(
            r.str("z").unwrap_err().to_string(),
            "f.jsonl:3: missing field `z`"
        );
        assert!(
            parse_line("[1]", "f", 1)
                .unwrap_err()
                .to_string()
                .contains("f:1: not a JSON object")
        );
        assert!(
            parse_line("{", "f", 2)
                .unwrap_err()
                .to_string()
                .starts_with("f:2: not valid JSON")
        );
    }
}
