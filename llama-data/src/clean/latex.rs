//! ArXiv LaTeX, following the paper: "removed everything before the first section, as well as
//! the bibliography; removed the comments from the .tex files, and inline-expanded definitions
//! and macros written by users".

use serde::{Deserialize, Serialize};

use super::Stage;
use super::latex_macros::LatexMacros;
use crate::document::Document;
use crate::error::DataError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatexSettings {
    /// Run `latex-comments`: remove `%` comments (not `\%`); comment-only lines go entirely.
    pub strip_comments: bool,
    /// Run `latex-macros`: expand user macros and remove their definitions.
    pub expand_macros: bool,
    /// `latex-macros`: nesting depth beyond which macros are left unexpanded.
    pub max_macro_depth: usize,
    /// `latex-macros`: expansion stops once the expanded bodies add up to this many times the
    /// input size (user shorthands in papers stay far below; TeX programming in class and
    /// package documentation would otherwise triple a file).
    pub max_macro_growth: usize,
    /// Run `latex-body`: drop everything before the first `\section` (or `\chapter`), the
    /// bibliography, and everything after `\end{document}`. A file without sections keeps what
    /// follows `\begin{document}` (or everything, without one).
    pub body_only: bool,
    /// `latex-body`: also keep the `abstract` environment that precedes the first section. Off by
    /// default: the paper removes everything before the first section.
    pub keep_abstract: bool,
}

impl Default for LatexSettings {
    fn default() -> Self {
        Self {
            strip_comments: true,
            expand_macros: true,
            max_macro_depth: 16,
            max_macro_growth: 2,
            body_only: true,
            keep_abstract: false,
        }
    }
}

/// `latex-comments`, `latex-macros`, `latex-body`: comments go first so that commented-out
/// definitions are not applied; the body is cut last, since definitions live in the preamble.
pub fn stages(s: &LatexSettings) -> Result<Vec<Box<dyn Stage>>, DataError> {
    let mut out: Vec<Box<dyn Stage>> = Vec::new();
    if s.strip_comments {
        out.push(Box::new(LatexComments));
    }
    if s.expand_macros {
        out.push(Box::new(LatexMacros {
            max_depth: s.max_macro_depth,
            max_growth: s.max_macro_growth,
        }));
    }
    if s.body_only {
        out.push(Box::new(LatexBody {
            keep_abstract: s.keep_abstract,
        }));
    }
    Ok(out)
}

/// `text` without `%` comments. A `%` is escaped by an odd number of backslashes before it.
pub fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let b = line.as_bytes();
        let mut backslashes = 0;
        let mut cut = None;
        for (i, &c) in b.iter().enumerate() {
            match c {
                b'\\' => backslashes += 1,
                b'%' if backslashes % 2 == 0 => {
                    cut = Some(i);
                    break;
                }
                _ => backslashes = 0,
            }
        }
        match cut {
            None => out.push_str(line),
            // A line that was only a comment disappears with its line break.
            Some(i) if line[..i].trim().is_empty() => {}
            Some(i) => {
                out.push_str(line[..i].trim_end());
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    }
    out
}

pub struct LatexComments;

impl Stage for LatexComments {
    fn name(&self) -> &'static str {
        "latex-comments"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        if doc.text.contains('%') {
            doc.text = strip_comments(&doc.text);
        }
        Some(doc)
    }
}

/// First occurrence of any of `needles` in `hay`.
fn find_any(hay: &str, needles: &[&str]) -> Option<usize> {
    needles.iter().filter_map(|n| hay.find(n)).min()
}

/// The first `\cmd` not followed by a letter (so `\section` but not `\sectionmark`).
fn find_command(text: &str, cmd: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = text[from..].find(cmd) {
        let at = from + off;
        let after = at + cmd.len();
        if !b.get(after).is_some_and(|c| c.is_ascii_alphabetic()) {
            return Some(at);
        }
        from = after;
    }
    None
}

/// The first `\section` or `\chapter` (a book's chapters come before its sections).
fn first_section(text: &str) -> Option<usize> {
    match (
        find_command(text, "\\section"),
        find_command(text, "\\chapter"),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The body of a paper: from the first section (or the abstract) to `\end{document}`, without
/// the bibliography.
pub fn body(text: &str, keep_abstract: bool) -> String {
    // The last one: manuals quote whole example documents before their own end.
    let end = text.rfind("\\end{document}").unwrap_or(text.len());
    let text = &text[..end];
    let start = match first_section(text) {
        Some(s) => {
            let abs = keep_abstract
                .then(|| text[..s].find("\\begin{abstract}"))
                .flatten();
            abs.unwrap_or(s)
        }
        None => text
            .find("\\begin{document}")
            .map_or(0, |d| d + "\\begin{document}".len()),
    };
    remove_bibliography(&text[start..])
}

/// Removes `thebibliography` environments (an unclosed one runs to the end) and the
/// `\bibliography{..}`, `\bibliographystyle{..}`, `\printbibliography` commands.
fn remove_bibliography(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_any(
        rest,
        &[
            "\\begin{thebibliography}",
            "\\bibliography",
            "\\printbibliography",
        ],
    ) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        rest = if tail.starts_with("\\begin{thebibliography}") {
            const END: &str = "\\end{thebibliography}";
            tail.find(END).map_or("", |e| &tail[e + END.len()..])
        } else if let Some(r) = tail.strip_prefix("\\printbibliography") {
            r
        } else {
            // `\bibliography{refs}` or `\bibliographystyle{plain}`: the command and its group.
            let name_end = tail[1..]
                .find(|c: char| !c.is_ascii_alphabetic())
                .map_or(tail.len(), |p| p + 1);
            let after = &tail[name_end..];
            after
                .trim_start()
                .strip_prefix('{')
                .and_then(|a| a.find('}').map(|e| &a[e + 1..]))
                .unwrap_or(after)
        };
    }
    out.push_str(rest);
    out.trim().to_string()
}

pub struct LatexBody {
    pub keep_abstract: bool,
}

impl Stage for LatexBody {
    fn name(&self) -> &'static str {
        "latex-body"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        doc.text = body(&doc.text, self.keep_abstract);
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::Pipeline;

    #[test]
    fn comments_are_removed_but_escaped_percent_stays() {
        let t = "% header comment\nWe get 50\\% more. % a remark\nA line\\\\% comment after a break\n  %indented\nEnd";
        assert_eq!(strip_comments(t), "We get 50\\% more.\nA line\\\\\nEnd");
    }

    #[test]
    fn body_starts_at_the_first_section_and_drops_the_bibliography() {
        let t = "\\documentclass{article}\n\\title{T}\\begin{document}\\maketitle\n\
                 \\begin{abstract}We study X.\\end{abstract}\n\\sectionmark{no}\\section{Intro}Text \\cite{a}.\n\
                 \\section*{More}Done.\n\\bibliographystyle{plain}\n\\bibliography{refs}\n\
                 \\begin{thebibliography}{9}\\bibitem{a} A. Author.\\end{thebibliography}\n\\end{document}\ntrailing";
        assert_eq!(
            body(t, false),
            "\\section{Intro}Text \\cite{a}.\n\\section*{More}Done."
        );
        assert!(body(t, true).starts_with("\\begin{abstract}We study X."));
        // No section: what follows \begin{document}; no document either: everything.
        assert_eq!(
            body("pre\\begin{document}Just text.\\end{document}", false),
            "Just text."
        );
        assert_eq!(body("plain words", false), "plain words");
        assert_eq!(
            body("\\section{A}x\\begin{thebibliography}unclosed", false),
            "\\section{A}x"
        );
    }

    #[test]
    fn the_three_stages_in_order() {
        let t = "\\newcommand{\\R}{\\mathbb{R}} % reals\n%\\newcommand{\\X}{commented}\n\\begin{document}\n\
                 \\section{One}Let $x\\in\\R$ and \\X.\n\\bibliography{b}\n\\end{document}";
        let mut p = Pipeline::new(stages(&LatexSettings::default()).expect("stages"));
        let out = p.run(Document::new("p.tex", t)).expect("kept");
        assert_eq!(out.text, "\\section{One}Let $x\\in\\mathbb{R}$ and \\X.");
        let names: Vec<_> = p.reports().iter().map(|r| r.stage.clone()).collect();
        assert_eq!(names, ["latex-comments", "latex-macros", "latex-body"]);
    }
}
