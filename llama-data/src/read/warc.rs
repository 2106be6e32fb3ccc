//! WARC 1.0/1.1 files (CommonCrawl WARC and WET): web pages as text.
//!
//! `conversion` records (WET) are already text; `response` records holding an HTTP response with
//! an HTML body are turned into text with [`crate::html::to_text`]. Each record's block is read
//! by its Content-Length, so memory is bounded by the largest record kept.

use std::io::{BufRead, Read};
use std::path::PathBuf;

use super::text::{LineEnd, read_line_bounded};
use super::{Documents, ReadError, ReadLimits, open};
use crate::document::Document;

/// Longest header line accepted; real ones are under a few KiB.
const MAX_HEADER_LINE: usize = 64 << 10;
/// Most header lines in one record (WARC or HTTP).
const MAX_HEADER_LINES: usize = 1000;

/// Documents of the WARC (or WET) file at `path`; id `file#n`, n the 0-based record number;
/// meta `url` (WARC-Target-URI), `record_id`, `warc_type`.
pub fn read(path: PathBuf, limits: ReadLimits) -> Documents {
    let file = path.display().to_string();
    match open(&path) {
        Err(e) => Box::new(std::iter::once(Err(ReadError::new(file, e)))),
        Ok(input) => Box::new(Records {
            input,
            file,
            limit: limits.max_document_bytes,
            record: 0,
            done: false,
        }),
    }
}

struct Records {
    input: Box<dyn BufRead + Send>,
    file: String,
    limit: usize,
    record: usize,
    done: bool,
}

/// Header fields in order, names as written (compared case-insensitively).
type Headers = Vec<(String, String)>;

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Iterator for Records {
    type Item = Result<Document, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let n = self.record;
            let location = format!("{}#{n}", self.file);
            match self.next_record() {
                Ok(None) => self.done = true,
                Ok(Some((headers, block))) => {
                    self.record += 1;
                    if let Some(item) = to_document(&location, &headers, &block) {
                        return Some(item);
                    }
                }
                Err(Skip::Record(message)) => {
                    self.record += 1;
                    return Some(Err(ReadError::new(location, message)));
                }
                Err(Skip::File(message)) => {
                    // Record boundaries are lost: nothing after this point can be trusted.
                    self.done = true;
                    return Some(Err(ReadError::new(location, message)));
                }
            }
        }
        None
    }
}

enum Skip {
    /// This record is bad; the next one can still be found.
    Record(String),
    /// The file cannot be read further.
    File(String),
}

impl Records {
    /// The next record's WARC headers and block; `None` at a clean end of file.
    fn next_record(&mut self) -> Result<Option<(Headers, Vec<u8>)>, Skip> {
        let mut line = Vec::new();
        // Records are separated by blank lines; tolerate any number of them.
        loop {
            match read_line_bounded(&mut self.input, &mut line, MAX_HEADER_LINE) {
                Ok(LineEnd::Eof) if line.is_empty() => return Ok(None),
                Ok(LineEnd::TooLong(_)) => {
                    return Err(Skip::File("not a WARC file (no version line)".into()));
                }
                Ok(_) if line.is_empty() => continue,
                Ok(_) => break,
                Err(e) => return Err(Skip::File(format!("cannot read: {e}"))),
            }
        }
        if !line.starts_with(b"WARC/") {
            let shown = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
            return Err(Skip::File(format!(
                "expected a WARC version line, found {shown:?}"
            )));
        }
        let headers = read_headers(&mut self.input).map_err(Skip::File)?;
        let length: u64 = header(&headers, "Content-Length")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Skip::File("record without a valid Content-Length".into()))?;
        if length > self.limit as u64 {
            // Skip the block without holding it; the next record is still reachable.
            let skipped = std::io::copy(&mut (&mut self.input).take(length), &mut std::io::sink())
                .map_err(|e| Skip::File(format!("cannot read: {e}")))?;
            if skipped < length {
                return Err(Skip::File(format!(
                    "truncated record: {skipped} of {length} bytes"
                )));
            }
            return Err(Skip::Record(format!(
                "record of {length} bytes is over the {}-byte limit, skipped",
                self.limit
            )));
        }
        let mut block = Vec::with_capacity(length as usize);
        (&mut self.input)
            .take(length)
            .read_to_end(&mut block)
            .map_err(|e| Skip::File(format!("cannot read: {e}")))?;
        if (block.len() as u64) < length {
            return Err(Skip::File(format!(
                "truncated record: {} of {length} bytes",
                block.len()
            )));
        }
        Ok(Some((headers, block)))
    }
}

/// `Name: value` lines up to an empty line (WARC header or HTTP header block).
fn read_headers(input: &mut dyn BufRead) -> Result<Headers, String> {
    let mut headers = Headers::new();
    let mut line = Vec::new();
    for _ in 0..MAX_HEADER_LINES {
        match read_line_bounded(input, &mut line, MAX_HEADER_LINE) {
            Err(e) => return Err(format!("cannot read: {e}")),
            Ok(LineEnd::TooLong(n)) => return Err(format!("header line of {n} bytes")),
            Ok(LineEnd::Eof) if line.is_empty() => {
                return Err("truncated record: file ends in its header".into());
            }
            Ok(_) if line.is_empty() => return Ok(headers),
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        match text.split_once(':') {
            Some((name, value)) => {
                headers.push((name.trim().to_string(), value.trim().to_string()))
            }
            // A continuation line (obsolete folding) belongs to the previous value.
            None if text.starts_with([' ', '\t']) => {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(text.trim());
                }
            }
            None => return Err(format!("malformed header line {text:?}")),
        }
    }
    Err(format!("more than {MAX_HEADER_LINES} header lines"))
}

/// The document of a record, an error for a bad kept record, `None` for records not kept.
fn to_document(
    location: &str,
    headers: &Headers,
    block: &[u8],
) -> Option<Result<Document, ReadError>> {
    let kind = header(headers, "WARC-Type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let text = match kind.as_str() {
        "conversion" => match std::str::from_utf8(block) {
            Ok(text) => text.to_string(),
            Err(e) => {
                return Some(Err(ReadError::new(
                    location,
                    format!("not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
                )));
            }
        },
        "response" => match http_html_text(block) {
            Ok(Some(text)) => text,
            Ok(None) => return None,
            Err(message) => return Some(Err(ReadError::new(location, message))),
        },
        _ => return None,
    };
    if text.trim().is_empty() {
        return None;
    }
    let url = header(headers, "WARC-Target-URI").unwrap_or("");
    // WARC 1.0 writers (wget) wrap the URI in angle brackets; 1.1 does not.
    let url = url
        .strip_prefix('<')
        .and_then(|u| u.strip_suffix('>'))
        .unwrap_or(url);
    let mut doc = Document::new(location, text)
        .with_meta("url", url)
        .with_meta("warc_type", kind);
    if let Some(id) = header(headers, "WARC-Record-ID") {
        doc = doc.with_meta("record_id", id);
    }
    Some(Ok(doc))
}

/// The visible text of an HTTP response block if it is a successful HTML page; `Ok(None)` for
/// other responses (errors, redirects, images...), `Err` for HTML that cannot be decoded as UTF-8.
fn http_html_text(block: &[u8]) -> Result<Option<String>, String> {
    let mut input = block;
    let mut status = Vec::new();
    if read_line_bounded(&mut input, &mut status, MAX_HEADER_LINE).is_err()
        || !status.starts_with(b"HTTP/")
    {
        return Ok(None);
    }
    let code = String::from_utf8_lossy(&status)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    if !code.is_some_and(|c| (200..300).contains(&c)) {
        return Ok(None);
    }
    let headers = read_headers(&mut input).map_err(|e| format!("HTTP headers: {e}"))?;
    let content_type = header(&headers, "Content-Type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut body = input.to_vec();
    if header(&headers, "Transfer-Encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body).ok_or("malformed chunked body")?;
    }
    match header(&headers, "Content-Encoding")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("identity") | Some("") => {}
        Some("gzip") | Some("x-gzip") => {
            body = inflate(flate2::read::MultiGzDecoder::new(&body[..]), block.len())?
        }
        Some("deflate") => body = inflate(flate2::read::ZlibDecoder::new(&body[..]), block.len())?,
        Some(other) => return Err(format!("unsupported Content-Encoding {other:?}")),
    }
    let is_html = if content_type.is_empty() {
        sniff_html(&body)
    } else {
        content_type.contains("text/html") || content_type.contains("application/xhtml")
    };
    if !is_html {
        return Ok(None);
    }
    let charset = charset_of(&content_type).or_else(|| meta_charset(&body));
    let utf8_compatible = charset
        .as_deref()
        .is_none_or(|c| matches!(c, "utf-8" | "utf8" | "us-ascii" | "ascii"));
    // A page labelled with another charset is still readable when it is pure ASCII.
    if !utf8_compatible && !body.is_ascii() {
        return Err(format!(
            "charset {} is not UTF-8, skipped",
            charset.unwrap_or_default()
        ));
    }
    let html = std::str::from_utf8(&body).map_err(|e| {
        format!(
            "HTML not UTF-8 (invalid byte at offset {}), skipped",
            e.valid_up_to()
        )
    })?;
    Ok(Some(crate::html::to_text(html)))
}

/// Decompresses a Content-Encoding, refusing output past a generous multiple of the record size.
fn inflate(decoder: impl Read, record_len: usize) -> Result<Vec<u8>, String> {
    let cap = (record_len as u64).saturating_mul(20).max(1 << 20);
    let mut out = Vec::new();
    decoder
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad compressed body: {e}"))?;
    if out.len() as u64 > cap {
        return Err("compressed body expands too much, skipped".into());
    }
    Ok(out)
}

/// Decodes an HTTP/1.1 chunked body: `size[;ext]\r\n data \r\n` ... `0\r\n`.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let end = body.iter().position(|&b| b == b'\n')?;
        let size_line = std::str::from_utf8(&body[..end]).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        body = &body[end + 1..];
        if size == 0 {
            return Some(out);
        }
        // wget keeps bodies cut short by the connection: take what is there.
        let take = size.min(body.len());
        out.extend_from_slice(&body[..take]);
        body = &body[take..];
        if body.is_empty() {
            return Some(out);
        }
        body = body
            .strip_prefix(b"\r\n")
            .or_else(|| body.strip_prefix(b"\n"))
            .unwrap_or(body);
    }
}

fn charset_of(content_type: &str) -> Option<String> {
    let (_, rest) = content_type.split_once("charset=")?;
    let value = rest.split(';').next()?.trim().trim_matches(['"', '\'']);
    Some(value.to_ascii_lowercase()).filter(|v| !v.is_empty())
}

/// The charset a page declares in a `<meta>` within its first 4 KiB.
fn meta_charset(body: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_ascii_lowercase();
    let at = head.find("<meta")?;
    let meta = &head[at..];
    let (_, rest) = meta.split_once("charset=")?;
    let value: String = rest
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
        .collect();
    Some(value).filter(|v| !v.is_empty())
}

fn sniff_html(body: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&body[..body.len().min(1024)]).to_ascii_lowercase();
    let head = head.trim_start_matches('\u{feff}').trim_start();
    head.starts_with("<!doctype html") || head.starts_with("<html") || head.contains("<html")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    fn record(kind: &str, uri: &str, block: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "WARC/1.1\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {uri}\r\nWARC-Record-ID: <urn:uuid:{kind}-{}>\r\nContent-Length: {}\r\n\r\n",
            block.len(),
            block.len()
        )
        .into_bytes();
        out.extend_from_slice(block);
        out.extend_from_slice(b"\r\n\r\n");
        out
    }

    fn http(headers: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 200 OK\r\n{headers}\r\n").into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn read_bytes(
        bytes: &[u8],
        name: &str,
        limits: ReadLimits,
    ) -> Vec<Result<Document, ReadError>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        read(path, limits).collect()
    }

    const PAGE: &[u8] = b"<html><head><title>t</title><script>x()</script></head><body><nav>Menu</nav><p>Hello &amp; welcome.</p></body></html>";

    fn sample() -> Vec<u8> {
        let mut warc = record("warcinfo", "", b"software: test\r\n");
        warc.extend(record("request", "http://a/", b"GET / HTTP/1.1\r\n\r\n"));
        warc.extend(record(
            "response",
            "http://a/",
            &http("Content-Type: text/html; charset=UTF-8\r\n", PAGE),
        ));
        warc.extend(record("metadata", "http://a/", b"fetchTimeMs: 1\r\n"));
        warc.extend(record(
            "conversion",
            "http://b/",
            "Plain WET text, d\u{e9}j\u{e0} vu.\n".as_bytes(),
        ));
        let (c1, c2) = ("<html><body><p>Chunked ", "page.</p>");
        let chunked = format!(
            "{:x}\r\n{c1}\r\n{:x};ext=1\r\n{c2}\r\n0\r\n\r\n",
            c1.len(),
            c2.len()
        );
        let chunked = http(
            "Content-Type: text/html\r\nTransfer-Encoding: chunked\r\n",
            chunked.as_bytes(),
        );
        warc.extend(record("response", "<http://c/>", &chunked));
        warc.extend(record(
            "response",
            "http://d/",
            &http("Content-Type: image/png\r\n", b"\x89PNG\x00"),
        ));
        warc.extend(record(
            "response",
            "http://e/",
            &http(
                "Content-Type: text/html; charset=iso-8859-1\r\n",
                b"<p>caf\xe9</p>",
            ),
        ));
        warc.extend(record(
            "response",
            "http://f/",
            &http(
                "Content-Type: text/html; charset=windows-1252\r\n",
                b"<p>plain ascii</p>",
            ),
        ));
        warc.extend(record(
            "response",
            "http://g/",
            &http("", b"<!DOCTYPE html><p>Sniffed</p>"),
        ));
        warc
    }

    #[test]
    fn keeps_html_responses_and_conversions() {
        let items = read_bytes(&sample(), "s.warc", ReadLimits::default());
        assert_eq!(items.len(), 6, "{items:?}");
        let a = items[0].as_ref().unwrap();
        assert_eq!(a.text, "Hello & welcome.");
        assert_eq!(a.meta_str("url"), Some("http://a/"));
        assert_eq!(a.meta_str("warc_type"), Some("response"));
        assert!(a.id.ends_with("s.warc#2"));
        assert!(
            a.meta_str("record_id")
                .unwrap()
                .starts_with("<urn:uuid:response")
        );
        let b = items[1].as_ref().unwrap();
        assert_eq!(
            (b.text.as_str(), b.meta_str("url")),
            ("Plain WET text, déjà vu.\n", Some("http://b/"))
        );
        let c = items[2].as_ref().unwrap();
        assert_eq!(
            (c.text.as_str(), c.meta_str("url")),
            ("Chunked page.", Some("http://c/"))
        );
        let e = items[3].as_ref().unwrap_err();
        assert!(
            e.location.ends_with("s.warc#7") && e.message.contains("iso-8859-1"),
            "{e}"
        );
        assert_eq!(items[4].as_ref().unwrap().text, "plain ascii");
        assert_eq!(items[5].as_ref().unwrap().text, "Sniffed");
    }

    #[test]
    fn gzip_members_and_oversized_records() {
        let mut gz = Vec::new();
        for chunk in sample().chunks(100) {
            // One gzip member per piece, as CommonCrawl writes one per record.
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(chunk).unwrap();
            gz.extend(enc.finish().unwrap());
        }
        assert_eq!(
            read_bytes(&gz, "s.warc.gz", ReadLimits::default())
                .iter()
                .flatten()
                .count(),
            5
        );
        let items = read_bytes(
            &sample(),
            "s.warc",
            ReadLimits {
                max_document_bytes: 60,
            },
        );
        assert!(
            items
                .iter()
                .any(|i| i.as_ref().is_err_and(|e| e.message.contains("limit")))
        );
        let kept: Vec<_> = items.iter().flatten().map(|d| d.text.as_str()).collect();
        assert_eq!(
            kept,
            ["Plain WET text, déjà vu.\n", "Sniffed"],
            "only the small records fit"
        );
    }

    #[test]
    fn truncated_and_bad_files() {
        let warc = sample();
        let cut = &warc[..warc.len() - 30];
        let items = read_bytes(cut, "cut.warc", ReadLimits::default());
        assert_eq!(
            items.iter().flatten().count(),
            4,
            "the records before the cut"
        );
        let last = items.last().unwrap().as_ref().unwrap_err();
        assert!(
            last.message.contains("truncated") && last.location.ends_with("cut.warc#9"),
            "{last}"
        );
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        enc.write_all(&warc.repeat(20)).unwrap();
        let bz = enc.finish().unwrap();
        let items = read_bytes(&bz[..bz.len() / 2], "cut.warc.bz2", ReadLimits::default());
        let last = items.last().unwrap().as_ref().unwrap_err();
        assert!(
            last.message.contains("cannot read") || last.message.contains("truncated"),
            "{last}"
        );
        assert!(items.iter().flatten().count() < 20 * 5);
        assert!(read_bytes(b"", "empty.warc", ReadLimits::default()).is_empty());
        let binary = read_bytes(
            &[0u8, 1, 2, 255, 254, 10, 0],
            "bin.warc",
            ReadLimits::default(),
        );
        assert_eq!(binary.len(), 1);
        assert!(
            binary[0]
                .as_ref()
                .unwrap_err()
                .message
                .contains("WARC version")
        );
        let no_length = read_bytes(
            b"WARC/1.0\r\nWARC-Type: conversion\r\n\r\nabc",
            "nl.warc",
            ReadLimits::default(),
        );
        assert!(
            no_length[0]
                .as_ref()
                .unwrap_err()
                .message
                .contains("Content-Length")
        );
        let bad_utf8 = read_bytes(
            &record("conversion", "u", b"caf\xe9"),
            "u.warc",
            ReadLimits::default(),
        );
        assert!(
            bad_utf8[0]
                .as_ref()
                .unwrap_err()
                .message
                .contains("not UTF-8")
        );
    }

    #[test]
    fn real_warc_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus/web");
        let files = [
            dir.join("sample-0000.warc.gz"),
            dir.join("sample-0001.warc.gz"),
        ];
        if !files.iter().all(|f| f.exists()) {
            eprintln!("skipped: WARC files under {} are absent", dir.display());
            return;
        }
        let items: Vec<_> = files
            .iter()
            .flat_map(|f| read(f.clone(), ReadLimits::default()))
            .collect();
        let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let docs: Vec<_> = items.into_iter().map(Result::unwrap).collect();
        // 37 responses, all HTML with status 200 (3 text/plain resources are not responses).
        assert_eq!(docs.len(), 37);
        let cc = docs
            .iter()
            .find(|d| d.meta_str("url") == Some("https://creativecommons.org/"))
            .unwrap();
        assert!(
            cc.text.contains("Creative Commons"),
            "{}",
            &cc.text[..cc.text.len().min(500)]
        );
        assert!(
            docs.iter()
                .all(|d| !d.text.contains("<div") && !d.text.contains("function("))
        );
        for d in &docs {
            eprintln!(
                "{} {} chars: {:?}",
                d.meta_str("url").unwrap(),
                d.text.len(),
                &d.text.chars().take(80).collect::<String>()
            );
        }
    }
}
