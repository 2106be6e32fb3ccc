//! Causal self-attention with grouped-query attention and an optional KV cache.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, attention_fallback};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor};

use crate::cache::LayerCache;
use crate::ffn::linear;
use crate::position::Rope;
use crate::precision::Precision;

/// Which keys each query may see.
#[derive(Debug, Clone)]
pub enum AttentionMask<B: Backend> {
    /// Square causal attention without padding (`t_q == t_k`): Burn's fused `attention` op with
    /// `is_causal`, which every backend aligns the same way when the matrix is square.
    Causal,
    /// Every key is visible (one new token against an unpadded cache): the fused op without a mask.
    Full,
    /// An explicit `[batch, 1, t_q, t_k]` mask, `true` = hidden. Runs Burn's reference
    /// `attention_fallback`: the fused op on libtorch hands the mask to torch unchanged, which reads
    /// `true` as "attend", and the CubeCL flash kernel ignores explicit masks' alignment rules.
    Explicit(Tensor<B, 4, Bool>),
}

/// Multi-head (or grouped-query) self-attention without biases.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub wq: Linear<B>,
    pub wk: Linear<B>,
    pub wv: Linear<B>,
    pub wo: Linear<B>,
    #[module(skip)]
    n_heads: usize,
    #[module(skip)]
    n_kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    pub fn new(
        dim: usize,
        n_heads: usize,
        n_kv_heads: usize,
        std: f64,
        out_std: f64,
        device: &B::Device,
    ) -> Self {
        let hd = dim / n_heads;
        Self {
            wq: linear(dim, n_heads * hd, std, device),
            wk: linear(dim, n_kv_heads * hd, std, device),
            wv: linear(dim, n_kv_heads * hd, std, device),
            wo: linear(n_heads * hd, dim, out_std, device),
            n_heads,
            n_kv_heads,
            head_dim: hd,
        }
    }

    /// `x: [batch, time, dim]`, `positions: [batch, time]` → `[batch, time, dim]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        positions: &Tensor<B, 2, Int>,
        rope: Option<&Rope<B>>,
        mask: &AttentionMask<B>,
        cache: Option<&mut LayerCache<B>>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let proj = |l: &Linear<B>, x| precision.linear(l, x);
        let (h, hkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let mut q = heads(proj(&self.wq, x.clone()), h);
        let mut k = heads(proj(&self.wk, x.clone()), hkv);
        let v = heads(proj(&self.wv, x), hkv);
        if let Some(rope) = rope {
            q = rope.apply(q, positions);
            k = rope.apply(k, positions);
        }
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let (k, v) = (repeat_kv(k, h / hkv), repeat_kv(v, h / hkv));
        let options = |is_causal| AttentionModuleOptions {
            is_causal,
            ..Default::default()
        };
        let out = match mask {
            AttentionMask::Causal => attention(q, k, v, None, None, options(true)),
            AttentionMask::Full => attention(q, k, v, None, None, options(false)),
            AttentionMask::Explicit(m) => {
                let [_, _, tq, tk] = m.dims();
                let m = m.clone().expand([b, h, tq, tk]);
                attention_fallback(q, k, v, Some(m), None, options(false))
            }
        };
        proj(&self.wo, out.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}

/// Repeats each key/value head `n_rep` times so grouped-query attention can use the multi-head op.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [b, hkv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, hkv, n_rep, t, hd])
        .reshape([b, hkv * n_rep, t, hd])
}
