//! CCNet-style line deduplication (Wenzek et al., 2020): a line whose normalised form was
//! already seen in an earlier document is boilerplate (menus, footers, cookie banners) and is
//! removed. Seen lines live in a fixed-size Bloom filter, so memory stays bounded.

use super::Stage;
use super::bloom::BloomFilter;
use crate::document::Document;

/// Lowercase, every digit → `0`, punctuation and symbols removed, whitespace runs collapsed to
/// one space, trimmed: the CCNet normalisation, so "Page 3 of 10." and "page 4 of 12" collide.
pub fn normalize_line(line: &str, out: &mut String) {
    out.clear();
    let mut pending_space = false;
    for c in line.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else if c.is_numeric() {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push('0');
        } else if c.is_alphanumeric() {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            if c.is_ascii() {
                out.push(c.to_ascii_lowercase());
            } else {
                out.extend(c.to_lowercase());
            }
        }
        // Punctuation, symbols and control characters are dropped.
    }
}

pub struct LineDedup {
    seen: BloomFilter,
    min_chars: usize,
    norm: String,
    /// Per line of the current document: its hash (None when too short) and whether it was seen.
    lines: Vec<(Option<(u64, u64)>, bool)>,
}

impl LineDedup {
    /// `bloom_bytes` of filter with `bloom_hashes` probes; lines whose normalised form has fewer
    /// than `min_chars` characters are always kept (blank lines, "Yes.", list bullets).
    pub fn new(bloom_bytes: usize, bloom_hashes: u32, min_chars: usize) -> Self {
        Self {
            seen: BloomFilter::new(bloom_bytes, bloom_hashes),
            min_chars,
            norm: String::new(),
            lines: Vec::new(),
        }
    }
}

impl Stage for LineDedup {
    fn name(&self) -> &'static str {
        "line-dedup"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        // Hash every line first and test against the lines of *earlier* documents only, so a
        // line repeated inside one document (a refrain, a table row) is not removed by itself.
        self.lines.clear();
        let mut any_dup = false;
        for line in doc.text.split('\n') {
            normalize_line(line, &mut self.norm);
            let h = (self.norm.chars().count() >= self.min_chars)
                .then(|| BloomFilter::hash(self.norm.as_bytes()));
            let dup = h.is_some_and(|h| self.seen.contains_hash(h));
            any_dup |= dup;
            self.lines.push((h, dup));
        }
        if any_dup {
            let mut out = String::with_capacity(doc.text.len());
            for (line, (_, dup)) in doc.text.split('\n').zip(&self.lines) {
                if *dup {
                    continue;
                }
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(line);
            }
            doc.text = out;
        }
        for h in self.lines.iter().filter_map(|(h, _)| *h) {
            self.seen.insert_hash(h);
        }
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut out = String::new();
        normalize_line(s, &mut out);
        out
    }

    #[test]
    fn normalisation_folds_case_digits_punctuation_and_spaces() {
        assert_eq!(norm("  Page 3 of 10.  "), "page 0 of 00");
        assert_eq!(norm("PAGE 7 of 99!"), "page 0 of 00");
        assert_eq!(norm("Hello,\t  World — ÉTÉ"), "hello world été");
        assert_eq!(norm("¡¿...!?"), "");
    }

    #[test]
    fn drops_lines_seen_in_earlier_documents_only() {
        let mut s = LineDedup::new(1 << 16, 7, 10);
        let a = s
            .apply(Document::new(
                "a",
                "Subscribe to our newsletter today!\nA first article about rivers.\nok\nok",
            ))
            .expect("kept");
        // Nothing seen before: unchanged, including the repeated short line.
        assert_eq!(
            a.text,
            "Subscribe to our newsletter today!\nA first article about rivers.\nok\nok"
        );
        let b = s
            .apply(Document::new(
                "b",
                "SUBSCRIBE to our newsletter   today\nA second article about lakes.\nok\nrepeated line here\nrepeated line here",
            ))
            .expect("kept");
        assert_eq!(
            b.text,
            "A second article about lakes.\nok\nrepeated line here\nrepeated line here"
        );
        let c = s
            .apply(Document::new(
                "c",
                "Repeated line here.\nSomething new in c.",
            ))
            .expect("kept");
        assert_eq!(c.text, "Something new in c.");
    }

    #[test]
    fn a_fully_duplicated_document_becomes_empty() {
        let mut s = LineDedup::new(1 << 16, 7, 10);
        let text = "The same boilerplate footer line.\nAnother boilerplate footer line.";
        assert_eq!(s.apply(Document::new("a", text)).expect("kept").text, text);
        assert_eq!(
            s.apply(Document::new("b", text)).expect("kept").text.trim(),
            ""
        );
    }
}
