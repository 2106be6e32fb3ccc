//! The C4 page rules (Raffel et al., 2020, section 2.2), applied line by line to extracted web
//! text: keep sentence-like lines, drop code, placeholders, policy banners and short pages.

use super::Stage;
use crate::document::Document;

/// Policy and cookie banners removed line by line by C4.
const POLICY_SUBSTRINGS: [&str; 6] = [
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

/// Settings of [`C4Quality`], see `WebSettings` for their meaning.
#[derive(Debug, Clone)]
pub struct C4Rules {
    pub min_words_per_line: usize,
    pub min_sentences: usize,
    pub max_word_chars: usize,
    pub bad_words: Vec<String>,
}

pub struct C4Quality {
    rules: C4Rules,
    /// Lowercased single-word entries of the bad-words list.
    bad_words: std::collections::HashSet<String>,
    /// Lowercased multi-word entries, matched as substrings of the lowercased page.
    bad_phrases: Vec<String>,
}

impl C4Quality {
    pub fn new(rules: C4Rules) -> Self {
        let (phrases, words): (Vec<String>, Vec<String>) = rules
            .bad_words
            .iter()
            .map(|w| w.trim().to_lowercase())
            .filter(|w| !w.is_empty())
            .partition(|w| w.contains(char::is_whitespace));
        Self {
            rules,
            bad_words: words.into_iter().collect(),
            bad_phrases: phrases,
        }
    }

    /// Whether a (stripped, citation-free) line is kept.
    fn keep_line(&self, line: &str, lower: &str) -> bool {
        let ends_ok = line.ends_with(['.', '!', '?', '"']) && !line.ends_with("...");
        if !ends_ok {
            return false;
        }
        let mut words = 0;
        for w in line.split_whitespace() {
            if w.chars().count() > self.rules.max_word_chars {
                return false;
            }
            words += 1;
        }
        words >= self.rules.min_words_per_line
            && !lower.contains("javascript")
            && !POLICY_SUBSTRINGS.iter().any(|p| lower.contains(p))
    }

    fn has_bad_word(&self, lower_page: &str) -> bool {
        if !self.bad_words.is_empty()
            && lower_page
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| self.bad_words.contains(w))
        {
            return true;
        }
        self.bad_phrases.iter().any(|p| lower_page.contains(p))
    }
}

/// Removes Wikipedia-style citation marks C4 strips: `[12]`, `[]`, `[edit]`, `[citation needed]`.
pub fn remove_citations(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains('[') {
        return line.into();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let close = tail.find(']');
        let drop = close.is_some_and(|j| {
            let inner = &tail[1..j];
            inner.bytes().all(|b| b.is_ascii_digit())
                || inner.eq_ignore_ascii_case("edit")
                || inner.eq_ignore_ascii_case("citation needed")
        });
        match close {
            Some(j) if drop => rest = &tail[j + 1..],
            _ => {
                out.push('[');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out.into()
}

/// Sentences in a kept line: runs of `.!?` followed (after closing quotes or brackets) by a space
/// or the end; a line ending in a bare quote counts as one.
pub fn count_sentences(line: &str) -> usize {
    let b = line.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        if matches!(b[i], b'.' | b'!' | b'?') {
            while i < b.len() && matches!(b[i], b'.' | b'!' | b'?') {
                i += 1;
            }
            while i < b.len() && matches!(b[i], b'"' | b'\'' | b')' | b']') {
                i += 1;
            }
            if i == b.len() || b[i].is_ascii_whitespace() {
                n += 1;
            }
        } else {
            i += 1;
        }
    }
    n.max(usize::from(!line.is_empty()))
}

impl Stage for C4Quality {
    fn name(&self) -> &'static str {
        "c4-quality"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        let lower_page = doc.text.to_lowercase();
        // Page-level rules: placeholder text and anything code-like (C4 drops any '{').
        if lower_page.contains("lorem ipsum") || doc.text.contains('{') {
            return None;
        }
        if self.has_bad_word(&lower_page) {
            return None;
        }
        let mut out = String::with_capacity(doc.text.len());
        let mut sentences = 0;
        for raw in doc.text.lines() {
            let line = remove_citations(raw.trim());
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if self.keep_line(line, &line.to_lowercase()) {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(line);
                sentences += count_sentences(line);
            }
        }
        if sentences < self.rules.min_sentences {
            return None;
        }
        doc.text = out;
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage() -> C4Quality {
        C4Quality::new(C4Rules {
            min_words_per_line: 5,
            min_sentences: 3,
            max_word_chars: 1000,
            bad_words: Vec::new(),
        })
    }

    fn run(s: &mut C4Quality, text: &str) -> Option<String> {
        s.apply(Document::new("d", text)).map(|d| d.text)
    }

    const GOOD: &str = "The river rises in the northern hills. It flows south for many miles.\n\
        Farmers along its banks grow wheat and barley. \"We depend on the water,\" one said.";

    #[test]
    fn keeps_sentence_lines_and_drops_the_rest() {
        let text = format!(
            "Home | About | Contact\n{GOOD}\nShare this:\nPlease enable JavaScript to view the comments powered by us.\n\
             By using this site you agree to our privacy policy and terms.\nRead more about the river...\n\
             Too short a line.\nThe dam was built in 1950.[3] It was repaired later.[citation needed]"
        );
        let out = run(&mut stage(), &text).expect("kept");
        assert_eq!(
            out,
            format!("{GOOD}\nThe dam was built in 1950. It was repaired later.")
        );
    }

    #[test]
    fn drops_pages_with_curly_braces_or_lorem_ipsum() {
        let mut s = stage();
        assert!(run(&mut s, &format!("{GOOD}\nfunction f() {{ return 1; }}")).is_none());
        assert!(
            run(
                &mut s,
                &format!("{GOOD}\nLorem Ipsum dolor sit amet, consectetur.")
            )
            .is_none()
        );
        assert!(run(&mut s, GOOD).is_some());
    }

    #[test]
    fn drops_pages_with_too_few_sentences() {
        let mut s = stage();
        assert!(
            run(
                &mut s,
                "One single line with enough words here.\nNavigation menu"
            )
            .is_none()
        );
        assert!(
            run(
                &mut s,
                "First sentence has five words. Second one also has five."
            )
            .is_none(),
            "two sentences < 3"
        );
    }

    #[test]
    fn bad_words_drop_the_page_as_words_or_phrases() {
        let mut s = C4Quality::new(C4Rules {
            bad_words: vec!["Barley".into(), "own goal".into()],
            ..stage().rules
        });
        assert!(run(&mut s, GOOD).is_none());
        let other = "A team scored an OWN  goal today. Nobody was happy about it. Fans left early.";
        assert!(
            run(&mut s, other).is_some(),
            "whitespace differs: phrase not matched"
        );
        assert!(run(&mut s, &other.replace("OWN  goal", "own goal")).is_none());
        // Substrings of words are not bad words.
        assert!(run(&mut s, &GOOD.replace("barley", "barleys")).is_some());
    }

    #[test]
    fn citations_and_sentence_counts() {
        assert_eq!(
            remove_citations("a[1] b[edit] c[x] d[] e[12"),
            "a b c[x] d e[12"
        );
        assert_eq!(count_sentences("One. Two! Three?"), 3);
        assert_eq!(count_sentences("He said \"go.\" Then left."), 2);
        assert_eq!(count_sentences("Version 1.5 is out."), 1);
        assert_eq!(count_sentences("\"quoted\""), 1);
    }
}
