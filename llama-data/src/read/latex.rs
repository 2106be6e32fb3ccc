//! LaTeX sources (the ArXiv part of the mix): one document per `.tex` file, raw LaTeX (the latex
//! cleaner removes preambles, comments and macros).

use std::path::PathBuf;

use super::{Documents, ReadLimits, files_under, logical_name, read_text_file};
use crate::document::Document;

/// Every `.tex` file (also `.tex.gz`, `.tex.bz2`, ...) under `roots`, sorted; id = path, meta
/// `file` = the file name without a compression extension. Non-UTF-8 and binary files are errors
/// and are skipped; empty files give no document.
pub fn read_trees(roots: Vec<PathBuf>, limits: ReadLimits) -> Documents {
    Box::new(files_under(&roots).filter_map(move |file| {
        let path = match file {
            Ok(path) => path,
            Err(e) => return Some(Err(e)),
        };
        let name = logical_name(&path);
        if !name.to_ascii_lowercase().ends_with(".tex") {
            return None;
        }
        match read_text_file(&path, limits.max_document_bytes) {
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(Ok(
                Document::new(path.display().to_string(), text).with_meta("file", name)
            )),
            Err(e) => Some(Err(e)),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    #[test]
    fn tex_files_compressed_or_not_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("paper/sections")).unwrap();
        std::fs::write(
            root.join("paper/main.tex"),
            "\\documentclass{article}\n\\begin{document}Hi\\end{document}\n",
        )
        .unwrap();
        std::fs::write(root.join("paper/refs.bib"), "@article{x}").unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all("\\section{Intro} Ünïcode".as_bytes())
            .unwrap();
        std::fs::write(
            root.join("paper/sections/intro.tex.gz"),
            enc.finish().unwrap(),
        )
        .unwrap();
        std::fs::write(root.join("paper/empty.tex"), "").unwrap();
        std::fs::write(root.join("paper/latin1.tex"), b"\\section{Caf\xe9}").unwrap();
        std::fs::write(root.join("paper/binary.tex"), [0u8, 159, 146, 150]).unwrap();
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        enc.write_all(&b"\\section{Long} ".repeat(10_000)).unwrap();
        let bz = enc.finish().unwrap();
        std::fs::write(root.join("paper/truncated.tex.bz2"), &bz[..bz.len() / 2]).unwrap();

        let items: Vec<_> = read_trees(vec![root.to_path_buf()], ReadLimits::default()).collect();
        let names: Vec<String> = items
            .iter()
            .map(|i| match i {
                Ok(d) => format!("ok {}", d.meta_str("file").unwrap()),
                Err(e) => format!(
                    "err {}",
                    Path::new(&e.location)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                ),
            })
            .collect();
        assert_eq!(
            names,
            [
                "err binary.tex",
                "err latin1.tex",
                "ok main.tex",
                "ok intro.tex",
                "err truncated.tex.bz2"
            ]
        );
        assert!(items[1].as_ref().unwrap_err().message.contains("not UTF-8"));
        assert_eq!(items[3].as_ref().unwrap().text, "\\section{Intro} Ünïcode");
    }

    #[test]
    fn real_latex_corpus() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/corpus/latex");
        if !dir.exists() {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        }
        let items: Vec<_> = read_trees(vec![dir.clone()], ReadLimits::default()).collect();
        assert_eq!(
            items.len(),
            399,
            "every .tex file is a document or an error"
        );
        let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        assert_eq!(errors.len(), 21, "the Latin-1 files");
        assert!(
            errors.iter().all(|e| e.message.contains("not UTF-8")),
            "{errors:?}"
        );
        let guide = items
            .iter()
            .flatten()
            .find(|d| d.meta_str("file") == Some("amstex__base__amsguide.tex"))
            .unwrap();
        assert!(guide.text.contains('\\'));
        eprintln!(
            "latex: {} documents, {} not UTF-8",
            items.len() - errors.len(),
            errors.len()
        );
    }
}
