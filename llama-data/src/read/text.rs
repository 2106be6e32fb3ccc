//! Plain text: a whole file as one document (books), or one document per line. Also the bounded
//! line reader that the line-based formats (lines, JSONL) share.

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use super::{Documents, ReadError, ReadLimits, open, read_text_file};
use crate::document::Document;

/// The whole (decompressed) file is one document; empty (all-whitespace) files give none.
pub fn read_whole(path: PathBuf, limits: ReadLimits) -> Documents {
    let item = match read_text_file(&path, limits.max_document_bytes) {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(Ok(Document::new(path.display().to_string(), text))),
        Err(e) => Some(Err(e)),
    };
    Box::new(item.into_iter())
}

/// Each non-empty line is one document, id `file#line` (1-based, as in error locations).
pub fn read_lines(path: PathBuf, limits: ReadLimits) -> Documents {
    let file = path.display().to_string();
    Box::new(lines(&path, limits).filter_map(move |line| match line {
        Err(e) => Some(Err(e)),
        Ok((n, bytes)) => match String::from_utf8(bytes) {
            Err(e) => Some(Err(not_utf8(&file, n, e.utf8_error().valid_up_to()))),
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(Ok(Document::new(format!("{file}#{n}"), text))),
        },
    }))
}

pub(super) fn not_utf8(file: &str, line: usize, offset: usize) -> ReadError {
    ReadError::new(
        format!("{file}:{line}"),
        format!("not UTF-8 (invalid byte at column {}), skipped", offset + 1),
    )
}

/// Numbered lines of a file, or the error that ended it.
pub(super) type Lines = Box<dyn Iterator<Item = Result<(usize, Vec<u8>), ReadError>> + Send>;

/// The lines of a (decompressed) file as `(line number, bytes without the line ending)`. A line
/// over `limits.max_document_bytes` is one error and is skipped without being held in memory; a
/// read error (truncated archive, ...) is one error and ends the file.
pub(super) fn lines(path: &Path, limits: ReadLimits) -> Lines {
    let file = path.display().to_string();
    match open(path) {
        Err(e) => Box::new(std::iter::once(Err(ReadError::new(file, e)))),
        Ok(reader) => Box::new(BoundedLines {
            reader,
            file,
            limit: limits.max_document_bytes,
            line: 0,
            done: false,
        }),
    }
}

struct BoundedLines {
    reader: Box<dyn BufRead + Send>,
    file: String,
    limit: usize,
    line: usize,
    done: bool,
}

impl Iterator for BoundedLines {
    type Item = Result<(usize, Vec<u8>), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        let read = read_line_bounded(&mut self.reader, &mut line, self.limit);
        self.line += 1;
        let location = format!("{}:{}", self.file, self.line);
        match read {
            Ok(LineEnd::Newline) => Some(Ok((self.line, line))),
            Ok(LineEnd::Eof) => {
                self.done = true;
                (!line.is_empty()).then_some(Ok((self.line, line)))
            }
            Ok(LineEnd::TooLong(len)) => {
                let limit = self.limit;
                let msg = format!("line of {len} bytes is over the {limit}-byte limit, skipped");
                Some(Err(ReadError::new(location, msg)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(ReadError::new(location, format!("cannot read: {e}"))))
            }
        }
    }
}

/// How [`read_line_bounded`] stopped.
#[derive(Debug, PartialEq)]
pub(super) enum LineEnd {
    Newline,
    Eof,
    /// The line (of this many bytes) was over the limit: it was consumed, not kept.
    TooLong(u64),
}

/// Reads one line into `out` (without `\n` or `\r\n`), holding at most `limit` bytes plus one
/// buffer of the reader: a longer line is consumed chunk by chunk and dropped.
pub(super) fn read_line_bounded(
    reader: &mut dyn BufRead,
    out: &mut Vec<u8>,
    limit: usize,
) -> io::Result<LineEnd> {
    out.clear();
    let mut len: u64 = 0;
    let mut too_long = false;
    let end = loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break LineEnd::Eof;
        }
        let (chunk, used, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        len += chunk.len() as u64;
        if !too_long && len <= limit as u64 + 1 {
            // +1: a line of exactly `limit` bytes may still carry the `\r` of a CRLF ending.
            out.extend_from_slice(chunk);
        } else if !too_long {
            too_long = true;
            *out = Vec::new();
        }
        reader.consume(used);
        if found {
            break LineEnd::Newline;
        }
    };
    if out.last() == Some(&b'\r') {
        out.pop();
        len -= 1;
    }
    if too_long || out.len() > limit {
        out.clear();
        return Ok(LineEnd::TooLong(len));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn limits(max: usize) -> ReadLimits {
        ReadLimits {
            max_document_bytes: max,
        }
    }

    #[test]
    fn bounded_line_reader_splits_and_drops_long_lines() {
        let mut input = Cursor::new(b"ab\r\ncdefgh\n\nxyz".to_vec());
        let mut line = Vec::new();
        let mut got = Vec::new();
        loop {
            let end = read_line_bounded(&mut input, &mut line, 4).unwrap();
            got.push((String::from_utf8(line.clone()).unwrap(), end));
            if got.last().unwrap().1 == LineEnd::Eof {
                break;
            }
        }
        let expected = [
            ("ab", LineEnd::Newline),
            ("", LineEnd::TooLong(6)),
            ("", LineEnd::Newline),
            ("xyz", LineEnd::Eof),
        ];
        assert_eq!(got.len(), expected.len());
        for ((text, end), (want_text, want_end)) in got.iter().zip(expected) {
            assert_eq!((text.as_str(), end), (want_text, &want_end));
        }
    }

    #[test]
    fn whole_file_is_one_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "book.txt",
            "Chapter 1\n\nIt was a dark night.\n".as_bytes(),
        );
        let docs: Vec<_> = read_whole(path.clone(), ReadLimits::default()).collect();
        assert_eq!(docs.len(), 1);
        let doc = docs[0].as_ref().unwrap();
        assert_eq!(doc.id, path.display().to_string());
        assert_eq!(doc.text, "Chapter 1\n\nIt was a dark night.\n");
    }

    #[test]
    fn whole_file_bad_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.txt", b"");
        assert_eq!(read_whole(empty, ReadLimits::default()).count(), 0);
        let binary = write(dir.path(), "bin.txt", &[0x7f, b'E', b'L', b'F', 0, 0, 1, 2]);
        let err = read_whole(binary, ReadLimits::default())
            .next()
            .unwrap()
            .unwrap_err();
        assert!(err.message.contains("binary"), "{err}");
        let latin1 = write(dir.path(), "latin1.txt", b"caf\xe9 au lait");
        let err = read_whole(latin1.clone(), ReadLimits::default())
            .next()
            .unwrap()
            .unwrap_err();
        assert!(
            err.message.contains("not UTF-8") && err.location.ends_with("latin1.txt"),
            "{err}"
        );
        let big = write(dir.path(), "big.txt", &[b'a'; 100]);
        let err = read_whole(big, limits(99)).next().unwrap().unwrap_err();
        assert!(err.message.contains("limit"), "{err}");
        let missing = dir.path().join("missing.txt");
        assert!(
            read_whole(missing, ReadLimits::default())
                .next()
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn lines_skip_empty_and_report_invalid_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "l.txt",
            b"first\n\n  \nsecond\r\nbad \xff byte\nlast",
        );
        let items: Vec<_> = read_lines(path.clone(), ReadLimits::default()).collect();
        assert_eq!(items.len(), 4);
        let file = path.display().to_string();
        assert_eq!(items[0].as_ref().unwrap().text, "first");
        assert_eq!(items[0].as_ref().unwrap().id, format!("{file}#1"));
        assert_eq!(items[1].as_ref().unwrap().text, "second");
        assert_eq!(items[1].as_ref().unwrap().id, format!("{file}#4"));
        let err = items[2].as_ref().unwrap_err();
        assert_eq!(err.location, format!("{file}:5"));
        assert_eq!(items[3].as_ref().unwrap().text, "last");
    }

    #[test]
    fn a_100_mb_line_is_skipped_without_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.txt");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        f.write_all(b"before\n").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\nafter\n").unwrap();
        drop(f);
        let mut line = Vec::new();
        let mut reader = open(&path).unwrap();
        read_line_bounded(&mut reader, &mut line, 1 << 20).unwrap();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 1 << 20).unwrap(),
            LineEnd::TooLong(100 << 20)
        );
        assert!(line.is_empty());
        let items: Vec<_> = read_lines(path.clone(), limits(1 << 20)).collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().text, "before");
        let err = items[1].as_ref().unwrap_err();
        assert_eq!(err.location, format!("{}:2", path.display()));
        assert!(err.message.contains("104857600 bytes"), "{err}");
        assert_eq!(items[2].as_ref().unwrap().text, "after");
    }

    #[test]
    fn truncated_bz2_reports_then_stops() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..150_000).map(|i| format!("line number {i}\n")).collect();
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        let bytes = enc.finish().unwrap();
        let path = write(dir.path(), "cut.txt.bz2", &bytes[..bytes.len() / 2]);
        let items: Vec<_> = read_lines(path, ReadLimits::default()).collect();
        let (ok, err): (Vec<_>, Vec<_>) = items.iter().partition(|i| i.is_ok());
        assert_eq!(err.len(), 1, "one error, then the file ends");
        assert!(items.last().unwrap().is_err());
        assert!(ok.len() < 150_000);
        assert_eq!(ok[0].as_ref().unwrap().text, "line number 0");
    }

    #[test]
    fn real_books_are_whole_documents() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus/books");
        if !dir.exists() {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        }
        let files = super::super::files_under(std::slice::from_ref(&dir)).count();
        let docs: Vec<_> = super::super::documents(
            &super::super::ReaderSpec::Text,
            &[dir],
            ReadLimits::default(),
        )
        .collect();
        assert_eq!(docs.len(), files);
        let hamlet = docs
            .iter()
            .flatten()
            .find(|d| d.id.ends_with("hamlet_gut.txt"))
            .unwrap();
        assert!(hamlet.text.contains("HAMLET"));
        eprintln!(
            "books: {} files, {} documents ok",
            files,
            docs.iter().flatten().count()
        );
    }
}
