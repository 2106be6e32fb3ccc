//! The qa cleaner on the real Reddit posts of the shared data.

use std::path::PathBuf;

use llama_data::Document;
use llama_data::clean::CleanerSpec;
use llama_data::clean::qa::QaSettings;

#[test]
fn real_posts_keep_their_text() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/corpus/qa/reddit_posts.jsonl");
    let Ok(data) = std::fs::read_to_string(&path) else {
        println!("skipped: no shared qa posts");
        return;
    };
    let mut pipeline = CleanerSpec::Qa(QaSettings::default())
        .pipeline()
        .expect("pipeline");
    let (mut n, mut kept, mut bytes_in, mut bytes_out) = (0, 0, 0, 0);
    for (i, line) in data.lines().enumerate() {
        let Ok(serde_json::Value::Object(mut meta)) = serde_json::from_str(line) else {
            continue;
        };
        let Some(serde_json::Value::String(text)) = meta.remove("text") else {
            continue;
        };
        n += 1;
        bytes_in += text.len();
        // `&nbsp;` is a space once decoded.
        let words_in = text.replace("&nbsp;", " ").split_whitespace().count();
        let doc = Document {
            id: format!("reddit#{i}"),
            text,
            meta,
        };
        if let Some(d) = pipeline.run(doc) {
            kept += 1;
            bytes_out += d.text.len();
            // Plain-text posts: the words survive, entities such as `&nbsp;` do not.
            let words_out = d.text.split_whitespace().count();
            assert!(
                words_out <= words_in && words_out * 100 >= words_in * 98,
                "{}",
                d.id
            );
            assert!(!d.text.contains("&nbsp;"), "{}", d.id);
        }
    }
    println!("qa: {n} posts, {kept} kept, {bytes_in} -> {bytes_out} bytes");
    assert!(n > 100, "{n} posts");
    assert!(kept * 100 >= n * 99, "{kept} of {n}");
}
