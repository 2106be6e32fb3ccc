//! The wikipedia cleaner on the real MediaWiki dump of the shared data (206 pages).

use std::io::Read;
use std::path::PathBuf;

use llama_data::Document;
use llama_data::clean::CleanerSpec;
use llama_data::clean::wikipedia::WikipediaSettings;
use quick_xml::events::Event;

fn dump_path() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus/wikipedia");
    let entry = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "bz2"))?;
    Some(entry.path())
}

/// The `<title>` and `<text>` of every page (a minimal reader of our own, on purpose).
fn pages(xml: &str) -> Vec<(String, String)> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let (mut title, mut text) = (String::new(), String::new());
    let mut field: Option<&'static str> = None;
    loop {
        match reader.read_event().expect("well-formed dump") {
            Event::Start(e) => {
                field = match e.name().as_ref() {
                    b"title" => Some("title"),
                    b"text" => Some("text"),
                    _ => None,
                };
                if field == Some("text") {
                    text.clear();
                }
            }
            Event::Text(t) => {
                let s = t.unescape().expect("text").into_owned();
                match field {
                    Some("title") => title = s,
                    Some("text") => text.push_str(&s),
                    _ => {}
                }
            }
            Event::End(e) => {
                if e.name().as_ref() == b"text" {
                    out.push((title.clone(), std::mem::take(&mut text)));
                }
                field = None;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

#[test]
fn real_dump_is_cleaned_of_markup() {
    let Some(path) = dump_path() else {
        println!("skipped: no shared wikipedia dump");
        return;
    };
    let mut xml = String::new();
    bzip2::read::MultiBzDecoder::new(std::fs::File::open(&path).expect("open"))
        .read_to_string(&mut xml)
        .expect("decompress");
    let pages = pages(&xml);
    assert!(pages.len() > 200, "{} pages", pages.len());
    let mut pipeline = CleanerSpec::Wikipedia(WikipediaSettings::default())
        .pipeline()
        .expect("pipeline");
    let (mut bytes_in, mut bytes_out, mut kept) = (0usize, 0usize, 0usize);
    let start = std::time::Instant::now();
    for (title, text) in &pages {
        bytes_in += text.len();
        let Some(doc) = pipeline.run(Document::new(title.clone(), text.clone())) else {
            continue;
        };
        kept += 1;
        bytes_out += doc.text.len();
        for marker in ["{{", "}}", "[[", "]]", "<ref", "|}", "{|", "<!--"] {
            assert!(!doc.text.contains(marker), "{title}: {marker} left");
        }
        assert!(!doc.text.contains("\n== "), "{title}: heading marks left");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wikipedia: {} pages, {kept} kept, {bytes_in} -> {bytes_out} bytes, {:.1} MB/s",
        pages.len(),
        bytes_in as f64 / secs / 1e6
    );
    let report = &pipeline.reports()[0];
    assert_eq!(report.docs_in as usize, pages.len());
    // Redirects go; articles keep most of their prose.
    assert!(kept > 100, "{kept} kept");
    assert!(bytes_out > bytes_in / 5, "{bytes_out} of {bytes_in}");
    assert!(bytes_out < bytes_in, "markup must have been removed");
}
