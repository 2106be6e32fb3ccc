//! The web cleaner on the real web text of the shared data (CommonCrawl head documents and NYT
//! articles, one JSON object with a `text` field per line).

use std::path::PathBuf;

use llama_data::Document;
use llama_data::clean::CleanerSpec;
use llama_data::clean::web::WebSettings;

fn docs(file: &str) -> Option<Vec<Document>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/corpus/web")
        .join(file);
    let data = std::fs::read_to_string(path).ok()?;
    Some(
        data.lines()
            .enumerate()
            .filter_map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                let text = v.get("text")?.as_str()?;
                Some(Document::new(format!("{file}#{i}"), text))
            })
            .collect(),
    )
}

#[test]
fn real_web_text_through_the_three_stages() {
    let (Some(cc), Some(nyt)) = (docs("cc_en_head-0091.jsonl"), docs("nyt_articles.jsonl")) else {
        println!("skipped: no shared web text");
        return;
    };
    let settings = WebSettings {
        bloom_bytes: 1 << 20,
        ..WebSettings::default()
    };
    let mut pipeline = CleanerSpec::Web(settings).pipeline().expect("pipeline");
    let n = cc.len() + nyt.len();
    let bytes_in: usize = cc.iter().chain(&nyt).map(|d| d.text.len()).sum();
    let start = std::time::Instant::now();
    let kept: Vec<Document> = cc
        .into_iter()
        .chain(nyt.iter().cloned())
        .filter_map(|d| pipeline.run(d))
        .collect();
    let bytes_out: usize = kept.iter().map(|d| d.text.len()).sum();
    println!(
        "web: {n} docs, {} kept, {bytes_in} -> {bytes_out} bytes, {:.1} MB/s",
        kept.len(),
        bytes_in as f64 / start.elapsed().as_secs_f64() / 1e6
    );
    for r in pipeline.reports() {
        println!("  {r:?}");
    }
    // News articles are English prose: most survive, and every kept line is sentence-like.
    assert!(kept.len() * 2 > n, "{} of {n}", kept.len());
    for d in &kept {
        assert!(!d.text.contains('{'), "{}", d.id);
        for line in d.text.lines() {
            assert!(line.ends_with(['.', '!', '?', '"']), "{}: {line}", d.id);
            assert!(!line.to_lowercase().contains("javascript"), "{}", d.id);
        }
    }
    // Running the same articles again: every line is now a duplicate.
    let again = nyt.into_iter().filter_map(|d| pipeline.run(d)).count();
    assert_eq!(again, 0, "second copies must be emptied by line-dedup");
}
