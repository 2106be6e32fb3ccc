//! One Transformer block: attention and feed-forward, each with a residual connection and a norm
//! placed before (LLaMA) or after (original Transformer) it.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::attention::{Attention, AttentionMask};
use crate::cache::LayerCache;
use crate::config::LlamaConfig;
use crate::ffn::FeedForward;
use crate::knobs::NormPlacement;
use crate::norm::Norm;
use crate::position::Rope;

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub attention_norm: Norm<B>,
    pub attention: Attention<B>,
    pub ffn_norm: Norm<B>,
    pub feed_forward: FeedForward<B>,
    #[module(skip)]
    placement: NormPlacement,
}

impl<B: Backend> Block<B> {
    pub fn new(cfg: &LlamaConfig, device: &B::Device) -> Self {
        let std = cfg.init_std;
        let out_std = std / (2.0 * cfg.n_layers as f64).sqrt();
        Self {
            attention_norm: Norm::new(cfg.norm, cfg.dim, cfg.norm_eps, device),
            attention: Attention::new(cfg.dim, cfg.n_heads, cfg.kv_heads(), std, out_std, device),
            ffn_norm: Norm::new(cfg.norm, cfg.dim, cfg.norm_eps, device),
            feed_forward: FeedForward::new(
                cfg.ffn,
                cfg.dim,
                cfg.ffn_hidden(),
                std,
                out_std,
                device,
            ),
            placement: cfg.norm_placement,
        }
    }

    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        positions: &Tensor<B, 2, Int>,
        rope: Option<&Rope<B>>,
        mask: &AttentionMask<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        match self.placement {
            NormPlacement::Pre => {
                let a = self.attention_norm.forward(x.clone());
                let h = x + self.attention.forward(a, positions, rope, mask, cache);
                let f = self.feed_forward.forward(self.ffn_norm.forward(h.clone()));
                h + f
            }
            NormPlacement::Post => {
                let a = self
                    .attention
                    .forward(x.clone(), positions, rope, mask, cache);
                let h = self.attention_norm.forward(x + a);
                let f = self.feed_forward.forward(h.clone());
                self.ffn_norm.forward(h + f)
            }
        }
    }
}
