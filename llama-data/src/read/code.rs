//! Source trees (the GitHub part of the mix): one document per source file, with its language and,
//! where it can be determined, the SPDX license expression that governs it (the paper keeps only
//! Apache, BSD and MIT code; the code cleaner filters on `meta.license`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Documents, ReadError, ReadLimits, files_under, open, read_text_file};
use crate::document::Document;

/// Extension → language, for the built-in list of source files read when none are given.
#[rustfmt::skip]
const LANGUAGES: &[(&str, &str)] = &[
    ("py", "Python"), ("rs", "Rust"), ("c", "C"), ("h", "C"), ("cc", "C++"), ("cpp", "C++"),
    ("cxx", "C++"), ("hpp", "C++"), ("hh", "C++"), ("java", "Java"), ("js", "JavaScript"),
    ("mjs", "JavaScript"), ("ts", "TypeScript"), ("tsx", "TypeScript"), ("go", "Go"), ("rb", "Ruby"),
    ("php", "PHP"), ("cs", "C#"), ("scala", "Scala"), ("kt", "Kotlin"), ("swift", "Swift"),
    ("sh", "Shell"), ("bash", "Shell"), ("lua", "Lua"), ("pl", "Perl"), ("pm", "Perl"), ("r", "R"),
    ("jl", "Julia"), ("hs", "Haskell"), ("ml", "OCaml"), ("mli", "OCaml"), ("m", "Objective-C"),
    ("dart", "Dart"), ("ex", "Elixir"), ("exs", "Elixir"), ("erl", "Erlang"), ("clj", "Clojure"),
    ("f90", "Fortran"), ("sql", "SQL"), ("zig", "Zig"), ("nim", "Nim"), ("vue", "Vue"),
];

/// How many lines of a file may hold its `SPDX-License-Identifier:` tag.
const SPDX_LINES: usize = 30;

/// Every source file under `roots` (sorted walk, hidden entries skipped) with one of `extensions`
/// (the built-in list when empty), one document each (empty files give none): id = path, meta `language`, `path` (relative
/// to its root) and `license` when found.
pub fn read_trees(roots: Vec<PathBuf>, extensions: Vec<String>, limits: ReadLimits) -> Documents {
    let extensions: Vec<String> = if extensions.is_empty() {
        LANGUAGES.iter().map(|(e, _)| e.to_string()).collect()
    } else {
        extensions
            .into_iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .collect()
    };
    Box::new(roots.into_iter().flat_map(move |root| {
        // License files are looked for from each file up to its tree root, never above it.
        let top = if root.is_file() {
            root.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            root.clone()
        };
        let mut finder = LicenseFinder::new(Some(top.clone()));
        let extensions = extensions.clone();
        files_under(std::slice::from_ref(&root)).filter_map(move |file| {
            let path = match file {
                Ok(path) => path,
                Err(e) => return Some(Err(e)),
            };
            let ext = path.extension()?.to_str()?.to_ascii_lowercase();
            if !extensions.contains(&ext) {
                return None;
            }
            read_source(&path, &ext, &top, &mut finder, limits).transpose()
        })
    }))
}

/// The document of one source file; `None` for an empty one.
fn read_source(
    path: &Path,
    ext: &str,
    top: &Path,
    finder: &mut LicenseFinder,
    limits: ReadLimits,
) -> Result<Option<Document>, ReadError> {
    let text = read_text_file(path, limits.max_document_bytes)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let language = LANGUAGES
        .iter()
        .find(|(e, _)| *e == ext)
        .map_or(ext, |(_, l)| *l);
    let relative = path.strip_prefix(top).unwrap_or(path);
    let mut doc = Document::new(path.display().to_string(), text)
        .with_meta("language", language)
        .with_meta("path", relative.display().to_string());
    if let Some(license) =
        spdx_tag(path).or_else(|| path.parent().and_then(|dir| finder.for_dir(dir)))
    {
        doc = doc.with_meta("license", license);
    }
    Ok(Some(doc))
}

/// The SPDX expression that governs `file`, if one can be determined: its own
/// `SPDX-License-Identifier:` tag, else the nearest enclosing manifest or license file, looked for
/// up to the repository root (a folder holding `.git`) or the file system root.
pub fn detect_license(file: &Path) -> Option<String> {
    spdx_tag(file).or_else(|| LicenseFinder::new(None).for_dir(file.parent()?))
}

/// The `SPDX-License-Identifier:` tag in the first lines of a file.
fn spdx_tag(file: &Path) -> Option<String> {
    let mut reader = open(file).ok()?;
    let mut line = Vec::new();
    for _ in 0..SPDX_LINES {
        match super::text::read_line_bounded(&mut reader, &mut line, 4096) {
            Ok(super::text::LineEnd::Eof) if line.is_empty() => return None,
            Err(_) => return None,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        if let Some((_, rest)) = text.split_once("SPDX-License-Identifier:") {
            let value = rest
                .trim()
                .trim_end_matches("*/")
                .trim_end_matches("-->")
                .trim_end_matches("*)")
                .trim_end_matches("-}")
                .trim();
            let value = value.trim_matches(['"', '\'', ',']).trim();
            if !value.is_empty() {
                return Some(value.to_string());
            }
        }
    }
    None
}

/// Finds the license of folders, remembering each folder's own finding (a walk meets each folder
/// once, but asks for it once per file).
struct LicenseFinder {
    /// Folders above this one are not searched.
    top: Option<PathBuf>,
    own: HashMap<PathBuf, Option<String>>,
}

impl LicenseFinder {
    fn new(top: Option<PathBuf>) -> Self {
        Self {
            top,
            own: HashMap::new(),
        }
    }

    /// The license found in `dir` or the nearest folder above it.
    fn for_dir(&mut self, dir: &Path) -> Option<String> {
        let mut dir = Some(dir);
        while let Some(d) = dir {
            if let Some(found) = self.own_license(d) {
                return Some(found);
            }
            let at_top = match &self.top {
                Some(top) => d == top.as_path() || !d.starts_with(top),
                None => d.join(".git").exists(),
            };
            if at_top {
                return None;
            }
            dir = d.parent().filter(|p| !p.as_os_str().is_empty());
        }
        None
    }

    fn own_license(&mut self, dir: &Path) -> Option<String> {
        if let Some(found) = self.own.get(dir) {
            return found.clone();
        }
        let found = license_in(dir);
        self.own.insert(dir.to_path_buf(), found.clone());
        found
    }
}

/// The license declared by a manifest in `dir`, else recognised in its license files.
fn license_in(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let has = |name: &str| names.iter().any(|n| n == name);
    let declared = [
        ("Cargo.toml", cargo_license as fn(&Path) -> Option<String>),
        ("package.json", npm_license),
        ("pyproject.toml", pyproject_license),
    ];
    for (manifest, read) in declared {
        if has(manifest)
            && let Some(found) = read(&dir.join(manifest))
        {
            return Some(found);
        }
    }
    // LICENSE-MIT + LICENSE-APACHE is the usual dual license: every recognised file is an option.
    let mut found: Vec<&'static str> = Vec::new();
    for name in names.iter().filter(|n| is_license_file(n)) {
        let Ok(text) = read_text_file(&dir.join(name), 1 << 20) else {
            continue;
        };
        for id in recognise(&text) {
            if !found.contains(&id) {
                found.push(id);
            }
        }
    }
    found.sort_by_key(|id| if *id == "MIT" { 0 } else { 1 });
    (!found.is_empty()).then(|| found.join(" OR "))
}

fn is_license_file(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let stem = upper.split('.').next().unwrap_or("");
    ["LICENSE", "LICENCE", "COPYING", "UNLICENSE"]
        .iter()
        .any(|p| {
            stem == *p || stem.starts_with(&format!("{p}-")) || stem.starts_with(&format!("{p}_"))
        })
}

/// Cargo's legacy `MIT/Apache-2.0` is `MIT OR Apache-2.0` in SPDX.
fn normalise(expression: &str) -> String {
    expression
        .split('/')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn cargo_license(manifest: &Path) -> Option<String> {
    let value: toml::Value = toml::from_str(&read_text_file(manifest, 1 << 20).ok()?).ok()?;
    match value.get("package")?.get("license")? {
        toml::Value::String(s) => Some(normalise(s)),
        // `license.workspace = true`: the workspace root above declares it.
        toml::Value::Table(t)
            if t.get("workspace").and_then(toml::Value::as_bool) == Some(true) =>
        {
            manifest.parent()?.ancestors().skip(1).find_map(|dir| {
                let root: toml::Value =
                    toml::from_str(&read_text_file(&dir.join("Cargo.toml"), 1 << 20).ok()?).ok()?;
                root.get("workspace")?
                    .get("package")?
                    .get("license")?
                    .as_str()
                    .map(normalise)
            })
        }
        _ => None,
    }
}

fn npm_license(manifest: &Path) -> Option<String> {
    let value: serde_json::Value =
        serde_json::from_str(&read_text_file(manifest, 1 << 20).ok()?).ok()?;
    let license = value.get("license")?;
    license
        .as_str()
        .or_else(|| license.get("type")?.as_str())
        .map(str::to_string)
}

fn pyproject_license(manifest: &Path) -> Option<String> {
    let value: toml::Value = toml::from_str(&read_text_file(manifest, 1 << 20).ok()?).ok()?;
    let license = value
        .get("project")
        .and_then(|p| p.get("license"))
        .or_else(|| value.get("tool")?.get("poetry")?.get("license"))?;
    match license {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Table(t) => {
            if let Some(text) = t.get("text").and_then(toml::Value::as_str) {
                // Short texts are identifiers ("MIT"); long ones are the license itself.
                return if text.len() < 40 {
                    Some(text.to_string())
                } else {
                    recognise(text).first().map(|s| s.to_string())
                };
            }
            let file = manifest.parent()?.join(t.get("file")?.as_str()?);
            recognise(&read_text_file(&file, 1 << 20).ok()?)
                .first()
                .map(|s| s.to_string())
        }
        _ => None,
    }
}

/// SPDX identifiers of the licenses whose wording a license file contains. A GPL text does not
/// say whether later versions apply: it is reported as `-only`.
fn recognise(text: &str) -> Vec<&'static str> {
    let t = text
        .to_ascii_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let has = |s: &str| t.contains(s);
    // The PSF file also quotes older Python licenses and a BSD-style one: it is one license.
    if has("python software foundation license") || has("psf license agreement") {
        return vec!["PSF-2.0"];
    }
    let mut ids = Vec::new();
    if has("apache license") && has("version 2.0") {
        ids.push("Apache-2.0");
    }
    if has("gnu affero general public license") {
        ids.push("AGPL-3.0-only");
    } else if has("gnu lesser general public license") {
        ids.push(if has("version 3") {
            "LGPL-3.0-only"
        } else {
            "LGPL-2.1-only"
        });
    } else if has("gnu general public license") {
        ids.push(if has("version 3") {
            "GPL-3.0-only"
        } else {
            "GPL-2.0-only"
        });
    }
    if has("mozilla public license") && has("2.0") {
        ids.push("MPL-2.0");
    }
    if has("this is free and unencumbered software released into the public domain") {
        ids.push("Unlicense");
    }
    if has("boost software license") {
        ids.push("BSL-1.0");
    }
    if has("cc0 1.0 universal") {
        ids.push("CC0-1.0");
    }
    if has("permission is hereby granted, free of charge, to any person obtaining a copy") {
        ids.push("MIT");
    } else if has(
        "permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is hereby granted",
    ) {
        ids.push("ISC");
    }
    if has("redistribution and use in source and binary forms") {
        ids.push(
            if has("neither the name") || has("names of its contributors") {
                "BSD-3-Clause"
            } else {
                "BSD-2-Clause"
            },
        );
    }
    if has("altered source versions must be plainly marked as such") {
        ids.push("Zlib");
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("mitcrate/src/nested")).unwrap();
        fs::write(
            root.join("mitcrate/Cargo.toml"),
            "[package]\nname = \"a\"\nlicense = \"MIT/Apache-2.0\"\n",
        )
        .unwrap();
        fs::write(root.join("mitcrate/src/lib.rs"), "pub fn a() {}\n").unwrap();
        fs::write(
            root.join("mitcrate/src/nested/deep.rs"),
            "// SPDX-License-Identifier: BSD-3-Clause */\nfn b() {}\n",
        )
        .unwrap();
        fs::write(root.join("mitcrate/src/data.bin"), [0u8, 1, 2]).unwrap();
        fs::create_dir_all(root.join("pyproj/pkg")).unwrap();
        fs::write(root.join("pyproj/LICENSE-MIT"), "Permission is hereby granted, free of charge, to any person obtaining a copy\nof this software").unwrap();
        fs::write(
            root.join("pyproj/LICENSE-APACHE"),
            "Apache License\n Version 2.0, January 2004",
        )
        .unwrap();
        fs::write(root.join("pyproj/pkg/mod.py"), "print('hi')\n").unwrap();
        fs::write(root.join("pyproj/pkg/latin1.py"), b"# caf\xe9\n").unwrap();
        fs::create_dir_all(root.join("bsd/.git")).unwrap();
        fs::write(root.join("bsd/.git/hidden.c"), "int x;").unwrap();
        fs::write(root.join("bsd/COPYING"), "Redistribution and use in source and binary forms, with or without\nmodification, are permitted. Neither the name of the copyright holder").unwrap();
        fs::write(root.join("bsd/main.c"), "int main() { return 0; }\n").unwrap();
        fs::create_dir_all(root.join("none")).unwrap();
        fs::write(root.join("none/x.go"), "package x\n").unwrap();
        fs::write(root.join("none/empty.js"), "").unwrap();
        dir
    }

    #[test]
    fn walks_sorted_with_language_and_license() {
        let dir = tree();
        let items: Vec<_> = read_trees(
            vec![dir.path().to_path_buf()],
            vec![],
            ReadLimits::default(),
        )
        .collect();
        let summary: Vec<(String, Option<String>)> = items
            .iter()
            .flatten()
            .map(|d| {
                (
                    d.meta_str("path").unwrap().to_string(),
                    d.meta_str("license").map(str::to_string),
                )
            })
            .collect();
        let expected = [
            ("bsd/main.c", Some("BSD-3-Clause")),
            ("mitcrate/src/lib.rs", Some("MIT OR Apache-2.0")),
            ("mitcrate/src/nested/deep.rs", Some("BSD-3-Clause")),
            ("none/x.go", None),
            ("pyproj/pkg/mod.py", Some("MIT OR Apache-2.0")),
        ];
        let expected: Vec<(String, Option<String>)> = expected
            .iter()
            .map(|(p, l)| (p.to_string(), l.map(str::to_string)))
            .collect();
        assert_eq!(summary, expected);
        let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].location.ends_with("latin1.py") && errors[0].message.contains("not UTF-8")
        );
        let rust = items
            .iter()
            .flatten()
            .find(|d| d.id.ends_with("lib.rs"))
            .unwrap();
        assert_eq!(
            (rust.meta_str("language"), rust.text.as_str()),
            (Some("Rust"), "pub fn a() {}\n")
        );
    }

    #[test]
    fn extensions_filter_and_single_file_root() {
        let dir = tree();
        let only_py: Vec<_> = read_trees(
            vec![dir.path().to_path_buf()],
            vec![".py".into()],
            ReadLimits::default(),
        )
        .collect();
        assert_eq!(only_py.len(), 2);
        let one = dir.path().join("bsd/main.c");
        let docs: Vec<_> = read_trees(vec![one.clone()], vec![], ReadLimits::default()).collect();
        assert_eq!(docs.len(), 1);
        assert_eq!(
            docs[0].as_ref().unwrap().meta_str("license"),
            Some("BSD-3-Clause")
        );
        let missing: Vec<_> =
            read_trees(vec![dir.path().join("nope")], vec![], ReadLimits::default()).collect();
        assert!(missing.len() == 1 && missing[0].is_err());
    }

    #[test]
    fn detect_license_stops_at_the_repository_root() {
        let dir = tree();
        assert_eq!(
            detect_license(&dir.path().join("bsd/main.c")).as_deref(),
            Some("BSD-3-Clause")
        );
        assert_eq!(
            detect_license(&dir.path().join("mitcrate/src/nested/deep.rs")).as_deref(),
            Some("BSD-3-Clause")
        );
        assert_eq!(
            detect_license(&dir.path().join("pyproj/pkg/mod.py")).as_deref(),
            Some("MIT OR Apache-2.0")
        );
        fs::create_dir_all(dir.path().join("repo/.git")).unwrap();
        fs::write(dir.path().join("repo/a.py"), "x = 1\n").unwrap();
        fs::write(
            dir.path().join("LICENSE"),
            "Permission is hereby granted, free of charge, to any person obtaining a copy",
        )
        .unwrap();
        assert_eq!(
            detect_license(&dir.path().join("repo/a.py")),
            None,
            "the LICENSE above the repository is not its own"
        );
    }

    #[test]
    fn recognises_license_wording() {
        assert_eq!(
            recognise("GNU LESSER GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007"),
            ["LGPL-3.0-only"]
        );
        assert_eq!(
            recognise("GNU GENERAL PUBLIC LICENSE Version 2, June 1991"),
            ["GPL-2.0-only"]
        );
        assert_eq!(
            recognise(
                "Permission to use, copy, modify, and/or distribute this software for any\npurpose with or without fee is hereby granted"
            ),
            ["ISC"]
        );
        assert_eq!(
            recognise(
                "Redistribution and use in source and binary forms, with or without modification"
            ),
            ["BSD-2-Clause"]
        );
        assert!(recognise("All rights reserved.").is_empty());
    }

    #[test]
    fn real_cargo_registry_and_python() {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let serde = fs::read_dir(home.join(".cargo/registry/src"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|index| fs::read_dir(index.path()).into_iter().flatten().flatten())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("serde-1."))
            });
        match serde {
            None => eprintln!("skipped: no serde crate in the cargo registry"),
            Some(serde) => {
                assert_eq!(
                    detect_license(&serde.join("src/lib.rs")).as_deref(),
                    Some("MIT OR Apache-2.0")
                );
                let docs: Vec<_> = read_trees(
                    vec![serde.clone()],
                    vec!["rs".into()],
                    ReadLimits::default(),
                )
                .collect();
                assert!(docs.len() >= 5);
                assert!(
                    docs.iter()
                        .flatten()
                        .all(|d| d.meta_str("license") == Some("MIT OR Apache-2.0"))
                );
            }
        }
        let python = Path::new("/usr/lib/python3.11");
        if !python.join("LICENSE.txt").exists() {
            eprintln!("skipped: {} is absent", python.display());
            return;
        }
        assert_eq!(
            detect_license(&python.join("json/__init__.py")).as_deref(),
            Some("PSF-2.0")
        );
        let docs: Vec<_> = read_trees(
            vec![python.to_path_buf()],
            vec!["py".into()],
            ReadLimits::default(),
        )
        .collect();
        let licensed = docs
            .iter()
            .flatten()
            .filter(|d| d.meta_str("license") == Some("PSF-2.0"))
            .count();
        eprintln!(
            "python3.11: {} files, {licensed} PSF-2.0, {} errors",
            docs.len(),
            docs.iter().filter(|d| d.is_err()).count()
        );
        assert!(licensed > 100);
    }

    /// `cargo test -p llama-data registry_license_census -- --ignored --nocapture`: licenses of
    /// every Rust file of the local cargo registry.
    #[test]
    #[ignore]
    fn registry_license_census() {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let roots: Vec<PathBuf> = fs::read_dir(home.join(".cargo/registry/src"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let (mut files, mut errors) = (0, 0);
        for item in read_trees(roots, vec!["rs".into()], ReadLimits::default()) {
            match item {
                Ok(doc) => {
                    files += 1;
                    *counts
                        .entry(doc.meta_str("license").unwrap_or("(none)").to_string())
                        .or_default() += 1;
                }
                Err(_) => errors += 1,
            }
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        eprintln!(
            "{files} files, {errors} errors: {:?}",
            &counts[..counts.len().min(15)]
        );
        assert!(files > 0);
    }
}
