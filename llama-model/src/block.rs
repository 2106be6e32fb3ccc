//! One Transformer block: attention and feed-forward, each with a residual connection and a norm
//! placed before (LLaMA) or after (original Transformer) it.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::attention::{Attention, AttentionMask};
use crate::cache::LayerCache;
use crate::config::LlamaConfig;
use crate::ffn::FeedForward;
use crate::knobs::NormPlacement;
use crate::norm::Norm;
use crate::position::RopeAngles;
use crate::precision::Precision;
use crate::residual;

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
        rope: Option<&RopeAngles<B>>,
        mask: &AttentionMask<B>,
        cache: Option<&mut LayerCache<B>>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        // The sublayers return the compute dtype; the residual stream and the norms keep the
        // stream's own dtype (f32 under bf16 compute, as autocast does).
        let dtype = x.dtype();
        let attn = |a| self.attention.forward(a, rope, mask, cache, precision);
        let ffn = |f| self.feed_forward.forward(f, precision);
        match self.placement {
            NormPlacement::Pre => {
                // The norms' outputs only feed the sublayers: produced in their compute dtype.
                let to = precision.compute_dtype().unwrap_or(dtype);
                let h = residual::add(x.clone(), attn(self.attention_norm.forward_to(x, to)));
                residual::add(h.clone(), ffn(self.ffn_norm.forward_to(h, to)))
            }
            NormPlacement::Post => {
                let h = self
                    .attention_norm
                    .forward(residual::add(x.clone(), attn(x)));
                self.ffn_norm.forward(residual::add(h.clone(), ffn(h)))
            }
        }
    }
}
