//! Deserialisation of [`CleanerSpec`]: serde's internally tagged enums accept any keys next to
//! `kind` for a unit variant (`{ kind = "none", typo = 1 }` would pass silently), so the spec is
//! read through this mirror, whose `none` carries an empty struct that denies unknown fields.
//! The settings structs deny unknown fields themselves.

use serde::Deserialize;

use super::{CleanerSpec, books, code, latex, qa, web, wikipedia};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TaggedSpec {
    None(NoSettings),
    Web(web::WebSettings),
    Wikipedia(wikipedia::WikipediaSettings),
    Code(code::CodeSettings),
    Books(books::BooksSettings),
    Latex(latex::LatexSettings),
    Qa(qa::QaSettings),
}

impl From<TaggedSpec> for CleanerSpec {
    fn from(t: TaggedSpec) -> Self {
        match t {
            TaggedSpec::None(NoSettings {}) => Self::None,
            TaggedSpec::Web(s) => Self::Web(s),
            TaggedSpec::Wikipedia(s) => Self::Wikipedia(s),
            TaggedSpec::Code(s) => Self::Code(s),
            TaggedSpec::Books(s) => Self::Books(s),
            TaggedSpec::Latex(s) => Self::Latex(s),
            TaggedSpec::Qa(s) => Self::Qa(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CleanerSpec;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize, Serialize)]
    struct Recipe {
        cleaner: CleanerSpec,
    }

    fn parse(s: &str) -> Result<CleanerSpec, String> {
        toml::from_str::<Recipe>(s)
            .map(|r| r.cleaner)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        for (kind, field) in [
            ("web", "bogus"),
            ("wikipedia", "drop_section"),
            ("code", "alowed"),
            ("books", "threshold"),
            ("latex", "x"),
            ("qa", "answers"),
            ("none", "min_words"),
        ] {
            let err = parse(&format!("cleaner = {{ kind = \"{kind}\", {field} = 1 }}"))
                .expect_err("unknown field");
            assert!(err.contains(field), "{kind}: {err}");
        }
        assert!(parse("cleaner = { kind = \"webb\" }").is_err());
    }

    #[test]
    fn settings_parse_with_defaults_and_round_trip() {
        let spec = parse("cleaner = { kind = \"web\", min_words = 3, bad_words = [\"x\"] }")
            .expect("valid");
        let CleanerSpec::Web(w) = &spec else {
            panic!("web expected, got {spec:?}");
        };
        assert_eq!(w.min_words_per_line, 3);
        assert_eq!(w.min_sentences, 3);
        assert_eq!(w.bad_words, ["x"]);
        assert_eq!(
            parse("cleaner = { kind = \"none\" }").expect("none"),
            CleanerSpec::None
        );
        let toml_text = toml::to_string(&Recipe {
            cleaner: spec.clone(),
        })
        .expect("serialise");
        assert_eq!(parse(&toml_text).expect("round trip"), spec);
        for kind in ["web", "wikipedia", "code", "books", "latex", "qa", "none"] {
            let s = parse(&format!("cleaner = {{ kind = \"{kind}\" }}")).expect(kind);
            assert!(s.pipeline().is_ok(), "{kind}");
        }
        assert!(
            parse("cleaner = { kind = \"books\", bands = 5 }")
                .expect("parses")
                .pipeline()
                .is_err()
        );
    }
}
