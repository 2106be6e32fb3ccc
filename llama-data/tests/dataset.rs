//! The packed dataset over hand-written shards: window contents, the mixture at every prefix,
//! each epoch a permutation of a source's windows, validation order, resumable batches.

use std::collections::HashMap;
use std::path::Path;

use llama_data::clean::CleanerSpec;
use llama_data::dataset::PackedDataset;
use llama_data::manifest::{
    FORMAT, Manifest, ReadReport, SourceManifest, SplitReport, TokenizerInfo,
};
use llama_data::read::ReaderSpec;
use llama_data::shard::{ShardWriter, TokenDtype};

const BOS: u32 = 1;
const EOS: u32 = 2;

/// Source `s` gets ids `10_000 · (s + 1) + (i mod 5000)`, so every token tells its source.
fn make_dataset(dir: &Path, sources: &[(&str, f64, usize)], shard_tokens: u64) -> Manifest {
    let mut manifests = Vec::new();
    let total: f64 = sources.iter().map(|s| s.1).sum();
    for (s, &(name, weight, tokens)) in sources.iter().enumerate() {
        let mut splits = Vec::new();
        for split in ["train", "validation"] {
            let mut w = ShardWriter::new(
                dir,
                &format!("{name}/{split}"),
                TokenDtype::U16,
                shard_tokens,
                BOS,
                EOS,
            );
            let base = 10_000 * (s as u32 + 1);
            let n = if split == "train" { tokens } else { tokens / 4 };
            let ids: Vec<u32> = (0..n as u32).map(|i| base + i % 5000).collect();
            for doc in ids.chunks(37) {
                w.write_document(doc).unwrap();
            }
            let shards = w.finish().unwrap();
            splits.push(SplitReport {
                documents: shards.iter().map(|s| s.documents).sum(),
                tokens: shards.iter().map(|s| s.tokens).sum(),
                bytes: 0,
                shards,
            });
        }
        let validation = splits.pop().unwrap();
        let train = splits.pop().unwrap();
        manifests.push(SourceManifest {
            name: name.to_string(),
            weight: weight / total,
            paths: vec![],
            reader: ReaderSpec::Text,
            cleaner: CleanerSpec::None,
            read: ReadReport::default(),
            stages: vec![],
            train,
            validation,
            epochs: None,
        });
    }
    let m = Manifest {
        format: FORMAT,
        recipe: "test".into(),
        seed: 7,
        validation_fraction: 0.2,
        token_budget: None,
        dtype: TokenDtype::U16,
        tokenizer: TokenizerInfo {
            origin: "none".into(),
            sha256: String::new(),
            vocab_size: 4000,
            bos: BOS,
            eos: EOS,
        },
        sources: manifests,
        seconds: 0.0,
    };
    m.write(dir).unwrap();
    m
}

/// The stream a source's shards hold, concatenated.
fn stream(m: &Manifest, dir: &Path, s: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for info in &m.sources[s].train.shards {
        let shard =
            llama_data::shard::Shard::open(&dir.join(&info.file), m.dtype, info.tokens).unwrap();
        shard.read_into(0, shard.len() as usize, &mut out);
    }
    out
}

#[test]
fn windows_are_stream_slices_across_shard_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let m = make_dataset(dir.path(), &[("a", 1.0, 3000)], 500);
    assert!(m.sources[0].train.shards.len() > 4);
    let seq = 64;
    let ds = PackedDataset::train(dir.path(), seq, None).unwrap();
    let full = stream(&m, dir.path(), 0);
    assert_eq!(ds.len(), (full.len() as u64 - 1) / seq as u64);
    for i in 0..ds.len() {
        let (s, w) = ds.locate(i).unwrap();
        assert_eq!(s, 0);
        let start = w as usize * seq;
        assert_eq!(
            ds.get(i).unwrap(),
            full[start..start + seq + 1],
            "sample {i}"
        );
    }
    assert_eq!(ds.get(ds.len()), None);
}

#[test]
fn mixture_follows_the_weights_at_every_prefix_and_epochs_are_permutations() {
    let dir = tempfile::tempdir().unwrap();
    let spec = [
        ("big", 67.0, 20_000),
        ("mid", 15.0, 3_000),
        ("small", 4.5, 600),
        ("tiny", 2.0, 300),
    ];
    make_dataset(dir.path(), &spec, 4096);
    let seq = 16;
    let n = 6_000;
    let ds = PackedDataset::train(dir.path(), seq, Some(n)).unwrap();
    let total_w: f64 = spec.iter().map(|s| s.1).sum();
    let mut counts = vec![0u64; spec.len()];
    let mut seen: Vec<HashMap<u64, Vec<u64>>> = vec![HashMap::new(); spec.len()];
    for i in 0..n {
        let (s, w) = ds.locate(i).unwrap();
        seen[s].entry(w).or_default().push(counts[s]);
        counts[s] += 1;
        for (t, &c) in counts.iter().enumerate() {
            let target = spec[t].1 / total_w * (i + 1) as f64;
            assert!(
                (c as f64 - target).abs() <= 1.0,
                "prefix {i}: source {t} has {c}, target {target:.2}"
            );
        }
        // Every token of the window names its source (BOS and EOS aside).
        let window = ds.get(i).unwrap();
        assert!(
            window
                .iter()
                .all(|&t| t <= EOS || t / 10_000 == s as u32 + 1),
            "{window:?}"
        );
    }
    // Within every full epoch of a source, each window exactly once.
    for (s, windows) in seen.iter().enumerate() {
        let per_epoch = ((spec[s].2 + 2 * spec[s].2.div_ceil(37)) as u64 - 1) / seq as u64;
        let epochs = counts[s] / per_epoch;
        assert!(
            epochs >= 1 || s == 0,
            "source {s} saw {} of {per_epoch}",
            counts[s]
        );
        for e in 0..epochs {
            let in_epoch = windows
                .values()
                .filter(|ks| ks.iter().any(|k| k / per_epoch == e))
                .count();
            assert_eq!(in_epoch as u64, per_epoch, "source {s} epoch {e}");
        }
    }
    // The small sources repeat, in a different order each epoch.
    let tiny: Vec<u64> = (0..n)
        .filter_map(|i| ds.locate(i))
        .filter(|&(s, _)| s == 3)
        .map(|(_, w)| w)
        .collect();
    let per_epoch = 19; // (300 + 2 · 9 documents' BOS/EOS − 1) / 16
    assert!(tiny.len() >= 2 * per_epoch);
    assert_ne!(tiny[..per_epoch], tiny[per_epoch..2 * per_epoch]);
}

#[test]
fn batches_resume_and_validation_covers_every_window_once() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path(), &[("a", 3.0, 4000), ("b", 1.0, 2000)], 1000);
    let ds = PackedDataset::train(dir.path(), 32, Some(500)).unwrap();
    let again = PackedDataset::train(dir.path(), 32, Some(500)).unwrap();
    let all: Vec<_> = (0..20).flat_map(|step| ds.batch(step, 8)).collect();
    let resumed: Vec<_> = (7..20).flat_map(|step| again.batch(step, 8)).collect();
    assert_eq!(all[7 * 8..], resumed[..]);
    assert_eq!(ds.batch(0, 3).len(), 3);

    let v = PackedDataset::validation(dir.path(), 32).unwrap();
    let located: Vec<_> = (0..v.len()).map(|i| v.locate(i).unwrap()).collect();
    let mut sorted = located.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), located.len());
    assert_eq!(located, sorted, "validation is in order");
    assert!(!v.is_empty());
}

#[test]
fn errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let err = PackedDataset::train(dir.path(), 8, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a prepared dataset"), "{err}");
    make_dataset(dir.path(), &[("a", 1.0, 100)], 1000);
    let err = PackedDataset::train(dir.path(), 4096, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("seq_len 4096"), "{err}");
    std::fs::write(dir.path().join("a/train-00000.bin"), b"xx").unwrap();
    let err = PackedDataset::train(dir.path(), 8, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bytes"), "{err}");
}
