//! The ablation knobs. Each knob is one enum whose variants sit side by side; the `Default` of every
//! knob is what LLaMA uses, so `LlamaConfig::default()`-style configs are exactly LLaMA.

use serde::{Deserialize, Serialize};

/// Which normalisation layer the blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// Root-mean-square norm with a gain and no bias (Zhang & Sennrich, 2019): LLaMA.
    #[default]
    #[serde(alias = "rms", alias = "rmsnorm")]
    RmsNorm,
    /// Layer normalisation with gain and bias (Ba et al., 2016): the original Transformer and GPT.
    #[serde(alias = "layer", alias = "layernorm")]
    LayerNorm,
}

/// Where the normalisation sits relative to the residual connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormPlacement {
    /// `x + f(norm(x))`, with a final norm before the output head (GPT-3, LLaMA).
    #[default]
    Pre,
    /// `norm(x + f(x))`, as in the original Transformer; the last block's output is already
    /// normalised, so there is no final norm.
    Post,
}

/// The feed-forward network of each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FfnKind {
    /// `w2(silu(w1 x) * w3 x)` (Shazeer, 2020): LLaMA.
    #[default]
    #[serde(alias = "swi-glu")]
    Swiglu,
    /// `w2(gelu(w1 x) * w3 x)`.
    #[serde(alias = "ge-glu")]
    Geglu,
    /// `w2(relu(w1 x))`: the original Transformer.
    Relu,
    /// `w2(gelu(w1 x))` with exact (erf) GELU: GPT/BERT.
    Gelu,
}

impl FfnKind {
    /// Gated variants have three projections (gate, up, down), the others two.
    pub fn is_gated(self) -> bool {
        matches!(self, FfnKind::Swiglu | FfnKind::Geglu)
    }
}

/// How the model knows token positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PositionKind {
    /// Rotary embeddings applied to queries and keys (Su et al., 2021): LLaMA.
    #[default]
    Rope,
    /// A learned absolute position embedding added to the token embedding (GPT).
    Learned,
    /// Fixed sinusoidal absolute positions added to the token embedding (Vaswani et al., 2017).
    Sinusoidal,
    /// No position information besides the causal mask (Haviv et al., 2022).
    None,
}
