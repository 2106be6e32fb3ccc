//! The books cleaner on the real books of the shared data.

use std::path::PathBuf;

use llama_data::Document;
use llama_data::clean::CleanerSpec;
use llama_data::clean::Stage;
use llama_data::clean::books::{BookDedup, BooksSettings, GutenbergBoilerplate};

fn books() -> Option<Vec<(String, String)>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus/books");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "txt"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), text))
        })
        .collect();
    out.sort();
    Some(out)
}

/// `text`'s words with every `every`-th one replaced.
fn edit_words(text: &str, every: usize) -> String {
    text.split_whitespace()
        .enumerate()
        .map(|(i, w)| if i % every == every / 2 { "EDITED" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn real_books_distinct_kept_edited_copy_dropped_half_different_kept() {
    let Some(books) = books() else {
        println!("skipped: no shared books");
        return;
    };
    assert!(books.len() >= 40, "{} books", books.len());
    let bytes_in: usize = books.iter().map(|(_, t)| t.len()).sum();
    let mut pipeline = CleanerSpec::Books(BooksSettings::default())
        .pipeline()
        .expect("pipeline");
    let start = std::time::Instant::now();
    let mut kept = Vec::new();
    for (name, text) in &books {
        if let Some(d) = pipeline.run(Document::new(name.clone(), text.clone())) {
            kept.push(d);
        }
    }
    let bytes_out: usize = kept.iter().map(|d| d.text.len()).sum();
    println!(
        "books: {} in, {} kept, {bytes_in} -> {bytes_out} bytes, {:.1} MB/s",
        books.len(),
        kept.len(),
        bytes_in as f64 / start.elapsed().as_secs_f64() / 1e6
    );
    assert_eq!(kept.len(), books.len(), "all real books are distinct");
    let boiler = &pipeline.reports()[0];
    assert!(
        boiler.bytes_out < boiler.bytes_in,
        "Gutenberg boilerplate removed"
    );
    assert!(kept.iter().all(|d| !d.text.contains("*** START OF")));

    // Now the dedup stage alone, seeded with the kept books.
    let mut dedup = BookDedup::new(&BooksSettings::default()).expect("dedup");
    for d in &kept {
        assert!(dedup.apply(d.clone()).is_some());
    }
    let base = GutenbergBoilerplate
        .apply(Document::new(
            "h",
            books
                .iter()
                .find(|(n, _)| n.starts_with("hamlet"))
                .map(|(_, t)| t.clone())
                .expect("hamlet"),
        ))
        .expect("kept")
        .text;
    for every in [100, 50, 20] {
        println!(
            "edit 1/{every}: overlap {:?}",
            dedup.overlap(&edit_words(&base, every))
        );
    }
    // A lightly edited copy (2 % of the words replaced, spread over the book) is dropped.
    let edited = edit_words(&base, 50);
    assert!(dedup.overlap(&edited).is_some_and(|o| o >= 0.9));
    assert!(
        dedup
            .apply(Document::new("hamlet-edited", edited))
            .is_none()
    );
    // Half Hamlet, half Macbeth: 50 % different content, kept.
    let other = &kept
        .iter()
        .find(|d| d.id.starts_with("macbeth"))
        .expect("macbeth")
        .text;
    let mut cut = base.len() / 2;
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut cut2 = other.len() / 2;
    while !other.is_char_boundary(cut2) {
        cut2 -= 1;
    }
    let half = base[..cut].to_string() + &other[cut2..];
    println!(
        "half hamlet + half macbeth: overlap {:?}",
        dedup.overlap(&half)
    );
    assert!(dedup.overlap(&half).is_none_or(|o| o < 0.9));
    assert!(dedup.apply(Document::new("half", half)).is_some());
}
