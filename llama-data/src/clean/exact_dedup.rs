//! The `exact-dedup` stage: drops files whose content equals an earlier file's, up to
//! whitespace that does not change code: line endings (CRLF/LF), trailing spaces of lines,
//! and blank lines at the start and end. Indentation is kept (it is syntax in Python).

use std::collections::HashSet;

use xxhash_rust::xxh3::Xxh3;

use super::Stage;
use crate::document::Document;

/// The xxh3-128 of the normalised content.
pub fn content_hash(text: &str) -> u128 {
    let mut h = Xxh3::new();
    let mut pending_blank = 0usize;
    let mut started = false;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            pending_blank += 1;
            continue;
        }
        if started {
            // Blank lines inside the file count; those at the end never get written.
            for _ in 0..=pending_blank {
                h.update(b"\n");
            }
        }
        pending_blank = 0;
        started = true;
        h.update(line.as_bytes());
    }
    h.digest128()
}

/// Keeps one 16-byte hash per distinct file kept so far.
#[derive(Default)]
pub struct ExactDedup {
    seen: HashSet<u128>,
}

impl Stage for ExactDedup {
    fn name(&self) -> &'static str {
        "exact-dedup"
    }

    fn apply(&mut self, doc: Document) -> Option<Document> {
        self.seen.insert(content_hash(&doc.text)).then_some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_variants_are_duplicates_but_indentation_is_not() {
        let a = "def f():\n    return 1\n\nprint(f())\n";
        assert_eq!(
            content_hash(a),
            content_hash("\n\ndef f():  \r\n    return 1\r\n\r\nprint(f())\n\n\n")
        );
        assert_ne!(
            content_hash(a),
            content_hash("def f():\nreturn 1\n\nprint(f())\n")
        );
        assert_ne!(
            content_hash(a),
            content_hash("def f():\n    return 1\nprint(f())\n")
        );
        assert_ne!(content_hash("ab"), content_hash("a\nb"));
    }

    #[test]
    fn stage_keeps_the_first_copy_only() {
        let mut s = ExactDedup::default();
        assert!(s.apply(Document::new("a", "x = 1\n")).is_some());
        assert!(s.apply(Document::new("b", "x = 2\n")).is_some());
        assert!(s.apply(Document::new("c", "x = 1")).is_none());
        assert!(s.apply(Document::new("d", "x = 2\r\n")).is_none());
    }
}
