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
        match self.forward_deferred(x, None, rope, mask, cache, precision) {
            (x, Some(delta)) => residual::add(x, delta),
            (x, None) => x,
        }
    }

    /// [`Self::forward`] of `x + pending` (the previous block's last residual update, left to this
    /// block), leaving its own last update to the caller where it can: `(x', δ)` with the block's
    /// output `x' + δ`. Pre-norm blocks add the pending update together with their first norm
    /// and their own first update with the second norm ([`Norm::add_forward_to`]: one kernel each
    /// in inference on a backend that has it), the same operations as the plain form otherwise.
    pub fn forward_deferred(
        &self,
        x: Tensor<B, 3>,
        pending: Option<Tensor<B, 3>>,
        rope: Option<&RopeAngles<B>>,
        mask: &AttentionMask<B>,
        cache: Option<&mut LayerCache<B>>,
        precision: Precision,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        // The sublayers return the compute dtype; the residual stream and the norms keep the
        // stream's own dtype (f32 under bf16 compute, as autocast does).
        let dtype = x.dtype();
        let attn = |a| self.attention.forward(a, rope, mask, cache, precision);
        let ffn = |f| self.feed_forward.forward(f, precision);
        match self.placement {
            NormPlacement::Pre => {
                // The norms' outputs only feed the sublayers: produced in their compute dtype.
                let to = precision.compute_dtype().unwrap_or(dtype);
                let (x, a) = match pending {
                    Some(delta) => self.attention_norm.add_forward_to(x, delta, to),
                    None => (x.clone(), self.attention_norm.forward_to(x, to)),
                };
                let (h, f) = self.ffn_norm.add_forward_to(x, attn(a), to);
                (h, Some(ffn(f)))
            }
            NormPlacement::Post => {
                let x = match pending {
                    Some(delta) => residual::add(x, delta),
                    None => x,
                };
                let h = self
                    .attention_norm
                    .forward(residual::add(x.clone(), attn(x)));
                (
                    self.ffn_norm.forward(residual::add(h.clone(), ffn(h))),
                    None,
                )
            }
        }
    }
}
