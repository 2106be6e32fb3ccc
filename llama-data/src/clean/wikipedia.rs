//! Wikipedia: wikitext to plain text (the paper removes "hyperlinks, comments and other
//! formatting boilerplate"), boilerplate sections dropped, redirects dropped.

use serde::{Deserialize, Serialize};

use super::Stage;
use super::wikitext::{WikitextOptions, to_plain_text};
use crate::document::Document;
use crate::error::DataError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WikipediaSettings {
    /// Sections removed with their subsections (titles compared case-insensitively): the
    /// reference and navigation lists at the end of an article, which are not prose.
    pub drop_sections: Vec<String>,
    /// Keep section titles as lines of their own (the `==` marks are always removed).
    pub keep_headings: bool,
    /// Drop `#REDIRECT` pages (they hold a link only).
    pub drop_redirects: bool,
}

impl Default for WikipediaSettings {
    fn default() -> Self {
        Self {
            drop_sections: [
                "References",
                "External links",
                "See also",
                "Further reading",
                "Notes",
                "Bibliography",
                "Sources",
                "Citations",
                "Notes and references",
                "Footnotes",
            ]
            .map(String::from)
            .to_vec(),
            keep_headings: true,
            drop_redirects: true,
        }
    }
}

pub fn stages(s: &WikipediaSettings) -> Result<Vec<Box<dyn Stage>>, DataError> {
    Ok(vec![Box::new(Wikitext::new(s))])
}

/// The `wikitext` stage.
pub struct Wikitext {
    opts: WikitextOptions,
    drop_redirects: bool,
}

impl Wikitext {
    pub fn new(s: &WikipediaSettings) -> Self {
        Self {
            opts: WikitextOptions {
                drop_sections: s
                    .drop_sections
                    .iter()
                    .map(|t| t.trim().to_lowercase())
                    .collect(),
                keep_headings: s.keep_headings,
            },
            drop_redirects: s.drop_redirects,
        }
    }
}

fn is_redirect(text: &str) -> bool {
    let head = text.trim_start().as_bytes();
    head.len() >= 9 && head[..9].eq_ignore_ascii_case(b"#redirect")
}

impl Stage for Wikitext {
    fn name(&self) -> &'static str {
        "wikitext"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        if self.drop_redirects && is_redirect(&doc.text) {
            return None;
        }
        doc.text = to_plain_text(&doc.text, &self.opts);
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(text: &str) -> String {
        let mut s = Wikitext::new(&WikipediaSettings::default());
        s.apply(Document::new("t", text))
            .map(|d| d.text)
            .unwrap_or_default()
    }

    #[test]
    fn templates_refs_comments_and_tables_are_removed() {
        let text = "{{Infobox city|name=Paris|population={{formatnum:2100000}}}}\n\
            '''Paris''' is the capital<ref name=\"a\">{{cite web|url=x}}</ref> of [[France]].<ref name=\"b\"/>\
            <!-- hidden {{note}} -->\n\
            {| class=\"wikitable\"\n|-\n| cell || {{flag|FR}}\n|}\n\
            It lies on the ''[[Seine (river)|Seine]]''.";
        assert_eq!(
            clean(text),
            "Paris is the capital of France.\n\nIt lies on the Seine."
        );
    }

    #[test]
    fn links_media_categories_and_external_links() {
        let text = "[[File:Paris.jpg|thumb|The [[Eiffel Tower]] at [[night|dusk]]]]\
            See [[Louvre]]s, [[:Category:Museums]], [[Paris, Texas|]] and \
            [https://example.org the site] or [http://bare.example].\n\
            [[Category:Capitals]]\n[[fr:Paris]]\n[[Image:x.png]]";
        assert_eq!(
            clean(text),
            "See Louvres, Category:Museums, Paris and the site or."
        );
    }

    #[test]
    fn headings_and_boilerplate_sections() {
        let text = "Intro text.\n\n== History ==\nOld times.\n=== Middle ages ===\nCastles.\n\
            == See also ==\n* [[Other]]\n=== Sub of see also ===\nstill dropped\n\
            == Economy ==\nTrade &amp; industry&nbsp;grew.\n== References ==\n{{reflist}}\n\
            == External links ==\n* [http://x.org Site]";
        assert_eq!(
            clean(text),
            "Intro text.\n\nHistory\n\nOld times.\n\nMiddle ages\n\nCastles.\n\n\
             Economy\n\nTrade & industry grew."
        );
        let no_headings = WikipediaSettings {
            keep_headings: false,
            ..WikipediaSettings::default()
        };
        let mut s = Wikitext::new(&no_headings);
        let out = s.apply(Document::new("t", text)).expect("kept").text;
        assert!(!out.contains("History") && out.contains("Old times."));
    }

    #[test]
    fn redirects_are_dropped() {
        let mut s = Wikitext::new(&WikipediaSettings::default());
        assert!(s.apply(Document::new("r", "#REDIRECT [[Paris]]")).is_none());
        assert!(
            s.apply(Document::new("r", "  #redirect[[Paris]]"))
                .is_none()
        );
    }

    #[test]
    fn broken_markup_degrades_to_text() {
        assert_eq!(
            clean("Start {{unclosed template and text"),
            "Start unclosed template and text"
        );
        assert_eq!(clean("A [[broken link and more"), "A broken link and more");
        assert_eq!(clean("Stray }} and ]] closers."), "Stray and closers.");
        assert_eq!(clean("x <ref>never closed"), "x never closed");
        assert_eq!(clean("a <!-- unclosed comment"), "a");
        assert_eq!(clean("1 < 2 and 3 > 2"), "1 < 2 and 3 > 2");
        // A template closed inside a link: the link is unclosed, the template still removed.
        assert_eq!(clean("{{a [[b}} c"), "c");
        assert_eq!(clean("''''''"), "");
        assert_eq!(
            clean("[http://x.com unterminated"),
            "http://x.com unterminated"
        );
    }

    #[test]
    fn pathological_inputs_terminate_with_sensible_output() {
        let many_open = "{{".repeat(100_000);
        assert_eq!(clean(&many_open), "");
        let open_text = "{{a ".repeat(50_000) + "end";
        let out = clean(&open_text);
        assert!(
            out.ends_with("end") && !out.contains("{{"),
            "{}",
            &out[..50]
        );
        let deep = "[[a|".repeat(10_000) + &"]]".repeat(10_000);
        assert!(!clean(&deep).contains("[["));
        let refs = "<ref>".repeat(50_000);
        assert_eq!(clean(&refs), "");
        let ext = "[http://x ".repeat(20_000);
        assert!(!clean(&ext).contains("[http"));
        let tables = "{|\n".repeat(20_000) + "text";
        assert_eq!(clean(&tables), "text");
        // Arbitrary bytes of markup characters never panic.
        let noise: String = (0..20_000u32)
            .map(|i| {
                [
                    '{', '}', '[', ']', '|', '<', '>', '\'', '=', '\n', 'é', '&', ';', '#', '!',
                    '/',
                ][(i * 7919 % 16) as usize]
            })
            .collect();
        let _ = clean(&noise);
    }
}
