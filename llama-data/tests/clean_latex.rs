//! The latex cleaner on the real .tex files of the shared data (UTF-8 ones only).

use std::path::PathBuf;

use llama_data::Document;
use llama_data::clean::CleanerSpec;
use llama_data::clean::latex::LatexSettings;

#[test]
fn real_tex_files_are_cut_to_their_body() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus/latex");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("skipped: no shared latex files");
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tex"))
        .collect();
    files.sort();
    let mut pipeline = CleanerSpec::Latex(LatexSettings::default())
        .pipeline()
        .expect("pipeline");
    let (mut n, mut skipped, mut kept) = (0, 0, 0);
    let (mut bytes_in, mut bytes_out) = (0usize, 0usize);
    let (mut defs_in, mut defs_out) = (0usize, 0usize);
    let start = std::time::Instant::now();
    for path in &files {
        let Ok(text) = std::fs::read_to_string(path) else {
            skipped += 1; // Latin-1 and other non-UTF-8 files
            continue;
        };
        n += 1;
        bytes_in += text.len();
        defs_in += text.matches("\\newcommand{").count();
        let had_section = llama_data::clean::latex::strip_comments(&text).contains("\\section{");
        let Some(doc) = pipeline.run(Document::new(path.display().to_string(), text)) else {
            continue;
        };
        kept += 1;
        bytes_out += doc.text.len();
        defs_out += doc.text.matches("\\newcommand{").count();
        let name = path.display();
        assert!(!doc.text.contains("\\begin{thebibliography}"), "{name}");
        if had_section {
            let t = &doc.text;
            assert!(
                t.starts_with("\\section") || t.starts_with("\\chapter"),
                "{name}: starts with {:?}",
                &t[..t.floor_char_boundary(60)]
            );
        }
    }
    println!(
        "latex: {} files, {skipped} not UTF-8, {n} cleaned, {kept} kept, {bytes_in} -> {bytes_out} bytes, \
         \\newcommand{{ {defs_in} -> {defs_out}, {:.1} MB/s",
        files.len(),
        bytes_in as f64 / start.elapsed().as_secs_f64() / 1e6
    );
    for r in pipeline.reports() {
        println!("  {r:?}");
    }
    assert!(n > 300, "{n} UTF-8 files");
    // Comments and preambles remove bytes; macro expansion adds some (these are CTAN manuals
    // full of TeX programming, not papers), within its budget of 2x the input.
    let r = pipeline.reports();
    assert!(r[0].bytes_out < r[0].bytes_in && r[2].bytes_out < r[2].bytes_in);
    assert!(r[1].bytes_out <= 3 * r[1].bytes_in);
    assert!(bytes_out > bytes_in / 10);
    assert!(
        defs_out * 5 < defs_in.max(1),
        "definitions removed: {defs_in} -> {defs_out}"
    );
}
