//! StackExchange `Posts.xml` dumps: one document per question, its answers in `meta.answers`.
//!
//! Limit: answers can come before or after their question, so the whole file's questions and
//! answers are grouped in memory and emitted at the end of the file (in the order the questions
//! appear). Memory is about the size of the decompressed file; split very large sites' dumps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use serde_json::{Value, json};

use super::{Documents, ReadError, ReadLimits, open};
use crate::document::Document;

/// Questions of the dump at `path`; id `file#Id` (the question's post id); text = title, a blank
/// line, the body (HTML as in the dump); meta `title`, `score`, `tags`, `answers` =
/// `[{"text", "score"}]` in file order.
pub fn read(path: PathBuf, limits: ReadLimits) -> Documents {
    let mut errors = Vec::new();
    let posts = collect(&path, limits, &mut errors);
    let file = path.display().to_string();
    let docs = posts.into_documents(&file, &mut errors);
    Box::new(errors.into_iter().map(Err).chain(docs.into_iter().map(Ok)))
}

struct Question {
    id: u64,
    title: String,
    body: String,
    score: i64,
    tags: Option<String>,
}

#[derive(Default)]
struct Posts {
    questions: Vec<Question>,
    /// Answers by question id: (body, score).
    answers: HashMap<u64, Vec<(String, i64)>>,
}

impl Posts {
    fn into_documents(mut self, file: &str, errors: &mut Vec<ReadError>) -> Vec<Document> {
        let docs = self
            .questions
            .into_iter()
            .map(|q| {
                let answers: Vec<Value> = self
                    .answers
                    .remove(&q.id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(text, score)| json!({ "text": text, "score": score }))
                    .collect();
                let mut doc = Document::new(
                    format!("{file}#{}", q.id),
                    format!("{}\n\n{}", q.title, q.body),
                )
                .with_meta("title", q.title)
                .with_meta("score", q.score)
                .with_meta("answers", answers);
                if let Some(tags) = q.tags {
                    doc = doc.with_meta("tags", tags);
                }
                doc
            })
            .collect();
        let orphans: usize = self.answers.values().map(Vec::len).sum();
        if orphans > 0 {
            errors.push(ReadError::new(
                file,
                format!("{orphans} answers whose question is not in the file, skipped"),
            ));
        }
        docs
    }
}

/// Reads every row; a bad row is an error and is skipped, broken XML ends the file (the rows
/// read so far are kept).
fn collect(path: &Path, limits: ReadLimits, errors: &mut Vec<ReadError>) -> Posts {
    let file = path.display().to_string();
    let mut posts = Posts::default();
    let input = match open(path) {
        Ok(input) => input,
        Err(e) => {
            errors.push(ReadError::new(file, e));
            return posts;
        }
    };
    let mut reader = Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut row = 0usize;
    loop {
        buf.clear();
        match reader.read_event_into(&mut buf) {
            Ok(Event::Eof) => break,
            Ok(Event::Empty(e) | Event::Start(e)) if e.local_name().as_ref() == b"row" => {
                row += 1;
                if let Err(message) = add_row(&e, limits, &mut posts) {
                    errors.push(ReadError::new(format!("{file}:row {row}"), message));
                }
            }
            Ok(_) => {}
            Err(e) => {
                let at = reader.buffer_position();
                errors.push(ReadError::new(
                    file,
                    format!("{e} (near byte {at}); the rest of the file is skipped"),
                ));
                break;
            }
        }
    }
    posts
}

fn add_row(row: &BytesStart, limits: ReadLimits, posts: &mut Posts) -> Result<(), String> {
    let mut fields: HashMap<&'static str, String> = HashMap::new();
    for attr in row.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        let key = match attr.key.local_name().as_ref() {
            b"Id" => "Id",
            b"PostTypeId" => "PostTypeId",
            b"ParentId" => "ParentId",
            b"Score" => "Score",
            b"Body" => "Body",
            b"Title" => "Title",
            b"Tags" => "Tags",
            _ => continue,
        };
        if attr.value.len() > limits.max_document_bytes {
            return Err(format!(
                "{key} over the {}-byte limit, skipped",
                limits.max_document_bytes
            ));
        }
        let value = attr.unescape_value().map_err(|e| format!("{key}: {e}"))?;
        fields.insert(key, value.into_owned());
    }
    let number = |key: &str| -> Result<i64, String> {
        let value = fields.get(key).ok_or_else(|| format!("no {key}"))?;
        value
            .trim()
            .parse()
            .map_err(|_| format!("{key} {value:?} is not a number"))
    };
    let id = number("Id")?;
    let score = number("Score").unwrap_or(0);
    let parent = number("ParentId");
    let kind = fields.remove("PostTypeId");
    let body = fields.remove("Body").unwrap_or_default();
    match kind.as_deref() {
        Some("1") => posts.questions.push(Question {
            id: id as u64,
            title: fields.remove("Title").unwrap_or_default(),
            body,
            score,
            tags: fields.remove("Tags"),
        }),
        Some("2") => {
            let parent = parent?;
            posts
                .answers
                .entry(parent as u64)
                .or_default()
                .push((body, score));
        }
        // Wiki excerpts, moderator nominations...: not Q&A.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const POSTS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="3" PostTypeId="2" ParentId="1" Score="7" Body="&lt;p&gt;Use a &lt;code&gt;Vec&lt;/code&gt;.&lt;/p&gt;&#xA;" />
  <row Id="1" PostTypeId="1" Score="10" Title="How do I store a list?" Tags="&lt;rust&gt;" Body="&lt;p&gt;I need a list &amp;amp; fast.&lt;/p&gt;" />
  <row Id="2" PostTypeId="1" Score="-1" Title="Unanswered" Body="&lt;p&gt;Anyone?&lt;/p&gt;" />
  <row Id="4" PostTypeId="2" ParentId="1" Score="2" Body="&lt;p&gt;Or a linked list.&lt;/p&gt;" />
  <row Id="5" PostTypeId="4" Body="tag wiki excerpt" />
  <row Id="6" PostTypeId="2" ParentId="99" Score="1" Body="orphan" />
  <row Id="x" PostTypeId="1" Title="bad id" Body="b" />
</posts>
"#;

    fn read_bytes(bytes: &[u8], name: &str) -> Vec<Result<Document, ReadError>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        read(path, ReadLimits::default()).collect()
    }

    #[test]
    fn questions_with_their_answers() {
        let items = read_bytes(POSTS.as_bytes(), "Posts.xml");
        let (docs, errors): (Vec<_>, Vec<_>) = items.into_iter().partition(Result::is_ok);
        let docs: Vec<_> = docs.into_iter().map(Result::unwrap).collect();
        let errors: Vec<_> = errors.into_iter().map(Result::unwrap_err).collect();
        assert_eq!(docs.len(), 2);
        let q = &docs[0];
        assert!(q.id.ends_with("Posts.xml#1"));
        assert_eq!(
            q.text,
            "How do I store a list?\n\n<p>I need a list &amp; fast.</p>"
        );
        assert_eq!(q.meta_str("title"), Some("How do I store a list?"));
        assert_eq!(q.meta_str("tags"), Some("<rust>"));
        assert_eq!(q.meta["score"], 10);
        assert_eq!(
            q.meta["answers"],
            json!([{"text": "<p>Use a <code>Vec</code>.</p>\n", "score": 7}, {"text": "<p>Or a linked list.</p>", "score": 2}])
        );
        assert_eq!(docs[1].meta["answers"], json!([]));
        assert_eq!(docs[1].meta["score"], -1);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].location.ends_with("Posts.xml:row 7") && errors[0].message.contains("Id")
        );
        assert!(errors[1].message.starts_with("1 answers whose question"));
    }

    #[test]
    fn bad_files() {
        assert!(read_bytes(b"", "empty.xml").is_empty());
        let binary = read_bytes(&[0x1f, 0x8b, 0, 0xff, b'<', 0xfe, 0], "bin.xml");
        assert!(binary.iter().all(Result::is_err));
        // Broken XML: the questions read before the break are kept, then one error.
        let cut = &POSTS[..POSTS.find("<row Id=\"4\"").unwrap()];
        let broken = format!("{cut}<row Id=\"4\" Body=\"unterminated />\n</posts>");
        let items = read_bytes(broken.as_bytes(), "broken.xml");
        assert_eq!(items.iter().flatten().count(), 2);
        assert_eq!(items.iter().filter(|i| i.is_err()).count(), 1);
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        enc.write_all(POSTS.repeat(100).as_bytes()).unwrap();
        let bz = enc.finish().unwrap();
        let items = read_bytes(&bz[..bz.len() - 10], "cut.xml.bz2");
        assert!(items.iter().any(|i| {
            i.as_ref()
                .is_err_and(|e| e.message.contains("rest of the file is skipped"))
        }));
    }
}
