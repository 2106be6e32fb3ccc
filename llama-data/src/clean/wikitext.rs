//! Wikitext → plain text, in linear passes that tolerate broken markup: tags and comments, then
//! one bracket pass (templates, tables, links), then line-level markup (headings, quotes, lists,
//! external links, entities).

/// Tags whose content is not prose: removed with everything inside.
const DROP_CONTENT_TAGS: [&str; 14] = [
    "ref",
    "references",
    "math",
    "gallery",
    "timeline",
    "score",
    "imagemap",
    "syntaxhighlight",
    "source",
    "chem",
    "hiero",
    "graph",
    "templatedata",
    "mapframe",
];

/// Link namespaces removed entirely (with their captions): media, categories.
const DROP_NAMESPACES: [&str; 4] = ["file", "image", "category", "media"];

/// Bracket nesting deeper than this is flattened: bounds the copying of nested content, so the
/// pass stays linear on pathological input.
const MAX_DEPTH: usize = 64;

/// The converter's options.
#[derive(Debug, Clone)]
pub struct WikitextOptions {
    /// Lowercased titles of sections dropped with their subsections.
    pub drop_sections: Vec<String>,
    /// Keep heading titles as lines of their own (without the `=` marks).
    pub keep_headings: bool,
}

/// Plain text of a wikitext article.
pub fn to_plain_text(wikitext: &str, opts: &WikitextOptions) -> String {
    let text = strip_tags(wikitext);
    let text = strip_brackets(&text);
    lines_to_text(&text, opts)
}

/// Finds `needle` (ASCII, lowercase) case-insensitively in `hay` from `from`.
fn find_ci(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    (from..=hay.len() - needle.len()).find(|&i| {
        hay[i].to_ascii_lowercase() == first
            && hay[i..i + needle.len()].eq_ignore_ascii_case(needle)
    })
}

/// Removes HTML comments, drop-content tags with their content, and every other tag (keeping
/// inner text). A `<` that does not start a tag stays. Unclosed comments run to the end;
/// an unclosed drop-content tag only loses the tag itself.
fn strip_tags(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    // Next position of each closing tag (`None`: none after the cached search start), so that
    // many unclosed `<ref>` do not rescan the rest of the page each time.
    let mut next_close: Vec<Option<(usize, Option<usize>)>> = vec![None; DROP_CONTENT_TAGS.len()];
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = s[i..].find('<') {
        let lt = i + off;
        i = lt + 1;
        if b[lt..].starts_with(b"<!--") {
            out.push_str(&s[copied..lt]);
            let end = s[lt + 4..].find("-->").map_or(s.len(), |e| lt + 4 + e + 3);
            copied = end;
            i = end;
            continue;
        }
        let closing = b.get(lt + 1) == Some(&b'/');
        let name_start = lt + 1 + usize::from(closing);
        let name_len = b[name_start.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric())
            .count();
        if name_len == 0 || !b[name_start].is_ascii_alphabetic() {
            continue;
        }
        let after = name_start + name_len;
        if !matches!(b.get(after), Some(b'>' | b'/' | b' ' | b'\t' | b'\n')) {
            continue;
        }
        // The tag ends at the next '>' before any '<' (else it is not a tag).
        let Some(gt) = b[after..]
            .iter()
            .position(|&c| c == b'>' || c == b'<')
            .map(|p| after + p)
            .filter(|&p| b[p] == b'>')
        else {
            continue;
        };
        let self_closing = b[gt - 1] == b'/';
        let name = s[name_start..after].to_ascii_lowercase();
        out.push_str(&s[copied..lt]);
        let mut end = gt + 1;
        if let Some(t) = DROP_CONTENT_TAGS.iter().position(|&d| d == name)
            && !closing
            && !self_closing
        {
            let closer = format!("</{name}");
            let found = match next_close[t] {
                Some((from, found)) if from <= gt && found.is_none_or(|f| f > gt) => found,
                _ => find_ci(b, gt, closer.as_bytes()),
            };
            next_close[t] = Some((gt, found));
            if let Some(c) = found {
                end = b[c..]
                    .iter()
                    .position(|&x| x == b'>')
                    .map_or(b.len(), |p| c + p + 1);
            }
        } else if matches!(name.as_str(), "br" | "p" | "div" | "li" | "tr") {
            out.push('\n');
        }
        copied = end;
        i = end;
    }
    out.push_str(&s[copied..]);
    out
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Template,
    Table,
    Link,
}

/// One open bracket: its kind and the text accumulated since it opened.
struct Frame {
    kind: Kind,
    text: String,
}

/// The bracket pass: templates `{{..}}` and tables `{|..|}` are removed, internal links become
/// their anchor text, media and category links disappear. Unmatched openers and closers are
/// removed (their content stays), so broken markup degrades to its text.
fn strip_brackets(s: &str) -> String {
    let b = s.as_bytes();
    let mut root = String::with_capacity(s.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut open = [0usize; 3];
    let mut copied = 0;
    let mut i = 0;
    // Tables open and close at the start of a line: track whether the line is blank so far.
    let mut blank_line = true;
    while i + 1 < b.len() {
        let two = &b[i..i + 2];
        let line_start = blank_line;
        let tok = match two {
            b"{{" => Some((Kind::Template, true)),
            b"}}" => Some((Kind::Template, false)),
            b"[[" => Some((Kind::Link, true)),
            b"]]" => Some((Kind::Link, false)),
            b"{|" if line_start => Some((Kind::Table, true)),
            b"|}" if line_start => Some((Kind::Table, false)),
            _ => None,
        };
        let Some((kind, opening)) = tok else {
            if b[i] == b'\n' {
                blank_line = true;
            } else if !b[i].is_ascii_whitespace() {
                blank_line = false;
            }
            i += 1;
            continue;
        };
        blank_line = false;
        let top = stack.last_mut().map_or(&mut root, |f| &mut f.text);
        top.push_str(&s[copied..i]);
        copied = i + 2;
        i += 2;
        if opening {
            if stack.len() < MAX_DEPTH {
                stack.push(Frame {
                    kind,
                    text: String::new(),
                });
                open[kind as usize] += 1;
            }
            continue;
        }
        if open[kind as usize] == 0 {
            continue; // an unmatched closer is dropped
        }
        // Close frames opened inside this one that never closed: they become plain text.
        while let Some(f) = stack.pop() {
            open[f.kind as usize] -= 1;
            let parent = stack.last_mut().map_or(&mut root, |p| &mut p.text);
            if f.kind == kind {
                if kind == Kind::Link {
                    link_text(&f.text, parent);
                }
                break;
            }
            parent.push_str(&f.text);
        }
    }
    let top = stack.last_mut().map_or(&mut root, |f| &mut f.text);
    top.push_str(&s[copied..]);
    // Unclosed frames follow each other in the text: concatenate, never nest (linear).
    for f in stack {
        root.push_str(&f.text);
    }
    root
}

/// The visible text of an internal link `target|anchor` (already link-free inside).
fn link_text(inner: &str, out: &mut String) {
    let target = inner.trim_start();
    if let Some((ns, _)) = target.split_once(':') {
        let ns = ns.trim();
        // `[[fr:Paris]]`: interlanguage links are lowercase language codes.
        let is_interlanguage =
            (2..=3).contains(&ns.len()) && ns.bytes().all(|c| c.is_ascii_lowercase());
        if is_interlanguage || DROP_NAMESPACES.iter().any(|d| d.eq_ignore_ascii_case(ns)) {
            return;
        }
    }
    let target = target.strip_prefix(':').unwrap_or(target);
    match target.split_once('|') {
        Some((t, anchor)) if anchor.trim().is_empty() => {
            // The pipe trick: `[[Paris, Texas|]]` shows "Paris".
            let t = t.split([',', '(']).next().unwrap_or(t);
            out.push_str(t.trim());
        }
        Some((_, anchor)) => out.push_str(anchor),
        None => out.push_str(target.split('#').next().unwrap_or(target)),
    }
}

/// Line-level markup: headings (and boilerplate sections), lists, bold/italic quotes,
/// external links, magic words, entities, spacing.
fn lines_to_text(s: &str, opts: &WikitextOptions) -> String {
    let mut out = String::with_capacity(s.len());
    let mut dropping_level: Option<usize> = None;
    let mut buf = String::new();
    // A paragraph break before the next text line, once some text was written.
    let blank = |out: &mut String| {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
    };
    for raw in s.lines() {
        let line = raw.trim();
        if let Some((level, title)) = heading(line) {
            if dropping_level.is_some_and(|l| level > l) {
                continue;
            }
            let title = inline(title, &mut buf).trim().to_string();
            if opts
                .drop_sections
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&title))
            {
                dropping_level = Some(level);
                continue;
            }
            dropping_level = None;
            if opts.keep_headings && !title.is_empty() {
                blank(&mut out);
                out.push_str(&title);
                out.push_str("\n\n");
            }
            continue;
        }
        if dropping_level.is_some() || line.starts_with("----") {
            continue;
        }
        let line = line.trim_start_matches(['*', '#', ':', ';']);
        let text = inline(line, &mut buf);
        let text = text.trim();
        if text.is_empty() {
            blank(&mut out);
            continue;
        }
        out.push_str(text);
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

/// `== Title ==` → (2, "Title").
fn heading(line: &str) -> Option<(usize, &str)> {
    let lead = line.bytes().take_while(|&c| c == b'=').count();
    let trail = line.bytes().rev().take_while(|&c| c == b'=').count();
    if lead < 2 || trail < 2 || line.len() < lead + trail {
        return None;
    }
    let level = lead.min(trail);
    Some((level, line[level..line.len() - level].trim_matches('=')))
}

/// Inline markup of one line: `''`/`'''` runs, `[url text]`, `__MAGIC__` words, entities,
/// and runs of spaces left by removed markup. Reuses `buf`.
fn inline<'a>(line: &str, buf: &'a mut String) -> &'a str {
    buf.clear();
    let b = line.as_bytes();
    // The first ']' at or after i (within this line), cached: bounded rescans.
    let mut next_close: Option<usize> = None;
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            b'\'' if b.get(i + 1) == Some(&b'\'') => {
                buf.push_str(&line[copied..i]);
                while i < b.len() && b[i] == b'\'' {
                    i += 1;
                }
                copied = i;
            }
            b'[' if is_url_start(&b[i + 1..]) => {
                if next_close.is_none_or(|c| c < i) {
                    next_close = Some(
                        b[i..]
                            .iter()
                            .position(|&c| c == b']')
                            .map_or(b.len(), |p| i + p),
                    );
                }
                let close = next_close.unwrap_or(b.len());
                buf.push_str(&line[copied..i]);
                if close == b.len() {
                    // Unterminated: only the bracket goes.
                    i += 1;
                    copied = i;
                    continue;
                }
                if let Some((_, label)) = line[i + 1..close].split_once(' ') {
                    buf.push_str(label.trim());
                }
                i = close + 1;
                copied = i;
            }
            b'_' if b[i..].starts_with(b"__") => {
                let word = b[i + 2..]
                    .iter()
                    .take_while(|c| c.is_ascii_uppercase())
                    .count();
                if word > 0 && b[i + 2 + word..].starts_with(b"__") {
                    buf.push_str(&line[copied..i]);
                    i += word + 4;
                    copied = i;
                } else {
                    i += 2;
                }
            }
            b'&' => {
                if let Some((decoded, len)) = entity(&line[i..]) {
                    buf.push_str(&line[copied..i]);
                    buf.push(decoded);
                    i += len;
                    copied = i;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    buf.push_str(&line[copied..]);
    collapse_spaces(buf);
    buf.as_str()
}

fn is_url_start(b: &[u8]) -> bool {
    ["http://", "https://", "ftp://", "//", "mailto:", "news:"]
        .iter()
        .any(|p| b.len() >= p.len() && b[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
}

/// Common HTML entities of wikitext: named ones and numeric `&#..;`.
fn entity(s: &str) -> Option<(char, usize)> {
    let end = s.bytes().take(12).position(|c| c == b';')?;
    let name = &s[1..end];
    let c = match name {
        "nbsp" | "thinsp" | "ensp" | "emsp" => ' ',
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "ndash" => '–',
        "mdash" => '—',
        "minus" => '−',
        "times" => '×',
        "hellip" => '…',
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((c, end + 1))
}

/// Collapses runs of spaces and removes the empty parentheses left by removed templates.
fn collapse_spaces(s: &mut String) {
    if !s.contains("  ")
        && !s.contains("()")
        && !s.contains("( )")
        && !s.contains(" ,")
        && !s.contains(" .")
    {
        return;
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ' ' && out.ends_with(' ') {
            continue;
        }
        if c == ')' && (out.ends_with('(') || out.ends_with("( ")) {
            let keep = out.trim_end_matches(' ').len() - 1;
            out.truncate(keep);
            continue;
        }
        if (c == ',' || c == '.') && out.ends_with(' ') && !out.trim_end().is_empty() {
            out.pop();
        }
        out.push(c);
    }
    *s = out;
}
