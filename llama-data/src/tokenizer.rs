//! The LLaMA tokenizer from any of its three published forms: Hugging Face `tokenizer.json`,
//! SentencePiece `tokenizer.model`, or a llama.cpp GGUF vocabulary. All three become the same
//! `tokenizers` BPE (byte fallback, `▁` for spaces, a prepended `▁`), so they encode identically.

use std::path::Path;

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::error::TokenizerError;
use crate::sentencepiece::{Piece, PieceType, read_pieces};

/// A SentencePiece-style BPE tokenizer with known BOS/EOS ids.
pub struct LlamaTokenizer {
    inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

impl LlamaTokenizer {
    /// Loads `tokenizer.json`, a SentencePiece `.model` or a GGUF file (detected by content).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let context = |e: TokenizerError| match e {
            TokenizerError::Format(m) => TokenizerError::Format(format!("{}: {m}", path.display())),
            other => other,
        };
        if bytes.starts_with(b"GGUF") {
            let vocab = crate::gguf::read_vocab(&bytes).map_err(context)?;
            if vocab.model != "llama" {
                return Err(context(TokenizerError::Format(format!(
                    "GGUF tokenizer model `{}` is not SentencePiece BPE (`llama`)",
                    vocab.model
                ))));
            }
            let mut t = Self::from_pieces(&vocab.pieces).map_err(context)?;
            t.bos = vocab.bos.or(t.bos);
            t.eos = vocab.eos.or(t.eos);
            return Ok(t);
        }
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            let inner = Tokenizer::from_bytes(&bytes)
                .map_err(|e| TokenizerError::Format(format!("{}: {e}", path.display())))?;
            return Ok(Self::wrap(inner));
        }
        Self::from_pieces(&read_pieces(&bytes).map_err(context)?).map_err(context)
    }

    pub(crate) fn wrap(inner: Tokenizer) -> Self {
        let bos = inner.token_to_id("<s>");
        let eos = inner.token_to_id("</s>");
        Self { inner, bos, eos }
    }

    /// Builds the BPE of a SentencePiece vocabulary. Merges are derived as transformers'
    /// `SentencePieceExtractor` does: every split of a piece into two pieces of the vocabulary,
    /// ordered by the merged piece's score (highest first), ties by vocabulary order, then by the
    /// ids of the two halves.
    pub fn from_pieces(pieces: &[Piece]) -> Result<Self, TokenizerError> {
        let ids: std::collections::HashMap<&str, usize> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.piece.as_str(), i))
            .collect();
        let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new(); // (score, merged id, left id, right id)
        for (id, p) in pieces.iter().enumerate() {
            let mut local = Vec::new();
            for (cut, _) in p.piece.char_indices().skip(1) {
                let (l, r) = p.piece.split_at(cut);
                if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                    local.push((li, ri));
                }
            }
            local.sort();
            merges.extend(local.into_iter().map(|(l, r)| (p.score, id, l, r)));
        }
        // Stable sort by score, highest first: equal scores keep vocabulary order.
        merges.sort_by(|a, b| b.0.total_cmp(&a.0));
        let unk = pieces.iter().position(|p| p.kind == PieceType::Unknown);
        let vocab: serde_json::Map<String, Value> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.piece.clone(), json!(i)))
            .collect();
        let added: Vec<Value> = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, PieceType::Control | PieceType::Unknown | PieceType::UserDefined))
            .map(|(i, p)| {
                json!({"id": i, "content": p.piece, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": p.kind != PieceType::UserDefined})
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
            ]},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": unk.map(|u| pieces[u].piece.clone()),
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab,
                "merges": merges.iter().map(|&(_, _, l, r)| json!([pieces[l].piece, pieces[r].piece])).collect::<Vec<_>>(),
            }
        });
        let inner = Tokenizer::from_bytes(spec.to_string().as_bytes())
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        Ok(Self::wrap(inner))
    }

    /// Token ids of `text`, with BOS first when `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && let Some(b) = self.bos {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
