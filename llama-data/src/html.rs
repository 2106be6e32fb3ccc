//! Placeholder: being written.
/// Visible text of an HTML page or fragment.
pub fn to_text(html: &str) -> String { html.to_string() }
