//! SPDX licence expressions (`MIT OR Apache-2.0`, `(MIT AND BSD-3-Clause) OR GPL-2.0 WITH
//! Classpath-exception-2.0`) and the `license` stage: keep code that may be used under
//! permissive licences only, as the paper keeps "Apache, BSD and MIT" projects.

use super::Stage;
use crate::document::Document;

/// A parsed expression. `WITH` binds tighter than `AND`, which binds tighter than `OR`.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    License(String),
    With(String, String),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Parentheses nested deeper than this are an error (bounded recursion on hostile input).
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Open,
    Close,
    And,
    Or,
    With,
    Id(&'a str),
}

fn tokenize(s: &str) -> Result<Vec<Tok<'_>>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'(' => out.push(Tok::Open),
            b')' => out.push(Tok::Close),
            c if c.is_ascii_whitespace() => {}
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'+' | b':') => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'-' | b'.' | b'+' | b':'))
                {
                    i += 1;
                }
                let w = &s[start..i];
                out.push(match w {
                    _ if w.eq_ignore_ascii_case("and") => Tok::And,
                    _ if w.eq_ignore_ascii_case("or") => Tok::Or,
                    _ if w.eq_ignore_ascii_case("with") => Tok::With,
                    _ => Tok::Id(w),
                });
                continue;
            }
            _ => return Err(format!("unexpected character at byte {i}")),
        }
        i += 1;
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok<'a>> {
        self.toks.get(self.pos)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, String> {
        let mut left = self.and(depth)?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, String> {
        let mut left = self.with(depth)?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.with(depth)?));
        }
        Ok(left)
    }

    fn with(&mut self, depth: usize) -> Result<Expr, String> {
        let base = self.atom(depth)?;
        if self.peek() != Some(&Tok::With) {
            return Ok(base);
        }
        self.pos += 1;
        match (base, self.peek().cloned()) {
            (Expr::License(l), Some(Tok::Id(exc))) => {
                self.pos += 1;
                Ok(Expr::With(l, exc.to_string()))
            }
            _ => Err("WITH needs a licence and an exception".into()),
        }
    }

    fn atom(&mut self, depth: usize) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some(Tok::Id(id)) => {
                self.pos += 1;
                Ok(Expr::License(id.to_string()))
            }
            Some(Tok::Open) if depth < MAX_DEPTH => {
                self.pos += 1;
                let e = self.or(depth + 1)?;
                if self.peek() != Some(&Tok::Close) {
                    return Err("unclosed parenthesis".into());
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Open) => Err("parentheses nested too deep".into()),
            other => Err(format!("expected a licence, found {other:?}")),
        }
    }
}

impl Expr {
    pub fn parse(s: &str) -> Result<Expr, String> {
        let mut p = Parser {
            toks: tokenize(s)?,
            pos: 0,
        };
        let e = p.or(0)?;
        if p.pos != p.toks.len() {
            return Err(format!("unexpected {:?}", p.toks[p.pos]));
        }
        Ok(e)
    }

    /// Whether some choice of the `OR` branches uses only licences of `allowed` (compared
    /// case-insensitively; `X+` "or later" counts as `X`; `X WITH e` is allowed when `X` is,
    /// since an exception only adds permissions, or when the whole `X WITH e` is listed).
    pub fn satisfiable_with(&self, allowed: &[String]) -> bool {
        let ok = |id: &str| {
            let id = id.strip_suffix('+').unwrap_or(id);
            allowed.iter().any(|a| a.eq_ignore_ascii_case(id))
        };
        match self {
            Expr::License(l) => ok(l),
            Expr::With(l, e) => ok(l) || ok(&format!("{l} WITH {e}")),
            Expr::And(a, b) => a.satisfiable_with(allowed) && b.satisfiable_with(allowed),
            Expr::Or(a, b) => a.satisfiable_with(allowed) || b.satisfiable_with(allowed),
        }
    }
}

/// The `license` stage: reads `meta.license`.
pub struct LicenseFilter {
    allowed: Vec<String>,
    keep_unknown: bool,
}

impl LicenseFilter {
    pub fn new(allowed: Vec<String>, keep_unknown: bool) -> Self {
        Self {
            allowed,
            keep_unknown,
        }
    }

    /// `Some(verdict)` for a parseable expression, `None` when missing or unparseable.
    pub fn verdict(&self, license: Option<&str>) -> Option<bool> {
        let e = Expr::parse(license?.trim()).ok()?;
        Some(e.satisfiable_with(&self.allowed))
    }
}

impl Stage for LicenseFilter {
    fn name(&self) -> &'static str {
        "license"
    }

    fn apply(&mut self, doc: Document) -> Option<Document> {
        let keep = self
            .verdict(doc.meta_str("license"))
            .unwrap_or(self.keep_unknown);
        keep.then_some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        ["MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause"]
            .map(String::from)
            .to_vec()
    }

    fn sat(s: &str) -> bool {
        Expr::parse(s).expect("parses").satisfiable_with(&allowed())
    }

    #[test]
    fn parses_with_precedence() {
        let e = Expr::parse("MIT OR GPL-3.0 AND BSD-3-Clause").expect("parses");
        assert_eq!(
            e,
            Expr::Or(
                Box::new(Expr::License("MIT".into())),
                Box::new(Expr::And(
                    Box::new(Expr::License("GPL-3.0".into())),
                    Box::new(Expr::License("BSD-3-Clause".into()))
                ))
            )
        );
        assert!(Expr::parse("MIT OR").is_err());
        assert!(Expr::parse("(MIT").is_err());
        assert!(Expr::parse("MIT GPL-3.0").is_err());
        assert!(Expr::parse("").is_err());
        assert!(Expr::parse("MIT/GPL").is_err());
        assert!(Expr::parse(&"(".repeat(10_000)).is_err());
    }

    #[test]
    fn satisfiability() {
        assert!(sat("MIT"));
        assert!(sat("mit"));
        assert!(sat("MIT OR GPL-3.0"));
        assert!(!sat("MIT AND GPL-3.0"));
        assert!(!sat("GPL-3.0-only"));
        assert!(sat("(GPL-2.0 OR MIT) AND (Apache-2.0 OR LGPL-2.1)"));
        assert!(!sat("(GPL-2.0 OR MIT) AND (LGPL-2.1 OR MPL-2.0)"));
        assert!(sat("Apache-2.0 WITH LLVM-exception"));
        assert!(!sat("GPL-2.0 WITH Classpath-exception-2.0"));
        assert!(sat("Apache-2.0+"));
        assert!(!sat("LicenseRef-proprietary OR NOASSERTION"));
    }

    #[test]
    fn stage_keeps_permissive_and_drops_unknown_by_default() {
        let mut s = LicenseFilter::new(allowed(), false);
        let doc = |l: Option<&str>| {
            let d = Document::new("f.rs", "fn main() {}");
            match l {
                Some(l) => d.with_meta("license", l),
                None => d,
            }
        };
        assert!(s.apply(doc(Some("MIT OR GPL-3.0"))).is_some());
        assert!(s.apply(doc(Some("MIT AND GPL-3.0"))).is_none());
        assert!(s.apply(doc(None)).is_none());
        assert!(s.apply(doc(Some("((("))).is_none());
        let mut lenient = LicenseFilter::new(allowed(), true);
        assert!(lenient.apply(doc(None)).is_some());
        assert!(
            lenient.apply(doc(Some("GPL-3.0"))).is_none(),
            "known and not allowed"
        );
    }
}
