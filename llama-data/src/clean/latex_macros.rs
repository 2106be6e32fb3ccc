//! The `latex-macros` stage: "inline-expanded definitions and macros written by users". User
//! definitions (`\newcommand`, `\renewcommand`, `\providecommand`, `\def`, with `[n]` arguments,
//! an optional first argument, and `#1`..`#9`) are removed and their uses replaced by the body.
//! Expansion is bounded in depth and size, so recursive macros cannot blow up.

use std::collections::HashMap;

use super::Stage;
use crate::document::Document;

/// Bodies and arguments longer than this are not parsed (broken braces would otherwise make
/// every definition scan to the end of the file).
const MAX_GROUP_BYTES: usize = 64 * 1024;

/// Redefinitions of document structure (a class-like `\renewcommand\section{\@startsection..}`)
/// are removed but never expanded: the body stage and readers rely on these commands.
const STRUCTURAL: [&str; 14] = [
    "part",
    "chapter",
    "section",
    "subsection",
    "subsubsection",
    "paragraph",
    "subparagraph",
    "begin",
    "end",
    "item",
    "bibliography",
    "appendix",
    "caption",
    "label",
];

#[derive(Debug, Clone, PartialEq)]
struct Macro {
    args: usize,
    /// Default of the optional first argument (`\newcommand{\x}[2][def]{..}`).
    default: Option<String>,
    body: String,
}

/// The index just after the `}` closing the group opened at `open` (`b[open] == b'{'`), or the
/// `]` closing an optional argument when `close` is `]`; escaped braces do not count.
fn group_end(b: &[u8], open: usize, close: u8) -> Option<usize> {
    let opener = b[open];
    let mut depth = 0usize;
    let mut i = open;
    let limit = b.len().min(open + MAX_GROUP_BYTES);
    while i < limit {
        match b[i] {
            b'\\' => i += 1,
            c if c == opener && (opener == b'{' || depth == 0) => depth += 1,
            b'{' if opener == b'[' => {
                // Braces inside an optional argument protect a `]`.
                let end = group_end(b, i, b'}')?;
                i = end - 1;
            }
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// A control word `\name` at `i`: the name and the index after it.
fn control_word(s: &str, i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    if b.get(i) != Some(&b'\\') {
        return None;
    }
    let len = b[i + 1..]
        .iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    (len > 0).then(|| (&s[i + 1..i + 1 + len], i + 1 + len))
}

/// Parses a definition starting at `i` (at the backslash). Returns the name, the macro and the
/// index after the definition.
fn parse_definition(s: &str, i: usize) -> Option<(String, Macro, usize)> {
    let b = s.as_bytes();
    let (cmd, mut j) = control_word(s, i)?;
    if cmd == "def" {
        let (name, k) = control_word(s, j)?;
        // Parameter text `#1#2...` up to the body (delimited parameters are not supported).
        let mut args = 0;
        j = k;
        while b.get(j) == Some(&b'#') && b.get(j + 1).is_some_and(|c| c.is_ascii_digit()) {
            args += 1;
            j += 2;
        }
        if b.get(j) != Some(&b'{') {
            return None;
        }
        let end = group_end(b, j, b'}')?;
        let body = s[j + 1..end - 1].to_string();
        return Some((
            name.to_string(),
            Macro {
                args,
                default: None,
                body,
            },
            end,
        ));
    }
    if !matches!(cmd, "newcommand" | "renewcommand" | "providecommand") {
        return None;
    }
    if b.get(j) == Some(&b'*') {
        j += 1;
    }
    j = skip_spaces(b, j);
    // The name: `{\x}` or `\x`.
    let name = if b.get(j) == Some(&b'{') {
        let end = group_end(b, j, b'}')?;
        let inner = s[j + 1..end - 1].trim();
        let (name, after) = control_word(inner, 0)?;
        if after != inner.len() {
            return None;
        }
        j = end;
        name.to_string()
    } else {
        let (name, after) = control_word(s, j)?;
        j = after;
        name.to_string()
    };
    j = skip_spaces(b, j);
    let mut args = 0;
    if b.get(j) == Some(&b'[') {
        let end = group_end(b, j, b']')?;
        args = s[j + 1..end - 1]
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n <= 9)?;
        j = skip_spaces(b, end);
    }
    let mut default = None;
    if b.get(j) == Some(&b'[') {
        let end = group_end(b, j, b']')?;
        default = Some(s[j + 1..end - 1].to_string());
        j = skip_spaces(b, end);
    }
    if b.get(j) != Some(&b'{') {
        return None;
    }
    let end = group_end(b, j, b'}')?;
    let body = s[j + 1..end - 1].to_string();
    Some((
        name,
        Macro {
            args,
            default,
            body,
        },
        end,
    ))
}

/// Removes the definitions from `s` and returns them (a later definition of a name wins).
fn extract_definitions(s: &str) -> (String, HashMap<String, Macro>) {
    let mut defs = HashMap::new();
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = s[i..].find('\\') {
        let at = i + off;
        match parse_definition(s, at) {
            Some((name, m, end)) => {
                out.push_str(&s[copied..at]);
                if !STRUCTURAL.contains(&name.as_str()) {
                    defs.insert(name, m);
                }
                // Drop the line break that ended the definition line.
                let mut e = end;
                while e < b.len() && (b[e] == b' ' || b[e] == b'\t') {
                    e += 1;
                }
                if b.get(e) == Some(&b'\n') {
                    e += 1;
                }
                copied = e;
                i = e;
            }
            None => i = at + 1 + usize::from(at + 1 < b.len() && b[at + 1] == b'\\'),
        }
    }
    out.push_str(&s[copied..]);
    (out, defs)
}

/// Expansion limits: nesting depth and total output size.
struct Budget {
    depth: usize,
    bytes_left: usize,
}

fn expand_into(
    s: &str,
    defs: &HashMap<String, Macro>,
    depth: usize,
    budget: &mut Budget,
    out: &mut String,
) {
    let b = s.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = s[i..].find('\\') {
        let at = i + off;
        let Some((name, mut j)) = control_word(s, at) else {
            // `\\`, `\%`, `\{`: an escaped character, skipped as a unit.
            i = (at + 2).min(b.len());
            while !s.is_char_boundary(i) {
                i += 1;
            }
            continue;
        };
        let Some(m) = defs
            .get(name)
            .filter(|_| depth < budget.depth && budget.bytes_left > 0)
        else {
            i = j;
            continue;
        };
        // Collect the arguments.
        let mut args: Vec<&str> = Vec::with_capacity(m.args);
        let mut ok = true;
        for k in 0..m.args {
            let p = skip_spaces(b, j);
            if k == 0 && m.default.is_some() {
                if b.get(p) == Some(&b'[') {
                    match group_end(b, p, b']') {
                        Some(end) => {
                            args.push(&s[p + 1..end - 1]);
                            j = end;
                        }
                        None => ok = false,
                    }
                } else {
                    args.push(m.default.as_deref().unwrap_or(""));
                }
                continue;
            }
            match b.get(p) {
                Some(b'{') => match group_end(b, p, b'}') {
                    Some(end) => {
                        args.push(&s[p + 1..end - 1]);
                        j = end;
                    }
                    None => ok = false,
                },
                Some(b'\\') => {
                    let escaped = s[p + 1..].chars().next().map_or(0, char::len_utf8);
                    let end = control_word(s, p).map_or(p + 1 + escaped, |(_, e)| e);
                    args.push(&s[p..end]);
                    j = end;
                }
                Some(_) => {
                    let len = s[p..].chars().next().map_or(1, char::len_utf8);
                    args.push(&s[p..p + len]);
                    j = p + len;
                }
                None => ok = false,
            }
            if !ok {
                break;
            }
        }
        if !ok {
            i = j;
            continue;
        }
        out.push_str(&s[copied..at]);
        let body = substitute(&m.body, &args);
        budget.bytes_left = budget.bytes_left.saturating_sub(body.len());
        expand_into(&body, defs, depth + 1, budget, out);
        // `\foo bar`: the space after a control word belongs to it.
        if m.args == 0 && b.get(j) == Some(&b' ') {
            out.push(' ');
            j += 1;
        }
        copied = j;
        i = j;
    }
    out.push_str(&s[copied..]);
}

/// The body with `#1`..`#9` replaced by the arguments (`##` is a literal `#`).
fn substitute(body: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c == '#' {
            match chars.peek().map(|&(_, d)| d) {
                Some(d @ '1'..='9') => {
                    chars.next();
                    out.push_str(args.get(d as usize - '1' as usize).copied().unwrap_or(""));
                    continue;
                }
                Some('#') => {
                    chars.next();
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

/// Removes the user definitions of `s` and expands their uses.
pub fn expand_macros(s: &str, max_depth: usize, max_growth: usize) -> String {
    let (text, defs) = extract_definitions(s);
    if defs.is_empty() {
        return text;
    }
    let mut budget = Budget {
        depth: max_depth,
        bytes_left: text.len().saturating_mul(max_growth).max(1 << 16),
    };
    let mut out = String::with_capacity(text.len());
    expand_into(&text, &defs, 0, &mut budget, &mut out);
    out
}

pub struct LatexMacros {
    pub max_depth: usize,
    pub max_growth: usize,
}

impl Stage for LatexMacros {
    fn name(&self) -> &'static str {
        "latex-macros"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        if doc.text.contains("command") || doc.text.contains("\\def") {
            doc.text = expand_macros(&doc.text, self.max_depth, self.max_growth);
        }
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> String {
        expand_macros(s, 16, 4)
    }

    #[test]
    fn simple_and_argument_macros_are_expanded_and_definitions_removed() {
        let t = "\\newcommand{\\R}{\\mathbb{R}}\n\\newcommand\\pair[2]{(#1, #2)}\n\
                 \\def\\eps{\\varepsilon}\n\\def\\norm#1{\\|#1\\|}\n\
                 Let $x \\in \\R$, $\\pair{a}{b_1}$, $\\eps>0$, $\\norm{v}$ and $\\pair x y$.\n\\Real stays.";
        assert_eq!(
            ex(t),
            "Let $x \\in \\mathbb{R}$, $(a, b_1)$, $\\varepsilon>0$, $\\|v\\|$ and $(x, y)$.\n\\Real stays."
        );
    }

    #[test]
    fn optional_arguments_star_forms_and_renewcommand() {
        let t = "\\newcommand*{\\vect}[2][n]{#2_1,\\dots,#2_#1}\\renewcommand{\\vect}[2][n]{(#2_1..#2_#1)}\
                 $\\vect{x}$ and $\\vect[k]{y}$ and \\providecommand{\\T}{^\\top}$A\\T$";
        assert_eq!(ex(t), "$(x_1..x_n)$ and $(y_1..y_k)$ and $A^\\top$");
    }

    #[test]
    fn nested_macros_expand_and_spacing_is_kept() {
        let t = "\\newcommand{\\a}{A}\\newcommand{\\b}[1]{[\\a #1]}\\b{\\a} and \\a b.";
        assert_eq!(ex(t), "[A A] and A b.");
    }

    #[test]
    fn recursion_and_exponential_growth_are_bounded() {
        let rec = "\\def\\loop{x\\loop}\\loop end";
        let out = ex(rec);
        assert!(
            out.len() < 100 && out.starts_with("xxxx") && out.ends_with("end"),
            "{out}"
        );
        // Each level doubles: 2^40 without a budget.
        let mut t = String::from("\\def\\m0{ab}");
        for k in 1..=40 {
            t.push_str(&format!("\\def\\m{k}{{\\m{}\\m{}}}", k - 1, k - 1));
        }
        // Macro names must be letters: use letters instead of digits.
        let t = t
            .replace("\\m", "\\mac")
            .chars()
            .map(|c| {
                if c.is_ascii_digit() {
                    (b'a' + c as u8 - b'0') as char
                } else {
                    c
                }
            })
            .collect::<String>();
        let t = t + "\\macea";
        let out = expand_macros(&t, 64, 4);
        assert!(out.len() < 200_000, "{}", out.len());
    }

    #[test]
    fn structural_commands_are_not_expanded() {
        let t = "\\renewcommand\\section{\\@startsection{section}{1}}\n\\section{Intro} text";
        assert_eq!(ex(t), "\\section{Intro} text");
    }

    #[test]
    fn broken_definitions_are_left_alone() {
        for t in [
            "\\newcommand{\\x}{unclosed",
            "\\def\\x",
            "\\newcommand",
            "\\",
            "a\\\\b",
            "\\newcommand{\\x}[z]{y}\\x",
        ] {
            let _ = ex(t);
        }
        assert_eq!(
            ex("\\newcommand{\\x}{unclosed"),
            "\\newcommand{\\x}{unclosed"
        );
        assert_eq!(ex("\\newcommand{\\x}{y}\\x{"), "y{");
        assert_eq!(ex("\\newcommand{\\f}[1]{<#1>}\\f"), "\\f");
    }
}
