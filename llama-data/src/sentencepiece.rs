//! Reads the pieces of a SentencePiece `.model` file (a `ModelProto` protobuf).
//!
//! Hand-written because only three fields of one repeated message are needed: the alternatives are
//! the `sentencepiece` crate (builds Google's C++ library) or protobuf code generation for the whole
//! schema. Wire format: <https://protobuf.dev/programming-guides/encoding/>.

use crate::error::TokenizerError;

/// `SentencePiece.Type` of sentencepiece_model.proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    pub(crate) fn from_code(code: u64) -> Self {
        match code {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str) -> TokenizerError {
        TokenizerError::Format(format!("SentencePiece model: {what} at byte {}", self.pos))
    }

    fn varint(&mut self) -> Result<u64, TokenizerError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| self.bad("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.bad("overlong varint"))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], TokenizerError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.bad("truncated field"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Next `(field number, wire type)`, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u64)>, TokenizerError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some((k >> 3, k & 7)))
    }

    /// Skips a field of the given wire type; returns its bytes for length-delimited ones.
    fn value(&mut self, wire: u64) -> Result<Option<&'a [u8]>, TokenizerError> {
        match wire {
            0 => self.varint().map(|_| None),
            1 => self.bytes(8).map(|_| None),
            2 => {
                let n = self.varint()? as usize;
                self.bytes(n).map(Some)
            }
            5 => self.bytes(4).map(Some),
            _ => Err(self.bad("unsupported wire type")),
        }
    }
}

/// The pieces of a `ModelProto`, in id order.
pub fn read_pieces(model: &[u8]) -> Result<Vec<Piece>, TokenizerError> {
    let mut r = Reader { buf: model, pos: 0 };
    let mut pieces = Vec::new();
    while let Some((field, wire)) = r.key()? {
        let body = r.value(wire)?;
        if field != 1 {
            continue; // trainer_spec, normalizer_spec, ...
        }
        let body = body.ok_or_else(|| r.bad("pieces field is not a message"))?;
        let mut m = Reader { buf: body, pos: 0 };
        let mut piece = Piece {
            piece: String::new(),
            score: 0.0,
            kind: PieceType::Normal,
        };
        while let Some((f, w)) = m.key()? {
            match (f, w) {
                (1, 2) => {
                    let s = m.value(w)?.unwrap_or_default();
                    piece.piece =
                        String::from_utf8(s.to_vec()).map_err(|_| m.bad("piece is not UTF-8"))?;
                }
                (2, 5) => {
                    let b = m.value(w)?.unwrap_or_default();
                    piece.score = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                (3, 0) => piece.kind = PieceType::from_code(m.varint()?),
                _ => {
                    m.value(w)?;
                }
            }
        }
        pieces.push(piece);
    }
    if pieces.is_empty() {
        return Err(TokenizerError::Format(
            "SentencePiece model holds no pieces".into(),
        ));
    }
    Ok(pieces)
}
