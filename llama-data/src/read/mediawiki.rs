//! MediaWiki XML exports (Wikipedia dumps): one document per article, raw wikitext.
//!
//! Streams with quick-xml, holding one page at a time. Articles are pages in namespace 0 that are
//! not redirects; the text is the last revision in the page (exports list revisions oldest first).

use std::io::BufRead;
use std::path::PathBuf;

use quick_xml::Reader;
use quick_xml::events::Event;

use super::{Documents, ReadError, ReadLimits, open};
use crate::document::Document;

/// Articles of the export at `path`, id `file:title`, meta `title` and `page_id`.
pub fn read(path: PathBuf, limits: ReadLimits) -> Documents {
    let file = path.display().to_string();
    match open(&path) {
        Err(e) => Box::new(std::iter::once(Err(ReadError::new(file, e)))),
        Ok(input) => {
            let mut reader = Reader::from_reader(input);
            reader.config_mut().trim_text(false);
            Box::new(Pages {
                reader,
                file,
                limit: limits.max_document_bytes,
                buf: Vec::new(),
                done: false,
            })
        }
    }
}

struct Pages {
    reader: Reader<Box<dyn BufRead + Send>>,
    file: String,
    limit: usize,
    buf: Vec<u8>,
    done: bool,
}

/// The fields of the page being read.
#[derive(Default)]
struct Page {
    title: String,
    ns: Option<String>,
    id: Option<String>,
    redirect: bool,
    text: String,
    too_large: bool,
}

/// Which element's text is being collected.
#[derive(Clone, Copy, PartialEq)]
enum Field {
    None,
    Title,
    Ns,
    PageId,
    Text,
}

impl Iterator for Pages {
    type Item = Result<Document, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.next_page() {
                Ok(Some(page)) => {
                    if let Some(item) = self.to_item(page) {
                        return Some(item);
                    }
                }
                Ok(None) => self.done = true,
                Err(message) => {
                    // The XML is broken or the archive truncated: nothing after it can be trusted.
                    self.done = true;
                    let at = self.reader.buffer_position();
                    return Some(Err(ReadError::new(
                        self.file.clone(),
                        format!("{message} (near byte {at})"),
                    )));
                }
            }
        }
        None
    }
}

impl Pages {
    /// Reads up to the end of the next `<page>`; `None` at the end of the file.
    fn next_page(&mut self) -> Result<Option<Page>, String> {
        let mut page: Option<Page> = None;
        let mut field = Field::None;
        // Depth inside <page>: its own <id> is at depth 1 (revision and contributor ids are deeper).
        let mut depth = 0usize;
        loop {
            self.buf.clear();
            let event = self
                .reader
                .read_event_into(&mut self.buf)
                .map_err(|e| e.to_string())?;
            match event {
                Event::Eof => {
                    return match page {
                        Some(_) => Err("file ends inside a <page>".to_string()),
                        None => Ok(None),
                    };
                }
                Event::Start(e) => {
                    let name = e.local_name();
                    let name = name.as_ref();
                    if name == b"page" {
                        page = Some(Page::default());
                        depth = 0;
                        continue;
                    }
                    let Some(page) = page.as_mut() else { continue };
                    depth += 1;
                    field = match (name, depth) {
                        (b"title", 1) => Field::Title,
                        (b"ns", 1) => Field::Ns,
                        (b"id", 1) => Field::PageId,
                        (b"text", _) => {
                            // A later revision replaces an earlier one.
                            page.text.clear();
                            page.too_large = false;
                            Field::Text
                        }
                        _ => Field::None,
                    };
                }
                Event::Empty(e) => {
                    if let Some(page) = page.as_mut() {
                        match e.local_name().as_ref() {
                            b"redirect" => page.redirect = true,
                            b"text" => page.text.clear(),
                            _ => {}
                        }
                    }
                }
                Event::End(e) => {
                    if e.local_name().as_ref() == b"page" {
                        return Ok(page);
                    }
                    depth = depth.saturating_sub(1);
                    field = Field::None;
                }
                Event::Text(t) => {
                    if let Some(page) = page.as_mut().filter(|_| field != Field::None) {
                        let text = t.unescape().map_err(|e| e.to_string())?;
                        append(page, field, &text, self.limit);
                    }
                }
                Event::CData(c) => {
                    if let Some(page) = page.as_mut().filter(|_| field != Field::None) {
                        let text = c.decode().map_err(|e| e.to_string())?;
                        append(page, field, &text, self.limit);
                    }
                }
                _ => {}
            }
        }
    }
}

fn append(page: &mut Page, field: Field, text: &str, limit: usize) {
    match field {
        Field::Title => page.title.push_str(text),
        Field::Ns => page.ns.get_or_insert_with(String::new).push_str(text),
        Field::PageId => page.id.get_or_insert_with(String::new).push_str(text),
        Field::Text if page.too_large || page.text.len() + text.len() > limit => {
            page.too_large = true;
            page.text = String::new();
        }
        Field::Text => page.text.push_str(text),
        Field::None => {}
    }
}

impl Pages {
    /// The document of an article page; `None` for other namespaces, redirects and empty pages.
    fn to_item(&self, page: Page) -> Option<Result<Document, ReadError>> {
        // Exports older than 0.6 have no <ns>: their pages are taken as articles.
        if page.ns.as_deref().is_some_and(|ns| ns.trim() != "0") || page.redirect {
            return None;
        }
        let id = format!("{}:{}", self.file, page.title);
        if page.too_large {
            return Some(Err(ReadError::new(
                id,
                format!("text over the {}-byte limit, skipped", self.limit),
            )));
        }
        let head = page.text.trim_start();
        if head
            .get(..9)
            .is_some_and(|h| h.eq_ignore_ascii_case("#redirect"))
            || head.is_empty()
        {
            return None;
        }
        let mut doc = Document::new(id, page.text).with_meta("title", page.title);
        if let Some(page_id) = page.id {
            doc = doc.with_meta("page_id", page_id.trim());
        }
        Some(Ok(doc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    const EXPORT: &str = r#"<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page>
    <title>Redirected</title><ns>0</ns><id>1</id>
    <redirect title="Target" />
    <revision><id>11</id><text xml:space="preserve">#REDIRECT [[Target]]</text></revision>
  </page>
  <page>
    <title>Anarchism</title><ns>0</ns><id>12</id>
    <revision><id>100</id><contributor><username>X</username><id>99</id></contributor>
      <text xml:space="preserve">old text</text></revision>
    <revision><id>101</id><text xml:space="preserve">'''Anarchism''' is a [[political philosophy]] &amp; movement &lt;ref&gt;.</text></revision>
  </page>
  <page>
    <title>Talk:Anarchism</title><ns>1</ns><id>13</id>
    <revision><id>102</id><text xml:space="preserve">Discussion</text></revision>
  </page>
  <page>
    <title>Sneaky</title><ns>0</ns><id>14</id>
    <revision><id>103</id><text xml:space="preserve">  #redirect [[Elsewhere]]</text></revision>
  </page>
  <page>
    <title>Blanked</title><ns>0</ns><id>15</id>
    <revision><id>104</id><text xml:space="preserve" /></revision>
  </page>
  <page>
    <title>Autism</title><ns>0</ns><id>25</id>
    <revision><id>105</id><text xml:space="preserve">Autism is a [[neurodevelopmental condition]].</text></revision>
  </page>
</mediawiki>
"#;

    fn read_str(dir: &Path, name: &str, bytes: &[u8], limits: ReadLimits) -> Vec<ReadItem> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        read(path, limits).collect()
    }
    use super::super::ReadItem;

    fn bz2(bytes: &[u8]) -> Vec<u8> {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn articles_only_latest_revision_unescaped() {
        let dir = tempfile::tempdir().unwrap();
        let items = read_str(
            dir.path(),
            "wiki.xml.bz2",
            &bz2(EXPORT.as_bytes()),
            ReadLimits::default(),
        );
        let docs: Vec<_> = items.into_iter().map(Result::unwrap).collect();
        let titles: Vec<_> = docs.iter().map(|d| d.meta_str("title").unwrap()).collect();
        assert_eq!(titles, ["Anarchism", "Autism"]);
        assert_eq!(
            docs[0].text,
            "'''Anarchism''' is a [[political philosophy]] & movement <ref>."
        );
        assert_eq!(docs[0].meta_str("page_id"), Some("12"));
        assert!(docs[0].id.ends_with("wiki.xml.bz2:Anarchism"));
        assert_eq!(docs[1].meta_str("page_id"), Some("25"));
    }

    #[test]
    fn oversized_page_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let items = read_str(
            dir.path(),
            "w.xml",
            EXPORT.as_bytes(),
            ReadLimits {
                max_document_bytes: 50,
            },
        );
        assert_eq!(items.len(), 2);
        assert!(
            items[0]
                .as_ref()
                .unwrap_err()
                .location
                .ends_with(":Anarchism")
        );
        assert_eq!(items[1].as_ref().unwrap().meta_str("title"), Some("Autism"));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_str(dir.path(), "empty.xml", b"", ReadLimits::default()).is_empty());
        // Truncated bz2: the pages before the cut, then one error.
        let compressed = bz2(EXPORT.repeat(1200).as_bytes());
        let items = read_str(
            dir.path(),
            "cut.xml.bz2",
            &compressed[..compressed.len() * 2 / 3],
            ReadLimits::default(),
        );
        assert!(items.len() >= 2);
        assert!(items[..items.len() - 1].iter().all(Result::is_ok));
        assert!(
            items
                .last()
                .unwrap()
                .as_ref()
                .unwrap_err()
                .location
                .ends_with("cut.xml.bz2")
        );
        // XML cut inside a page.
        let cut = &EXPORT[..EXPORT.find("<title>Autism").unwrap()];
        let items = read_str(dir.path(), "cut.xml", cut.as_bytes(), ReadLimits::default());
        assert_eq!(items.len(), 2);
        assert!(
            items[1]
                .as_ref()
                .unwrap_err()
                .message
                .contains("inside a <page>")
        );
        // Mismatched tags, binary garbage and invalid UTF-8.
        let bad = read_str(
            dir.path(),
            "bad.xml",
            b"<mediawiki><page><title>A</ns></page>",
            ReadLimits::default(),
        );
        assert_eq!(bad.len(), 1);
        assert!(bad[0].is_err());
        let binary = read_str(
            dir.path(),
            "bin.xml",
            &[0x89, b'P', b'N', b'G', 0, 0, 0xff, b'<', 0xfe],
            ReadLimits::default(),
        );
        assert!(binary.iter().all(Result::is_err) && binary.len() <= 1);
        let latin1 = b"<mediawiki><page><title>Caf\xe9</title><ns>0</ns><revision><text>x</text></revision></page></mediawiki>";
        let items = read_str(dir.path(), "latin1.xml", latin1, ReadLimits::default());
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
    }

    #[test]
    fn real_wikipedia_dump() {
        let dump = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/corpus/wikipedia/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2");
        if !dump.exists() {
            eprintln!("skipped: {} is absent", dump.display());
            return;
        }
        let items: Vec<_> = read(dump, ReadLimits::default()).collect();
        let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        // The dump holds 206 pages: 205 in namespace 0, of which 99 are redirects.
        assert_eq!(items.len(), 106);
        let docs: Vec<_> = items.into_iter().map(Result::unwrap).collect();
        let anarchism = docs
            .iter()
            .find(|d| d.meta_str("title") == Some("Anarchism"))
            .unwrap();
        assert_eq!(anarchism.meta_str("page_id"), Some("12"));
        assert!(anarchism.text.contains("'''Anarchism'''"));
        assert!(docs.iter().all(|d| {
            !d.text
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("#redirect")
        }));
        eprintln!(
            "wikipedia: {} articles, {} bytes of wikitext",
            docs.len(),
            docs.iter().map(|d| d.text.len()).sum::<usize>()
        );
    }
}
