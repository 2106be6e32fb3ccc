//! Token shards: flat little-endian `u16` (vocabularies up to 65,536) or `u32` token files,
//! memory-mapped for reading, each with an `.idx` file of document start offsets (`u64`, one per
//! document plus the end). Documents are written whole as `<s> tokens </s>`; a new shard starts
//! once the current one holds `shard_tokens`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// The narrowest type that holds every id of a vocabulary of `vocab_size` pieces.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

/// One finished shard as recorded in the manifest. Paths are relative to the dataset folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub index: String,
    pub tokens: u64,
    pub documents: u64,
    /// SHA-256 of the token file.
    pub sha256: String,
}

struct OpenShard {
    file: BufWriter<File>,
    hasher: Sha256,
    tokens: u64,
    offsets: Vec<u64>,
    name: String,
}

/// Writes one source split (`wikipedia/train`) as numbered shards under a dataset folder.
pub struct ShardWriter {
    root: PathBuf,
    prefix: String,
    dtype: TokenDtype,
    shard_tokens: u64,
    bos: u32,
    eos: u32,
    current: Option<OpenShard>,
    done: Vec<ShardInfo>,
    buf: Vec<u8>,
}

impl ShardWriter {
    pub fn new(
        root: &Path,
        prefix: &str,
        dtype: TokenDtype,
        shard_tokens: u64,
        bos: u32,
        eos: u32,
    ) -> Self {
        Self {
            root: root.to_path_buf(),
            prefix: prefix.to_string(),
            dtype,
            shard_tokens,
            bos,
            eos,
            current: None,
            done: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Appends `<s> tokens </s>` as one document.
    pub fn write_document(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.tokens >= self.shard_tokens)
        {
            self.close_current()?;
        }
        if self.current.is_none() {
            self.open_next()?;
        }
        let limit = match self.dtype {
            TokenDtype::U16 => u16::MAX as u32,
            TokenDtype::U32 => u32::MAX,
        };
        self.buf.clear();
        for &t in std::iter::once(&self.bos)
            .chain(tokens)
            .chain(std::iter::once(&self.eos))
        {
            if t > limit {
                return Err(DataError::Invalid(format!(
                    "token id {t} does not fit {:?}",
                    self.dtype
                )));
            }
            match self.dtype {
                TokenDtype::U16 => self.buf.extend_from_slice(&(t as u16).to_le_bytes()),
                TokenDtype::U32 => self.buf.extend_from_slice(&t.to_le_bytes()),
            }
        }
        let Some(shard) = self.current.as_mut() else {
            unreachable!("a shard was opened above")
        };
        let path = self.root.join(&shard.name);
        shard
            .file
            .write_all(&self.buf)
            .map_err(|e| DataError::io(&path, e))?;
        shard.hasher.update(&self.buf);
        shard.offsets.push(shard.tokens);
        shard.tokens += tokens.len() as u64 + 2;
        Ok(())
    }

    fn open_next(&mut self) -> Result<(), DataError> {
        let name = format!("{}-{:05}.bin", self.prefix, self.done.len());
        let path = self.root.join(&name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let file = File::create(&path).map_err(|e| DataError::io(&path, e))?;
        self.current = Some(OpenShard {
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            tokens: 0,
            offsets: Vec::new(),
            name,
        });
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), DataError> {
        let Some(mut shard) = self.current.take() else {
            return Ok(());
        };
        let path = self.root.join(&shard.name);
        let file = shard
            .file
            .into_inner()
            .map_err(|e| DataError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| DataError::io(&path, e))?;
        shard.offsets.push(shard.tokens);
        let index = shard.name.replace(".bin", ".idx");
        let bytes: Vec<u8> = shard.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        let index_path = self.root.join(&index);
        std::fs::write(&index_path, bytes).map_err(|e| DataError::io(&index_path, e))?;
        self.done.push(ShardInfo {
            file: shard.name,
            index,
            tokens: shard.tokens,
            documents: shard.offsets.len() as u64 - 1,
            sha256: hex(&shard.hasher.finalize()),
        });
        Ok(())
    }

    /// Closes the last shard and returns every shard written (none for an empty split).
    pub fn finish(mut self) -> Result<Vec<ShardInfo>, DataError> {
        self.close_current()?;
        Ok(self.done)
    }
}

/// A memory-mapped token shard.
pub struct Shard {
    map: Mmap,
    dtype: TokenDtype,
}

impl Shard {
    /// Maps `path` and checks that its size is `tokens` ids of `dtype`.
    pub fn open(path: &Path, dtype: TokenDtype, tokens: u64) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        // SAFETY: shards are written once and never modified in place (a dataset is written
        // under a temporary name and renamed when complete); a user truncating a shard while it
        // is mapped is outside what any reader of mapped files can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        if map.len() as u64 != tokens * dtype.bytes() as u64 {
            return Err(DataError::Invalid(format!(
                "{}: {} bytes, the manifest says {tokens} {dtype:?} tokens",
                path.display(),
                map.len()
            )));
        }
        Ok(Self { map, dtype })
    }

    pub fn len(&self) -> u64 {
        (self.map.len() / self.dtype.bytes()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Appends tokens `start..start + n` to `out` (the range must lie inside the shard).
    pub fn read_into(&self, start: u64, n: usize, out: &mut Vec<u32>) {
        let w = self.dtype.bytes();
        let bytes = &self.map[start as usize * w..(start as usize + n) * w];
        match self.dtype {
            TokenDtype::U16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
            ),
            TokenDtype::U32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }
}

/// Document start offsets of a shard (one per document, then the end).
pub fn read_index(path: &Path) -> Result<Vec<u64>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.len() % 8 != 0 {
        return Err(DataError::Invalid(format!(
            "{}: truncated index",
            path.display()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect())
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_map_roundtrips_with_hashes_and_index() {
        let dir = tempfile::tempdir().unwrap();
        for (dtype, big) in [(TokenDtype::U16, 65_535u32), (TokenDtype::U32, 1_000_000)] {
            let mut w = ShardWriter::new(dir.path(), &format!("{dtype:?}/train"), dtype, 10, 1, 2);
            let docs: Vec<Vec<u32>> = vec![vec![5, 6, 7], vec![big; 9], vec![], vec![8]];
            for d in &docs {
                w.write_document(d).unwrap();
            }
            let shards = w.finish().unwrap();
            // 5 tokens, then 11 (roll over at ≥ 10), then 2 + 3.
            assert_eq!(shards.iter().map(|s| s.tokens).collect::<Vec<_>>(), [16, 5]);
            assert_eq!(
                shards.iter().map(|s| s.documents).collect::<Vec<_>>(),
                [2, 2]
            );
            let mut all = Vec::new();
            for s in &shards {
                let path = dir.path().join(&s.file);
                assert_eq!(sha256_file(&path).unwrap(), s.sha256);
                let shard = Shard::open(&path, dtype, s.tokens).unwrap();
                shard.read_into(0, shard.len() as usize, &mut all);
                let idx = read_index(&dir.path().join(&s.index)).unwrap();
                assert_eq!(idx.len() as u64, s.documents + 1);
                assert_eq!(*idx.last().unwrap(), s.tokens);
            }
            let expect: Vec<u32> = docs
                .iter()
                .flat_map(|d| [&[1][..], d, &[2]].concat())
                .collect();
            assert_eq!(all, expect);
            assert!(Shard::open(&dir.path().join(&shards[0].file), dtype, 3).is_err());
        }
    }

    #[test]
    fn ids_that_do_not_fit_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path(), "x/train", TokenDtype::U16, 10, 1, 2);
        assert!(w.write_document(&[70_000]).is_err());
        assert_eq!(TokenDtype::for_vocab(32_000), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65_536), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65_537), TokenDtype::U32);
    }
}
