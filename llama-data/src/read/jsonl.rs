//! JSON Lines (C4, CCNet output, Reddit dumps...): one object per line, one document per object.

use std::path::PathBuf;

use serde_json::Value;

use super::text::{lines, not_utf8};
use super::{Documents, ReadError, ReadLimits};
use crate::document::Document;

/// One document per line: `text_field` is the text, every other field goes to `meta`. Ids are
/// `file#line` (1-based). Bad lines are one error each (`file:line`); empty lines are skipped.
pub fn read(path: PathBuf, text_field: String, limits: ReadLimits) -> Documents {
    let file = path.display().to_string();
    Box::new(lines(&path, limits).filter_map(move |line| {
        let (n, bytes) = match line {
            Ok(line) => line,
            Err(e) => return Some(Err(e)),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(parse_line(&file, n, &bytes, &text_field))
    }))
}

fn parse_line(file: &str, n: usize, bytes: &[u8], text_field: &str) -> Result<Document, ReadError> {
    let location = || format!("{file}:{n}");
    // Checked first so that a Latin-1 line says so, rather than "invalid JSON".
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(not_utf8(file, n, e.valid_up_to()));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ReadError::new(location(), format!("not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ReadError::new(location(), "not a JSON object"));
    };
    let text = match fields.remove(text_field) {
        Some(Value::String(text)) => text,
        Some(_) => {
            return Err(ReadError::new(
                location(),
                format!("field {text_field:?} is not a string"),
            ));
        }
        None => {
            return Err(ReadError::new(
                location(),
                format!("no {text_field:?} field"),
            ));
        }
    };
    let mut doc = Document::new(format!("{file}#{n}"), text);
    doc.meta = fields;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    fn read_all(path: &Path, field: &str) -> Vec<Result<Document, ReadError>> {
        read(path.to_path_buf(), field.to_string(), ReadLimits::default()).collect()
    }

    #[test]
    fn objects_become_documents_with_meta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(
            &path,
            "{\"text\": \"hello\\nworld\", \"url\": \"http://x\", \"score\": 3}\n\n{\"title\": \"T\", \"text\": \"é\"}\n",
        )
        .unwrap();
        let items = read_all(&path, "text");
        assert_eq!(items.len(), 2);
        let first = items[0].as_ref().unwrap();
        assert_eq!(first.text, "hello\nworld");
        assert_eq!(first.id, format!("{}#1", path.display()));
        assert_eq!(first.meta_str("url"), Some("http://x"));
        assert_eq!(first.meta["score"], 3);
        assert!(!first.meta.contains_key("text"));
        let second = items[1].as_ref().unwrap();
        assert_eq!(
            (second.text.as_str(), second.meta_str("title")),
            ("é", Some("T"))
        );
        assert_eq!(second.id, format!("{}#3", path.display()));
    }

    #[test]
    fn custom_text_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.jsonl");
        std::fs::write(&path, "{\"body\": \"the body\", \"text\": \"other\"}\n").unwrap();
        let doc = read_all(&path, "body").remove(0).unwrap();
        assert_eq!(doc.text, "the body");
        assert_eq!(doc.meta_str("text"), Some("other"));
    }

    #[test]
    fn each_bad_line_is_one_error_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        let mut bytes =
            b"this is not json\n[1, 2]\n{\"text\": 5}\n{\"title\": \"no text\"}\n".to_vec();
        bytes.extend_from_slice(
            b"{\"text\": \"caf\xe9\"}\n{\"text\": \"trunc\n\x00\x01\x02\n{\"text\": \"good\"}\n",
        );
        std::fs::write(&path, bytes).unwrap();
        let items = read_all(&path, "text");
        assert_eq!(items.len(), 8);
        let file = path.display().to_string();
        for (i, item) in items[..7].iter().enumerate() {
            let err = item.as_ref().unwrap_err();
            assert_eq!(err.location, format!("{file}:{}", i + 1));
        }
        assert!(
            items[0]
                .as_ref()
                .unwrap_err()
                .message
                .starts_with("not JSON")
        );
        assert_eq!(items[1].as_ref().unwrap_err().message, "not a JSON object");
        assert!(
            items[2]
                .as_ref()
                .unwrap_err()
                .message
                .contains("not a string")
        );
        assert!(
            items[3]
                .as_ref()
                .unwrap_err()
                .message
                .contains("no \"text\" field")
        );
        assert!(items[4].as_ref().unwrap_err().message.contains("not UTF-8"));
        assert_eq!(items[7].as_ref().unwrap().text, "good");
    }

    #[test]
    fn empty_file_and_giant_line() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(read_all(&empty, "text").len(), 0);

        let path = dir.path().join("giant.jsonl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        f.write_all(b"{\"text\": \"").unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\"}\n{\"text\": \"small\"}\n").unwrap();
        drop(f);
        let items: Vec<_> = read(
            path.clone(),
            "text".into(),
            ReadLimits {
                max_document_bytes: 1 << 20,
            },
        )
        .collect();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0].as_ref().unwrap_err().location,
            format!("{}:1", path.display())
        );
        assert_eq!(items[1].as_ref().unwrap().text, "small");
    }

    #[test]
    fn gzip_and_truncated_bz2() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = (0..5000)
            .map(|i| format!("{{\"text\": \"doc {i}\"}}\n"))
            .collect();
        let gz = dir.path().join("a.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(body.as_bytes()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_all(&gz, "text").iter().flatten().count(), 5000);

        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        enc.write_all(body.as_bytes()).unwrap();
        let bytes = enc.finish().unwrap();
        let bz = dir.path().join("cut.jsonl.bz2");
        std::fs::write(&bz, &bytes[..bytes.len() - 20]).unwrap();
        let items = read_all(&bz, "text");
        assert!(items.last().unwrap().is_err(), "the truncation is reported");
        assert_eq!(items.iter().filter(|i| i.is_err()).count(), 1);
    }

    #[test]
    fn real_web_jsonl() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus/web");
        if !dir.exists() {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        }
        let mut total = 0;
        for name in [
            "amazon_reviews.jsonl",
            "cc_documents_000.jsonl.gz",
            "cc_en_head-0091.jsonl",
            "nyt_articles.jsonl",
        ] {
            let path = dir.join(name);
            let items = read_all(&path, "text");
            let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            assert!(!items.is_empty(), "{name}");
            assert!(
                items
                    .iter()
                    .flatten()
                    .all(|d| !d.text.is_empty() && d.meta.contains_key("source"))
            );
            eprintln!("{name}: {} documents", items.len());
            total += items.len();
        }
        let ccnet = read_all(&dir.join("cc_en_head-0091.jsonl"), "text");
        let first = ccnet[0].as_ref().unwrap();
        assert_eq!(
            first.meta["metadata"]["url"],
            "http://100kinvesting.com/2016/11/28/first-teleconference-calls-invoice-factoring/"
        );
        assert!(
            first
                .text
                .starts_with("We will be starting to hold weekly teleconferences")
        );
        assert!(total > 100);
    }
}
