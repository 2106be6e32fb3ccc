//! HTML → visible text, for web pages (WARC reader) and Q&A bodies (qa cleaner).
//!
//! Parsing and rendering are html2text's (an html5ever parser, so broken real-world markup is
//! handled as browsers do, entities decoded, `script`/`style`/`head` dropped, block elements on
//! their own lines). Before rendering we prune the boilerplate elements it would otherwise keep
//! (navigation, footers, forms, hidden parts); after it we normalise whitespace.

use html2text::{Element, Handle};

/// Elements whose whole content is page furniture rather than the page's text.
const BOILERPLATE: &[&str] = &[
    "nav", "footer", "aside", "noscript", "template", "svg", "math", "canvas", "iframe", "object",
    "embed", "form", "button", "select", "datalist", "dialog", "menu", "script", "style", "head",
];

/// Wrap width for the renderer: wide enough that no real paragraph is re-wrapped.
const WIDTH: usize = 1 << 20;

/// Visible text of an HTML page or fragment: boilerplate dropped, entities decoded, one line per
/// block, runs of spaces collapsed, at most one empty line in a row. Never fails: input that the
/// renderer rejects gives the empty string (there is then no text worth keeping).
pub fn to_text(html: &str) -> String {
    // The trivial decorator adds no markup of its own (no `#` before headings, `*` before items).
    let config = html2text::config::with_decorator(html2text::render::TrivialDecorator::new())
        .raw_mode(true)
        .allow_width_overflow();
    let Ok(dom) = config.parse_html(html.as_bytes()) else {
        return String::new();
    };
    prune(&dom.document);
    let rendered = config
        .dom_to_render_tree(&dom)
        .and_then(|tree| config.render_to_string(tree, WIDTH))
        .unwrap_or_default();
    tidy(&rendered)
}

fn is_hidden(node: &Handle) -> bool {
    let Element { name, attrs, .. } = &node.data else {
        return false;
    };
    if BOILERPLATE.contains(&&*name.local) {
        return true;
    }
    attrs.borrow().iter().any(|a| {
        let value = a.value.trim().to_ascii_lowercase();
        match &*a.name.local {
            "hidden" => true,
            "aria-hidden" => value == "true",
            "role" => matches!(
                value.as_str(),
                "navigation" | "banner" | "contentinfo" | "search"
            ),
            "style" => value.replace(' ', "").contains("display:none"),
            _ => false,
        }
    })
}

/// Removes boilerplate subtrees. Iterative: real pages nest deep enough to overflow a recursion.
fn prune(root: &Handle) {
    let mut stack = vec![root.clone()];
    while let Some(node) = stack.pop() {
        let mut children = node.children.borrow_mut();
        children.retain(|c| !is_hidden(c));
        stack.extend(children.iter().cloned());
    }
}

/// Trims each line, collapses inner runs of whitespace, keeps at most one empty line in a row and
/// none at either end.
fn tidy(rendered: &str) -> String {
    let mut out = String::with_capacity(rendered.len());
    let mut blank_pending = false;
    for line in rendered.lines() {
        let mut words = line.split_whitespace().peekable();
        if words.peek().is_none() {
            blank_pending = !out.is_empty();
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_pending { "\n\n" } else { "\n" });
        }
        blank_pending = false;
        for (i, word) in words.enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(word);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_scripts_styles_head_and_navigation() {
        let html = "<html><head><title>T</title><style>p{color:red}</style></head><body>\
            <nav><a href='/'>Home</a> <a href='/x'>About</a></nav>\
            <script>var x = 1;</script><h1>Heading</h1><p>First   paragraph\n with  text.</p>\
            <div hidden>secret</div><div style='display: none'>also secret</div>\
            <footer>Copyright 2024</footer></body></html>";
        let text = to_text(html);
        assert_eq!(text, "Heading\n\nFirst paragraph with text.");
    }

    #[test]
    fn decodes_entities_and_breaks_blocks() {
        let text = to_text(
            "<p>Fish &amp; chips &lt;3 &eacute;t&#233; &#x263A;</p><p>two</p>line<br>break",
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines, ["Fish & chips <3 été ☺", "two", "line", "break"]);
    }

    #[test]
    fn lists_and_tables_keep_their_text() {
        let text = to_text(
            "<ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td></tr></table>",
        );
        for word in ["one", "two", "a", "b"] {
            assert!(
                text.lines().any(|l| l.contains(word)),
                "{word} missing from {text:?}"
            );
        }
        assert!(!text.contains('<'));
    }

    #[test]
    fn fragments_plain_text_and_garbage_do_not_fail() {
        assert_eq!(to_text("just text"), "just text");
        assert_eq!(to_text(""), "");
        assert_eq!(to_text("<<<>>> </div></p>"), "<<<>>>");
        let deep = "<div>".repeat(20_000) + "deep" + &"</div>".repeat(20_000);
        assert_eq!(to_text(&deep), "deep");
    }

    #[test]
    fn long_paragraphs_are_not_rewrapped() {
        let words = "word ".repeat(2_000);
        let text = to_text(&format!("<p>{words}</p>"));
        assert_eq!(text.lines().count(), 1);
        assert_eq!(text.split(' ').count(), 2_000);
    }
}
