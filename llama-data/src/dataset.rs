//! Packed training sequences over a prepared dataset: windows of `seq_len + 1` tokens (inputs
//! and shifted targets) cut from each source's concatenated shards, blended across sources by
//! the recipe's weights.
//!
//! Sample `i` of the training set is fixed by the dataset and the seed alone: the source comes
//! from Megatron-style greedy blending (each step picks the source furthest behind its weight),
//! and the `k`-th sample of a source is window `perm_e(k mod n)` of epoch `e = k / n`, with a
//! seeded Feistel permutation per source and epoch (every window once per epoch). Random access
//! needs no index arrays, and resuming at a step is just asking for the next indices.

use std::path::Path;

use crate::error::DataError;
use crate::manifest::Manifest;
use crate::permutation::Permutation;
use crate::shard::Shard;

/// Greedy-blending state is stored every this many samples; `get` replays at most this many.
const BLEND_BLOCK: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

/// One source's split as a single token stream.
struct SourceStream {
    name: String,
    shards: Vec<Shard>,
    /// Stream offset of each shard's first token.
    starts: Vec<u64>,
    windows: u64,
    weight: f64,
}

enum Order {
    /// Training: blended by weight, shuffled per source and epoch.
    Blend {
        checkpoints: Vec<Vec<u64>>,
        seed: u64,
    },
    /// Validation: every window of every source once, in order.
    Sequential { first: Vec<u64> },
}

/// Fixed-length token windows of a prepared dataset; implements Burn's `Dataset`.
pub struct PackedDataset {
    seq_len: usize,
    sources: Vec<SourceStream>,
    order: Order,
    len: u64,
}

impl PackedDataset {
    /// The training split: `num_samples` blended windows (default: as many as the sources hold
    /// together, about one epoch of the mixture).
    pub fn train(dir: &Path, seq_len: usize, num_samples: Option<u64>) -> Result<Self, DataError> {
        let manifest = Manifest::load(dir)?;
        let sources = open_streams(dir, &manifest, Split::Train, seq_len)?;
        let total: u64 = sources.iter().map(|s| s.windows).sum();
        let len = num_samples.unwrap_or(total);
        let weight_sum: f64 = sources.iter().map(|s| s.weight).sum();
        let sources: Vec<_> = sources
            .into_iter()
            .map(|s| SourceStream {
                weight: s.weight / weight_sum,
                ..s
            })
            .collect();
        let checkpoints = blend_checkpoints(&sources, len);
        Ok(Self {
            seq_len,
            sources,
            order: Order::Blend {
                checkpoints,
                seed: manifest.seed,
            },
            len,
        })
    }

    /// The validation split: every window of every source once, sources in recipe order.
    pub fn validation(dir: &Path, seq_len: usize) -> Result<Self, DataError> {
        let manifest = Manifest::load(dir)?;
        let sources = open_streams(dir, &manifest, Split::Validation, seq_len)?;
        let mut first = Vec::with_capacity(sources.len());
        let mut len = 0;
        for s in &sources {
            first.push(len);
            len += s.windows;
        }
        Ok(Self {
            seq_len,
            sources,
            order: Order::Sequential { first },
            len,
        })
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Names of the sources that contribute windows.
    pub fn source_names(&self) -> Vec<&str> {
        self.sources.iter().map(|s| s.name.as_str()).collect()
    }

    /// Which source sample `index` comes from, and the window within that source's stream.
    pub fn locate(&self, index: u64) -> Option<(usize, u64)> {
        if index >= self.len {
            return None;
        }
        match &self.order {
            Order::Sequential { first } => {
                let s = first.partition_point(|&f| f <= index) - 1;
                Some((s, index - first[s]))
            }
            Order::Blend { checkpoints, seed } => {
                let block = (index / BLEND_BLOCK) as usize;
                let mut counts = checkpoints[block].clone();
                let mut s = 0;
                for step in block as u64 * BLEND_BLOCK..=index {
                    s = greedy_pick(&self.sources, &counts, step);
                    counts[s] += 1;
                }
                let k = counts[s] - 1;
                let n = self.sources[s].windows;
                let epoch = k / n;
                let perm_seed =
                    seed ^ (s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch.rotate_left(32);
                Some((s, Permutation::new(n, perm_seed).get(k % n)))
            }
        }
    }

    /// Sample `index`: `seq_len + 1` token ids.
    pub fn get(&self, index: u64) -> Option<Vec<u32>> {
        let (s, window) = self.locate(index)?;
        let src = &self.sources[s];
        let mut out = Vec::with_capacity(self.seq_len + 1);
        let mut pos = window * self.seq_len as u64;
        let end = pos + self.seq_len as u64 + 1;
        while pos < end {
            let shard = src.starts.partition_point(|&st| st <= pos) - 1;
            let local = pos - src.starts[shard];
            let n = (end - pos).min(src.shards[shard].len() - local);
            src.shards[shard].read_into(local, n as usize, &mut out);
            pos += n;
        }
        Some(out)
    }

    /// The samples of training step `step` with `batch_size` sequences per step, wrapping around
    /// the dataset: a run resumed at step `s` continues exactly where it stopped.
    pub fn batch(&self, step: u64, batch_size: usize) -> Vec<Vec<u32>> {
        if self.len == 0 {
            return Vec::new();
        }
        (0..batch_size as u64)
            .filter_map(|j| self.get((step * batch_size as u64 + j) % self.len))
            .collect()
    }
}

impl burn_dataset::Dataset<Vec<u32>> for PackedDataset {
    fn get(&self, index: usize) -> Option<Vec<u32>> {
        PackedDataset::get(self, index as u64)
    }

    fn len(&self) -> usize {
        self.len as usize
    }
}

fn open_streams(
    dir: &Path,
    manifest: &Manifest,
    split: Split,
    seq_len: usize,
) -> Result<Vec<SourceStream>, DataError> {
    if seq_len == 0 {
        return Err(DataError::Invalid("seq_len must be positive".into()));
    }
    let mut streams = Vec::new();
    for source in &manifest.sources {
        let report = match split {
            Split::Train => &source.train,
            Split::Validation => &source.validation,
        };
        let mut shards = Vec::new();
        let mut starts = Vec::new();
        let mut total = 0;
        for info in report.shards.iter().filter(|s| s.tokens > 0) {
            shards.push(Shard::open(
                &dir.join(&info.file),
                manifest.dtype,
                info.tokens,
            )?);
            starts.push(total);
            total += info.tokens;
        }
        // Windows overlap by one token: the last target of one is the first input of the next.
        let windows = total.saturating_sub(1) / seq_len as u64;
        if windows > 0 {
            streams.push(SourceStream {
                name: source.name.clone(),
                shards,
                starts,
                windows,
                weight: source.weight,
            });
        }
    }
    if streams.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: no source has {} tokens of {} data for one window of seq_len {seq_len}",
            dir.display(),
            seq_len + 1,
            split.name()
        )));
    }
    Ok(streams)
}

/// The source furthest behind its share after `step` samples (ties: the first).
fn greedy_pick(sources: &[SourceStream], counts: &[u64], step: u64) -> usize {
    let mut best = 0;
    let mut best_gap = f64::NEG_INFINITY;
    for (s, src) in sources.iter().enumerate() {
        let gap = src.weight * (step + 1) as f64 - counts[s] as f64;
        if gap > best_gap {
            best = s;
            best_gap = gap;
        }
    }
    best
}

/// Per-source counts before every `BLEND_BLOCK`-th sample.
fn blend_checkpoints(sources: &[SourceStream], len: u64) -> Vec<Vec<u64>> {
    let mut counts = vec![0u64; sources.len()];
    let mut out = Vec::with_capacity((len / BLEND_BLOCK + 1) as usize);
    for step in 0..len {
        if step % BLEND_BLOCK == 0 {
            out.push(counts.clone());
        }
        let s = greedy_pick(sources, &counts, step);
        counts[s] += 1;
    }
    if out.is_empty() {
        out.push(counts);
    }
    out
}
