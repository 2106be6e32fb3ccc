//! `llama data sample`: real public text for the quickstart, obtained on any machine from PyPI
//! with pip, pinned by version and SHA-256, nothing third-party committed to this repository.
//!
//! The gensim 4.4.0 wheel ships, as test data, an excerpt of a real English Wikipedia dump (206
//! pages of raw wikitext, MediaWiki XML, bz2) and the Lee news corpus (300 Australian news
//! articles, one per line). The wheel's file is fixed by asking pip for one platform tag, so the
//! hash is the same on every machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::DataError;
use crate::shard::sha256_file;

pub const PACKAGE: &str = "gensim==4.4.0";
pub const WHEEL: &str = "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl";
pub const WHEEL_SHA256: &str = "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8";

/// (member of the wheel, where it goes under the sample folder)
const MEMBERS: [(&str, &str); 2] = [
    (
        "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "wikipedia/enwiki-excerpt.xml.bz2",
    ),
    (
        "gensim/test/test_data/lee_background.cor",
        "news/lee_background.txt",
    ),
];

/// The recipe written next to the data: Wikipedia cleaned as in the paper, news as it is.
pub const SAMPLE_RECIPE: &str = r#"# Real public text from the gensim 4.4.0 wheel on PyPI (see `llama data sample`).
name = "sample"
seed = 1234
validation_fraction = 0.05
shard_tokens = 1_048_576

[[source]]
name = "wikipedia"
weight = 3.0
paths = ["wikipedia"]
reader = { format = "mediawiki" }
cleaner = { kind = "wikipedia" }

[[source]]
name = "news"
weight = 1.0
paths = ["news"]
reader = { format = "lines" }
"#;

/// Downloads the pinned wheel with `python -m pip download`, checks its hash and unpacks the
/// sample under `out` (with `recipe.toml`), atomically. `wheel` skips the download and uses a
/// local copy of the wheel (same hash check). Returns the recipe path.
pub fn fetch_sample(out: &Path, wheel: Option<&Path>) -> Result<PathBuf, DataError> {
    if out.join("recipe.toml").exists() {
        return Ok(out.join("recipe.toml"));
    }
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| DataError::io(&partial, e))?;
    let result = (|| {
        let wheel_path = match wheel {
            Some(w) => w.to_path_buf(),
            None => pip_download(&partial.join("download"))?,
        };
        let got = sha256_file(&wheel_path)?;
        if got != WHEEL_SHA256 {
            return Err(DataError::Invalid(format!(
                "{}: SHA-256 {got}, expected {WHEEL_SHA256} ({PACKAGE} as published on PyPI)",
                wheel_path.display()
            )));
        }
        unpack(&wheel_path, &partial)?;
        let _ = std::fs::remove_dir_all(partial.join("download"));
        crate::manifest::write_atomic(&partial.join("recipe.toml"), SAMPLE_RECIPE.as_bytes())
    })();
    match result {
        Ok(()) => {
            if out.exists() {
                std::fs::remove_dir_all(out).map_err(|e| DataError::io(out, e))?;
            }
            std::fs::rename(&partial, out).map_err(|e| DataError::io(out, e))?;
            Ok(out.join("recipe.toml"))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

fn pip_download(dir: &Path) -> Result<PathBuf, DataError> {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            DataError::Invalid("python3 with pip is needed to fetch the sample from PyPI".into())
        })?;
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            PACKAGE,
            "--no-deps",
            "--only-binary",
            ":all:",
        ])
        .args([
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
        ])
        .args([
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--quiet",
            "--dest",
        ])
        .arg(dir)
        .output()
        .map_err(|e| DataError::Invalid(format!("cannot run {python} -m pip: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(DataError::Invalid(format!(
            "pip download {PACKAGE} failed: {last}"
        )));
    }
    let path = dir.join(WHEEL);
    if !path.exists() {
        return Err(DataError::Invalid(format!(
            "pip did not produce {WHEEL} in {}",
            dir.display()
        )));
    }
    Ok(path)
}

fn unpack(wheel: &Path, out: &Path) -> Result<(), DataError> {
    let file = std::fs::File::open(wheel).map_err(|e| DataError::io(wheel, e))?;
    let bad = |e: zip::result::ZipError| DataError::Invalid(format!("{}: {e}", wheel.display()));
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    for (member, dest) in MEMBERS {
        let mut entry = archive.by_name(member).map_err(bad)?;
        let path = out.join(dest);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let mut f = std::fs::File::create(&path).map_err(|e| DataError::io(&path, e))?;
        std::io::copy(&mut entry, &mut f).map_err(|e| DataError::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_recipe_parses() {
        let r = crate::recipe::Recipe::from_toml(SAMPLE_RECIPE).unwrap();
        assert_eq!(r.sources.len(), 2);
    }

    #[test]
    fn a_wheel_with_another_hash_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join(WHEEL);
        std::fs::write(&fake, b"not the wheel").unwrap();
        let out = dir.path().join("sample");
        let err = fetch_sample(&out, Some(&fake)).unwrap_err().to_string();
        assert!(err.contains("expected 91a7fa5e"), "{err}");
        assert!(!out.exists() && !out.with_extension("partial").exists());
    }
}
