//! Reads the tokenizer vocabulary of a llama.cpp GGUF file (`tokenizer.ggml.*` metadata).
//!
//! Hand-written: only the metadata key/value section is needed, not tensors; the GGUF crates on
//! crates.io target model weights. Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use crate::error::TokenizerError;
use crate::sentencepiece::{Piece, PieceType};

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The metadata values this reader keeps; others are skipped.
enum Value {
    Str(String),
    Strings(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
    Int(i64),
    Other,
}

impl Reader<'_> {
    fn bad(&self, what: &str) -> TokenizerError {
        TokenizerError::Format(format!("GGUF: {what} at byte {}", self.pos))
    }
    fn take(&mut self, n: usize) -> Result<&[u8], TokenizerError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.bad("truncated file"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, TokenizerError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, TokenizerError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, TokenizerError> {
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad("string is not UTF-8"))
    }
    /// Size in bytes of a scalar of GGUF type `t` (strings and arrays are not scalars).
    fn scalar_size(&self, t: u32) -> Result<usize, TokenizerError> {
        Ok(match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => return Err(self.bad("unknown value type")),
        })
    }
    fn scalar_int(&mut self, t: u32) -> Result<i64, TokenizerError> {
        let n = self.scalar_size(t)?;
        let b = self.take(n)?;
        Ok(match (t, n) {
            (0 | 7, 1) => i64::from(b[0]),
            (1, 1) => i64::from(b[0] as i8),
            (2, 2) => i64::from(u16::from_le_bytes([b[0], b[1]])),
            (3, 2) => i64::from(i16::from_le_bytes([b[0], b[1]])),
            (4, 4) => i64::from(u32::from_le_bytes(b.try_into().expect("4"))),
            (5, 4) => i64::from(i32::from_le_bytes(b.try_into().expect("4"))),
            (10, 8) => u64::from_le_bytes(b.try_into().expect("8")) as i64,
            (11, 8) => i64::from_le_bytes(b.try_into().expect("8")),
            _ => 0, // floats are not needed as scalars
        })
    }
    fn value(&mut self, t: u32) -> Result<Value, TokenizerError> {
        match t {
            8 => Ok(Value::Str(self.string()?)),
            9 => {
                let et = self.u32()?;
                let n = self.u64()? as usize;
                match et {
                    8 => (0..n)
                        .map(|_| self.string())
                        .collect::<Result<_, _>>()
                        .map(Value::Strings),
                    6 => (0..n)
                        .map(|_| {
                            self.take(4)
                                .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                        })
                        .collect::<Result<_, _>>()
                        .map(Value::F32s),
                    5 => (0..n)
                        .map(|_| {
                            self.take(4)
                                .map(|b| i32::from_le_bytes(b.try_into().expect("4")))
                        })
                        .collect::<Result<_, _>>()
                        .map(Value::I32s),
                    9 => Err(self.bad("nested arrays are not supported")),
                    _ => {
                        let size = self.scalar_size(et)?;
                        self.take(
                            size.checked_mul(n)
                                .ok_or_else(|| self.bad("array too large"))?,
                        )?;
                        Ok(Value::Other)
                    }
                }
            }
            6 | 12 => self.take(self.scalar_size(t)?).map(|_| Value::Other),
            _ => self.scalar_int(t).map(Value::Int),
        }
    }
}

/// A GGUF vocabulary: pieces in id order and the special token ids.
pub struct GgufVocab {
    pub model: String,
    pub pieces: Vec<Piece>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

pub fn read_vocab(file: &[u8]) -> Result<GgufVocab, TokenizerError> {
    let mut r = Reader { buf: file, pos: 0 };
    if r.take(4)? != b"GGUF" {
        return Err(TokenizerError::Format("not a GGUF file (bad magic)".into()));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(TokenizerError::Format(format!(
            "unsupported GGUF version {version}"
        )));
    }
    let _tensors = r.u64()?;
    let n_kv = r.u64()?;
    let (mut model, mut tokens, mut scores, mut types, mut bos, mut eos) =
        (String::new(), None, None, None, None, None);
    for _ in 0..n_kv {
        let key = r.string()?;
        let t = r.u32()?;
        match (key.as_str(), r.value(t)?) {
            ("tokenizer.ggml.model", Value::Str(s)) => model = s,
            ("tokenizer.ggml.tokens", Value::Strings(v)) => tokens = Some(v),
            ("tokenizer.ggml.scores", Value::F32s(v)) => scores = Some(v),
            ("tokenizer.ggml.token_type", Value::I32s(v)) => types = Some(v),
            ("tokenizer.ggml.bos_token_id", Value::Int(i)) => bos = u32::try_from(i).ok(),
            ("tokenizer.ggml.eos_token_id", Value::Int(i)) => eos = u32::try_from(i).ok(),
            _ => {}
        }
    }
    let tokens =
        tokens.ok_or_else(|| TokenizerError::Format("GGUF has no tokenizer.ggml.tokens".into()))?;
    let n = tokens.len();
    let scores = scores.unwrap_or_else(|| vec![0.0; n]);
    let types = types.unwrap_or_else(|| vec![1; n]);
    if scores.len() != n || types.len() != n {
        return Err(TokenizerError::Format(
            "GGUF tokenizer arrays differ in length".into(),
        ));
    }
    let pieces = tokens
        .into_iter()
        .zip(scores)
        .zip(types)
        // llama.cpp token types use SentencePiece's codes (1 normal, 2 unknown, 3 control, ...).
        .map(|((piece, score), t)| Piece {
            piece,
            score,
            kind: PieceType::from_code(t.max(0) as u64),
        })
        .collect();
    Ok(GgufVocab {
        model,
        pieces,
        bos,
        eos,
    })
}
