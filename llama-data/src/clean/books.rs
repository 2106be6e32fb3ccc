//! Books (Gutenberg, Books3): Project Gutenberg boilerplate removed, and book-level
//! near-duplicates dropped ("we remove books with more than 90% content overlap").

use serde::{Deserialize, Serialize};

use super::Stage;
use super::minhash::{LshIndex, MinHasher};
use crate::document::Document;
use crate::error::DataError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BooksSettings {
    /// Run `gutenberg-boilerplate`: keep only the text between the `*** START OF ...` and
    /// `*** END OF ... PROJECT GUTENBERG ...` lines (books without them are unchanged).
    pub strip_gutenberg: bool,
    /// Run `book-dedup`.
    pub dedup: bool,
    /// `book-dedup`: a book whose estimated overlap with an earlier kept book is at least this is
    /// dropped. Overlap is the Dice coefficient of the word-shingle sets (the share of shingles
    /// the two books have in common); the paper's 90 %.
    pub overlap_threshold: f64,
    /// `book-dedup`: words per shingle. 3 rather than the usual 5: a replaced word breaks `k`
    /// shingles, so with 5-word shingles a copy with 2 % of its words edited already falls to
    /// about 0.91 overlap, with 3-word shingles to about 0.93 (measured on Hamlet); different
    /// books still share few 3-word shingles.
    pub shingle_words: usize,
    /// `book-dedup`: MinHash permutations (signature length).
    pub num_perm: usize,
    /// `book-dedup`: LSH bands; `num_perm / bands` rows each (must divide). 32 bands of 4 rows
    /// make a pair at 90 % overlap a candidate with probability above 0.9999.
    pub bands: usize,
}

impl Default for BooksSettings {
    fn default() -> Self {
        Self {
            strip_gutenberg: true,
            dedup: true,
            overlap_threshold: 0.9,
            shingle_words: 3,
            num_perm: 128,
            bands: 32,
        }
    }
}

pub fn stages(s: &BooksSettings) -> Result<Vec<Box<dyn Stage>>, DataError> {
    let mut out: Vec<Box<dyn Stage>> = Vec::new();
    if s.strip_gutenberg {
        out.push(Box::new(GutenbergBoilerplate));
    }
    if s.dedup {
        out.push(Box::new(BookDedup::new(s)?));
    }
    Ok(out)
}

/// Whether `line` is a Gutenberg `*** START OF ...` (or `*** END OF ...`) marker.
fn is_marker(line: &str, word: &str) -> bool {
    let t = line.trim_start_matches([' ', '\u{feff}', '*']).trim_start();
    let Some(head) = t.get(..word.len() + 3) else {
        return false;
    };
    head.eq_ignore_ascii_case(&format!("{word} of"))
        && line.to_ascii_lowercase().contains("project gutenberg")
}

/// The text between the Gutenberg markers; `None` when there is no start marker.
pub fn strip_gutenberg(text: &str) -> Option<&str> {
    let mut start = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let line_end = pos + line.len();
        if start.is_none() {
            if is_marker(line, "start") {
                start = Some(line_end);
            }
        } else if is_marker(line, "end") || {
            // "End of the Project Gutenberg EBook of ..." often precedes the marker.
            let l = line.trim().to_ascii_lowercase();
            l.starts_with("end of the project gutenberg")
                || l.starts_with("end of project gutenberg")
        } {
            return start.map(|s| &text[s..pos]);
        }
        pos = line_end;
    }
    start.map(|s| &text[s..])
}

pub struct GutenbergBoilerplate;

impl Stage for GutenbergBoilerplate {
    fn name(&self) -> &'static str {
        "gutenberg-boilerplate"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        if let Some(body) = strip_gutenberg(&doc.text) {
            doc.text = body.trim().to_string();
        }
        Some(doc)
    }
}

/// The `book-dedup` stage: keeps a book unless it overlaps an earlier kept one.
pub struct BookDedup {
    hasher: MinHasher,
    index: LshIndex,
    threshold: f64,
}

impl BookDedup {
    pub fn new(s: &BooksSettings) -> Result<Self, DataError> {
        if s.num_perm == 0 || s.bands == 0 || !s.num_perm.is_multiple_of(s.bands) {
            return Err(DataError::Invalid(format!(
                "books cleaner: bands ({}) must divide num_perm ({}), both positive",
                s.bands, s.num_perm
            )));
        }
        Ok(Self {
            hasher: MinHasher::new(s.num_perm, s.shingle_words),
            index: LshIndex::new(s.bands, s.num_perm / s.bands),
            threshold: s.overlap_threshold,
        })
    }

    /// The best estimated overlap of `text` with the kept books, if any is a candidate.
    pub fn overlap(&self, text: &str) -> Option<f64> {
        self.index.best_overlap(&self.hasher.signature(text))
    }
}

impl Stage for BookDedup {
    fn name(&self) -> &'static str {
        "book-dedup"
    }

    fn apply(&mut self, doc: Document) -> Option<Document> {
        let sig = self.hasher.signature(&doc.text);
        if self
            .index
            .best_overlap(&sig)
            .is_some_and(|o| o >= self.threshold)
        {
            return None;
        }
        self.index.insert(sig);
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gutenberg_header_and_footer_are_removed() {
        let text = "\u{feff}The Project Gutenberg EBook of X\nLicense blah.\n\
            *** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\nChapter 1\nIt began.\n\n\
            End of the Project Gutenberg EBook of X\n\
            *** END OF THIS PROJECT GUTENBERG EBOOK X ***\nMore licence.\n";
        let mut s = GutenbergBoilerplate;
        assert_eq!(
            s.apply(Document::new("b", text)).expect("kept").text,
            "Chapter 1\nIt began."
        );
        let newer = "h\n*** START OF THE PROJECT GUTENBERG EBOOK Y ***\nBody.\n*** END OF THE PROJECT GUTENBERG EBOOK Y ***\nf";
        assert_eq!(strip_gutenberg(newer), Some("Body.\n"));
        // No marker: unchanged; a start without an end runs to the end.
        assert_eq!(
            strip_gutenberg("Just a book.\nTHE END OF THE FIRST BOOK."),
            None
        );
        assert_eq!(
            strip_gutenberg("***START OF THE PROJECT GUTENBERG EBOOK Z***\nAll of it."),
            Some("All of it.")
        );
    }

    #[test]
    fn dedup_drops_copies_and_keeps_different_books() {
        let s = BooksSettings::default();
        let mut d = BookDedup::new(&s).expect("valid");
        let book = |seed: usize| -> String {
            (0..3000)
                .map(|i| format!("w{} ", (i * 7 + seed * 13) % 1009 + seed * 2000))
                .collect()
        };
        assert!(d.apply(Document::new("a", book(1))).is_some());
        assert!(d.apply(Document::new("b", book(2))).is_some());
        assert!(d.apply(Document::new("a2", book(1))).is_none());
        assert!(BookDedup::new(&BooksSettings { bands: 5, ..s }).is_err());
    }
}
