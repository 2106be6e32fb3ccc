//! The `license-header` stage: the paper removes "boilerplate, such as headers" from GitHub
//! files; the most common is the licence comment block at the top of a file.

use super::Stage;
use crate::document::Document;

/// Words that make a leading comment licence boilerplate (matched lowercase).
const LICENSE_WORDS: [&str; 8] = [
    "copyright",
    "licensed under",
    "permission is hereby granted",
    "spdx-license-identifier",
    "all rights reserved",
    "redistribution and use",
    "gnu general public license",
    "license for the specific language",
];

/// Line-comment markers a header may use.
const LINE_COMMENTS: [&str; 5] = ["//", "#", "--", ";;", "%"];

/// The byte length of the comment block at the start of `text` (after a `#!` line), with the
/// blank lines that follow it, and where it starts; `None` when the file starts with code.
fn leading_comment(text: &str) -> Option<(usize, usize)> {
    let start = if text.starts_with("#!") {
        text.find('\n').map_or(text.len(), |i| i + 1)
    } else {
        0
    };
    let body = &text[start..];
    let trimmed = body.trim_start();
    let lead = body.len() - trimmed.len();
    let mut end = if let Some(rest) = trimmed.strip_prefix("/*") {
        lead + 2 + rest.find("*/")? + 2
    } else if let Some(rest) = trimmed.strip_prefix("<!--") {
        lead + 4 + rest.find("-->")? + 3
    } else if let Some(rest) = trimmed.strip_prefix("\"\"\"") {
        lead + 3 + rest.find("\"\"\"")? + 3
    } else {
        // Consecutive line comments.
        let mut end = 0;
        for line in body.split_inclusive('\n') {
            let t = line.trim_start();
            let is_comment = LINE_COMMENTS.iter().any(|m| {
                t.strip_prefix(m).is_some_and(|r| {
                    !m.starts_with('#')
                        || r.is_empty()
                        || r.starts_with([' ', '\t', '\n', '\r', '#'])
                })
            });
            if !is_comment && !t.trim().is_empty() {
                break;
            }
            if t.trim().is_empty() && end == 0 {
                end += line.len();
                continue;
            }
            if !is_comment {
                break;
            }
            end += line.len();
        }
        if end == 0 {
            return None;
        }
        end
    };
    // Swallow the blank lines after the block.
    while let Some(line) = body[end..].split_inclusive('\n').next() {
        if !line.trim().is_empty() {
            break;
        }
        end += line.len();
    }
    Some((start, start + end))
}

/// `text` without its leading licence comment, if it has one.
pub fn strip_license_header(text: &str) -> Option<String> {
    let (start, end) = leading_comment(text)?;
    let block = text[start..end].to_lowercase();
    if !LICENSE_WORDS.iter().any(|w| block.contains(w)) {
        return None;
    }
    Some(format!("{}{}", &text[..start], &text[end..]))
}

pub struct LicenseHeader;

impl Stage for LicenseHeader {
    fn name(&self) -> &'static str {
        "license-header"
    }

    fn apply(&mut self, mut doc: Document) -> Option<Document> {
        if let Some(t) = strip_license_header(&doc.text) {
            doc.text = t;
        }
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(t: &str) -> String {
        LicenseHeader
            .apply(Document::new("f", t))
            .map(|d| d.text)
            .unwrap_or_default()
    }

    #[test]
    fn block_comment_licences_are_removed() {
        let t = "/*\n * Copyright (c) 2020 Someone\n * Licensed under the MIT license.\n */\n\n#include <stdio.h>\nint main() { return 0; }\n";
        assert_eq!(strip(t), "#include <stdio.h>\nint main() { return 0; }\n");
    }

    #[test]
    fn line_comment_licences_are_removed_after_a_shebang() {
        let t = "#!/usr/bin/env python\n# SPDX-License-Identifier: Apache-2.0\n#\n# Copyright 2021 X\n\nimport os\n# a comment\n";
        assert_eq!(strip(t), "#!/usr/bin/env python\nimport os\n# a comment\n");
        let rs = "// Copyright 2019 The Authors. All rights reserved.\n// Use of this source code is governed by a BSD-style license.\nfn main() {}\n";
        assert_eq!(strip(rs), "fn main() {}\n");
    }

    #[test]
    fn other_leading_comments_and_code_stay() {
        for t in [
            "// Parses the config file.\nfn parse() {}\n",
            "/* A small helper. */\nint x;\n",
            "#include <stdio.h>\n/* Copyright 2020 */\n",
            "/* Copyright never closed\nint x;\n",
            "",
            "#!/bin/sh\n",
        ] {
            assert_eq!(strip(t), t);
        }
    }
}
