//! The whole architecture in one serialisable value, its presets and its validation.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::knobs::{FfnKind, NormKind, NormPlacement, PositionKind};

fn default_multiple_of() -> usize {
    256
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_init_std() -> f64 {
    0.02
}

/// Architecture of a decoder-only LLaMA-style Transformer, including the ablation knobs.
///
/// Serialises to JSON and TOML. Optional fields may be left out; the knobs default to LLaMA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads for grouped-query attention; `None` means `n_heads` (multi-head attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_heads: Option<usize>,
    /// Explicit feed-forward hidden size; `None` derives it (see [`LlamaConfig::ffn_hidden`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_hidden_dim: Option<usize>,
    /// The derived gated hidden size is rounded up to a multiple of this (Meta's `multiple_of`).
    #[serde(default = "default_multiple_of")]
    pub multiple_of: usize,
    /// Optional scale of the derived hidden size before rounding (Meta's `ffn_dim_multiplier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_dim_multiplier: Option<f64>,
    pub max_seq_len: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Share the token embedding matrix with the output projection.
    #[serde(default)]
    pub tie_embeddings: bool,
    #[serde(default)]
    pub norm: NormKind,
    #[serde(default)]
    pub norm_placement: NormPlacement,
    #[serde(default)]
    pub ffn: FfnKind,
    #[serde(default)]
    pub position: PositionKind,
    /// Standard deviation of the normal initialisation of weight matrices and embeddings. Output
    /// projections of attention and FFN use `init_std / sqrt(2 n_layers)` (GPT-2's residual scaling).
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}

/// Names of the built-in presets, in the order `llama params --help` lists them.
pub const PRESETS: &[&str] = &[
    "tiny",
    "small",
    "125m",
    "350m",
    "1b",
    "gpt-style",
    "llama-7b",
    "llama-13b",
    "llama-33b",
    "llama-65b",
];

impl LlamaConfig {
    /// A LLaMA architecture (pre-RMSNorm, SwiGLU, RoPE, untied, no biases) with the given sizes.
    pub fn llama(
        vocab_size: usize,
        dim: usize,
        n_layers: usize,
        n_heads: usize,
        max_seq_len: usize,
    ) -> Self {
        Self {
            vocab_size,
            dim,
            n_layers,
            n_heads,
            n_kv_heads: None,
            ffn_hidden_dim: None,
            multiple_of: default_multiple_of(),
            ffn_dim_multiplier: None,
            max_seq_len,
            norm_eps: default_norm_eps(),
            rope_theta: default_rope_theta(),
            tie_embeddings: false,
            norm: NormKind::RmsNorm,
            norm_placement: NormPlacement::Pre,
            ffn: FfnKind::Swiglu,
            position: PositionKind::Rope,
            init_std: default_init_std(),
        }
    }

    /// A built-in preset by name (see [`PRESETS`]).
    ///
    /// The `llama-*` presets are Table 2 of Touvron et al. (2023). The small presets keep the LLaMA
    /// architecture at sizes that train on one machine: `tiny` (1.9M, CPU tests), `small` (23M,
    /// laptops), `125m`, `350m` and `1b` (TinyLlama's shape, with grouped-query attention).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let cfg = match name {
            "tiny" => Self {
                multiple_of: 32,
                ..Self::llama(4096, 128, 4, 4, 256)
            },
            "small" => Self::llama(32_000, 256, 8, 8, 512),
            "125m" => Self::llama(32_000, 768, 12, 12, 2048),
            "350m" => Self::llama(32_000, 1024, 24, 16, 2048),
            "1b" => Self {
                n_kv_heads: Some(4),
                ..Self::llama(32_000, 2048, 22, 32, 2048)
            },
            "gpt-style" => Self {
                norm: NormKind::LayerNorm,
                norm_placement: NormPlacement::Post,
                ffn: FfnKind::Gelu,
                position: PositionKind::Learned,
                ..Self::llama(32_000, 256, 8, 8, 512)
            },
            "llama-7b" => Self::llama(32_000, 4096, 32, 32, 2048),
            "llama-13b" => Self::llama(32_000, 5120, 40, 40, 2048),
            "llama-33b" => Self::llama(32_000, 6656, 60, 52, 2048),
            "llama-65b" => Self::llama(32_000, 8192, 80, 64, 2048),
            other => {
                return Err(ConfigError::UnknownPreset {
                    name: other.to_string(),
                    known: PRESETS.join(", "),
                });
            }
        };
        Ok(cfg)
    }

    /// Reads a JSON (`.json`) or TOML (any other extension) config file and validates it.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let cfg: Self = if is_json {
            serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?
        } else {
            toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serialises")
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }

    /// Number of key/value heads (equals `n_heads` without grouped-query attention).
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// The gated (SwiGLU) hidden size derived as in Meta's reference code:
    /// `2/3 · 4·dim`, optionally scaled by `ffn_dim_multiplier`, rounded up to `multiple_of`.
    pub fn gated_hidden(&self) -> usize {
        let mut hidden = 2 * (4 * self.dim) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            hidden = (m * hidden as f64) as usize;
        }
        self.multiple_of * hidden.div_ceil(self.multiple_of)
    }

    /// Hidden size of the feed-forward network. Given explicitly, it is used as is. Otherwise gated
    /// variants use [`Self::gated_hidden`], and non-gated ones `3/2` of it, so that the two-matrix
    /// MLP has the same parameter count as the three-matrix SwiGLU it replaces.
    pub fn ffn_hidden(&self) -> usize {
        match self.ffn_hidden_dim {
            Some(h) => h,
            None if self.ffn.is_gated() => self.gated_hidden(),
            None => 3 * self.gated_hidden() / 2,
        }
    }

    /// Rejects impossible or unsupported combinations with a message naming the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("multiple_of", self.multiple_of),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.n_kv_heads == Some(0) || self.ffn_hidden_dim == Some(0) {
            return bad("n_kv_heads and ffn_hidden_dim must be positive when given".into());
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return bad(format!(
                "dim {} is not divisible by n_heads {}",
                self.dim, self.n_heads
            ));
        }
        let kv = self.kv_heads();
        if kv > self.n_heads || !self.n_heads.is_multiple_of(kv) {
            return bad(format!(
                "n_heads {} is not a multiple of n_kv_heads {kv}",
                self.n_heads
            ));
        }
        if self.position == PositionKind::Rope && !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "RoPE needs an even head_dim, got {} (dim {} / n_heads {})",
                self.head_dim(),
                self.dim,
                self.n_heads
            ));
        }
        if self.position == PositionKind::Sinusoidal && !self.dim.is_multiple_of(2) {
            return bad(format!(
                "sinusoidal positions need an even dim, got {}",
                self.dim
            ));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.norm_eps) {
            return bad(format!(
                "norm_eps must be positive and finite, got {}",
                self.norm_eps
            ));
        }
        if !positive(self.rope_theta) {
            return bad(format!(
                "rope_theta must be positive and finite, got {}",
                self.rope_theta
            ));
        }
        if !positive(self.init_std) {
            return bad(format!(
                "init_std must be positive and finite, got {}",
                self.init_std
            ));
        }
        if let Some(m) = self.ffn_dim_multiplier
            && !positive(m)
        {
            return bad(format!(
                "ffn_dim_multiplier must be positive and finite, got {m}"
            ));
        }
        if self.ffn_hidden() == 0 {
            return bad("the derived ffn hidden size is 0; set ffn_hidden_dim".into());
        }
        Ok(())
    }

    /// Parameter counts, computed from the shapes alone (no allocation).
    pub fn param_counts(&self) -> ParamCounts {
        let (d, v) = (self.dim as u64, self.vocab_size as u64);
        let hd = self.head_dim() as u64;
        let q = self.n_heads as u64 * hd;
        let kv = self.kv_heads() as u64 * hd;
        let attention = d * q + 2 * d * kv + q * d;
        let h = self.ffn_hidden() as u64;
        let ffn = if self.ffn.is_gated() {
            3 * d * h
        } else {
            2 * d * h
        };
        let norm = match self.norm {
            NormKind::RmsNorm => d,
            NormKind::LayerNorm => 2 * d,
        };
        let per_layer = attention + ffn + 2 * norm;
        let final_norm = match self.norm_placement {
            NormPlacement::Pre => norm,
            NormPlacement::Post => 0,
        };
        let token_embedding = v * d;
        let position_embedding = match self.position {
            PositionKind::Learned => self.max_seq_len as u64 * d,
            _ => 0,
        };
        let output = if self.tie_embeddings { 0 } else { v * d };
        let total = token_embedding
            + position_embedding
            + self.n_layers as u64 * per_layer
            + final_norm
            + output;
        ParamCounts {
            total,
            non_embedding: total - token_embedding - position_embedding - output,
        }
    }

    /// Training FLOPs per token at full context: `6 (N + V·d) + 12 · n_layers · dim · max_seq_len`.
    ///
    /// `N` is the non-embedding parameter count and `V·d` the output projection (a real matmul even
    /// when tied); the last term is attention's QKᵀ and AV (PaLM, Chowdhery et al. 2022, appendix B),
    /// counted without the causal saving like PaLM and nanoGPT.
    pub fn flops_per_token(&self) -> u64 {
        let n = self.param_counts().non_embedding;
        let head = self.vocab_size as u64 * self.dim as u64;
        6 * (n + head) + 12 * self.n_layers as u64 * self.dim as u64 * self.max_seq_len as u64
    }

    /// The fewest bytes one decoded step of `batch` rows must move from memory, attending over
    /// `context` positions: every weight matrix once (the output head too, tied or not), the
    /// batch's embedding rows, and the keys and values of `context` positions for each row,
    /// read, plus the new position's written. Weights are counted at `weight_bytes` per element
    /// (norm gains included: they are 0.01 % of a preset), the cache at `cache_bytes`.
    ///
    /// A step's time against `bytes / bandwidth` is its memory-bandwidth utilisation, the bound
    /// that batch-1 decoding is judged by (it reads every weight to produce one token).
    pub fn decode_bytes(
        &self,
        batch: usize,
        context: usize,
        weight_bytes: usize,
        cache_bytes: usize,
    ) -> u64 {
        let (b, d) = (batch as u64, self.dim as u64);
        let head = self.vocab_size as u64 * d;
        let position_rows = match self.position {
            PositionKind::Learned => b * d,
            _ => 0,
        };
        let weights = self.param_counts().non_embedding + head + b * d + position_rows;
        let kv_per_position = 2 * (self.kv_heads() * self.head_dim()) as u64;
        let cache = b * self.n_layers as u64 * kv_per_position * (context as u64 + 1);
        weights * weight_bytes as u64 + cache * cache_bytes as u64
    }
}

/// Analytic parameter counts of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCounts {
    pub total: u64,
    /// Total minus the token embedding, a learned position embedding and an untied output matrix.
    pub non_embedding: u64,
}
