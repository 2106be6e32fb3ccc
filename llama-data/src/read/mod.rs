//! Readers: turn the files of a source into a stream of [`Document`]s.
//!
//! Each format lives in its own file. Every reader streams (memory bounded by the largest
//! document), decompresses `.gz`, `.bz2` and `.zst` by extension, walks folders in sorted order
//! (so runs are deterministic) and reports a bad file or record as a [`ReadError`] naming it,
//! then carries on with the next record or file: bad input never panics and never stops a source.

mod code;
mod jsonl;
mod latex;
mod mediawiki;
mod stackexchange;
mod text;
mod warc;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::document::Document;

pub use code::detect_license;

/// How to read a source's files (the `reader` table of a recipe source).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ReaderSpec {
    /// Each file is one document.
    Text,
    /// Each non-empty line is one document.
    Lines,
    /// One JSON object per line; `text_field` is the text, every other field goes to `meta`.
    Jsonl {
        #[serde(default = "default_text_field")]
        text_field: String,
    },
    /// A MediaWiki XML export: articles (namespace 0), redirects skipped, raw wikitext.
    Mediawiki,
    /// WARC files: `conversion` (WET) records as they are, HTML `response` records as text.
    Warc,
    /// A tree of source files; `meta.license` holds the SPDX expression found for each file, if any.
    Code {
        /// File extensions to read (without the dot); empty means the built-in list of languages.
        #[serde(default)]
        extensions: Vec<String>,
    },
    /// A tree of LaTeX sources (`.tex`), one document per file.
    Latex,
    /// A StackExchange `Posts.xml` dump: one document per question, its answers in `meta.answers`
    /// as `[{"text", "score"}]`.
    Stackexchange,
}

fn default_text_field() -> String {
    "text".to_string()
}

/// Limits that keep a reader's memory bounded whatever the input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadLimits {
    /// Larger documents (and larger JSONL lines) are reported and skipped.
    pub max_document_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_document_bytes: 32 << 20,
        }
    }
}

/// A file or record that could not be read; the stream goes on without it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadError {
    /// The file, with `:line` or `#record` where it is known.
    pub location: String,
    pub message: String,
}

impl ReadError {
    pub fn new(location: impl Into<String>, message: impl ToString) -> Self {
        Self {
            location: location.into(),
            message: message.to_string(),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// The items a reader yields.
pub type ReadItem = Result<Document, ReadError>;
/// A boxed document stream.
pub type Documents = Box<dyn Iterator<Item = ReadItem> + Send>;

/// All documents of `paths` (files or folders) read as `spec` says, in a deterministic order.
pub fn documents(spec: &ReaderSpec, paths: &[PathBuf], limits: ReadLimits) -> Documents {
    match spec {
        // Trees are walked by their readers, which need the tree root (license files, macros).
        ReaderSpec::Code { extensions } => {
            code::read_trees(paths.to_vec(), extensions.clone(), limits)
        }
        ReaderSpec::Latex => latex::read_trees(paths.to_vec(), limits),
        _ => {
            let spec = spec.clone();
            let files = files_under(paths);
            Box::new(files.flat_map(move |file| -> Documents {
                match file {
                    Err(e) => Box::new(std::iter::once(Err(e))),
                    Ok(path) => {
                        warn_if_empty(path.display().to_string(), read_file(&spec, path, limits))
                    }
                }
            }))
        }
    }
}

/// A file that yields nothing at all (empty, or holding no record of the format) is reported, so
/// that a wrong path or format does not pass silently.
fn warn_if_empty(location: String, docs: Documents) -> Documents {
    let mut docs = docs.peekable();
    if docs.peek().is_none() {
        return Box::new(std::iter::once(Err(ReadError::new(
            location,
            "no documents (empty file, or nothing of this format in it)",
        ))));
    }
    Box::new(docs)
}

fn read_file(spec: &ReaderSpec, path: PathBuf, limits: ReadLimits) -> Documents {
    match spec {
        ReaderSpec::Text => text::read_whole(path, limits),
        ReaderSpec::Lines => text::read_lines(path, limits),
        ReaderSpec::Jsonl { text_field } => jsonl::read(path, text_field.clone(), limits),
        ReaderSpec::Mediawiki => mediawiki::read(path, limits),
        ReaderSpec::Warc => warc::read(path, limits),
        ReaderSpec::Stackexchange => stackexchange::read(path, limits),
        ReaderSpec::Code { .. } | ReaderSpec::Latex => unreachable!("trees are read by read_trees"),
    }
}

/// Every regular file under `paths`, folders walked recursively in sorted order, hidden entries
/// (`.git`, ...) skipped. A missing path is one error.
pub fn files_under(
    paths: &[PathBuf],
) -> impl Iterator<Item = Result<PathBuf, ReadError>> + Send + use<> {
    let paths = paths.to_vec();
    paths.into_iter().flat_map(|root| {
        walkdir::WalkDir::new(&root)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(move |entry| match entry {
                Ok(e) if e.file_type().is_file() => Some(Ok(e.into_path())),
                Ok(_) => None,
                Err(e) => Some(Err(ReadError::new(root.display().to_string(), e))),
            })
    })
}

/// Opens a file, decompressing by extension (`.gz`, `.bz2`, `.zst`/`.zstd`).
pub fn open(path: &Path) -> std::io::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let inner: Box<dyn Read + Send> = match ext {
        "gz" => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        "bz2" => Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(file))),
        "zst" | "zstd" => Box::new(zstd::stream::read::Decoder::new(file)?),
        _ => Box::new(file),
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, inner)))
}

/// The file name without a compression extension: `a.jsonl.gz` → `a.jsonl`.
pub fn logical_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".gz", ".bz2", ".zst", ".zstd"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    name
}

/// Reads the whole (decompressed) file as UTF-8, refusing files over `limit` bytes and binary
/// files (a NUL byte in the first 8 KiB), with messages a user can act on.
pub fn read_text_file(path: &Path, limit: usize) -> Result<String, ReadError> {
    let loc = || path.display().to_string();
    let mut reader = open(path).map_err(|e| ReadError::new(loc(), e))?;
    let mut bytes = Vec::new();
    let n = reader
        .by_ref()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::new(loc(), format!("cannot read: {e}")))?;
    if n > limit {
        return Err(ReadError::new(
            loc(),
            format!("larger than the {limit}-byte document limit, skipped"),
        ));
    }
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return Err(ReadError::new(loc(), "binary file (NUL bytes), skipped"));
    }
    String::from_utf8(bytes).map_err(|e| {
        ReadError::new(
            loc(),
            format!(
                "not UTF-8 (invalid byte at offset {}), skipped",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}
