//! Causal self-attention with grouped-query attention and an optional KV cache.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, attention_fallback};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use crate::cache::LayerCache;
use crate::decode_attention;
use crate::ffn::linear;
use crate::position::RopeAngles;
use crate::precision::Precision;
use crate::rope_slot;
use crate::rope_slot_attention;
use crate::sdpa;
use crate::stacked::{self, Stacked};

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
    /// q, k and v stacked for inference (`Llama::with_inference_weights`).
    #[module(skip)]
    stacked: Option<Stacked<B>>,
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
            stacked: None,
        }
    }

    /// Stacks q, k and v into one weight, the three becoming views of it (see [`crate::stacked`]).
    /// Not for training. A no-op with biases.
    pub fn stack_projections(&mut self) {
        let ls = [&self.wq, &self.wk, &self.wv];
        if ls.iter().any(|l| l.bias.is_some()) {
            return;
        }
        let (stack, views) = Stacked::new(ls.iter().map(|l| l.weight.val()).collect());
        let mut views = views.into_iter();
        for l in [&mut self.wq, &mut self.wk, &mut self.wv] {
            let view = views.next().expect("one view per weight");
            l.weight = l.weight.clone().map(|_| view);
        }
        self.stacked = Some(stack);
    }

    /// `x: [batch, time, dim]` → `[batch, time, dim]`; `rope` holds the rotary angles of the
    /// tokens' positions.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<&RopeAngles<B>>,
        mask: &AttentionMask<B>,
        cache: Option<&mut LayerCache<B>>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let x = precision.input(x);
        let (h, hkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let (q, k, v) = match &self.stacked {
            Some(stack) if b * t <= stacked::MAX_ROWS => {
                let mut ys = stack.forward(x, precision).into_iter();
                let mut next = || ys.next().expect("three projections");
                (next(), next(), next())
            }
            _ => {
                let [q, k, v] = precision.linears([&self.wq, &self.wk, &self.wv], x);
                (q, k, v)
            }
        };
        let (q, k, v) = (heads(q, h), heads(k, hkv), heads(v, hkv));
        // A decode step's rotation, cache write and attention in one kernel where the backend
        // has it (the cache writes a device-side slot).
        let (q, k, v) = match (rope, cache.as_deref(), mask) {
            (Some(rope), Some(cache), AttentionMask::Full | AttentionMask::Explicit(_))
                if t == 1 =>
            {
                let hidden = match mask {
                    AttentionMask::Explicit(m) => Some(m),
                    _ => None,
                };
                match rope_slot_attention::try_rope_slot_attention(q, k, v, rope, cache, hidden) {
                    Ok(out) => return self.output(out, precision),
                    Err(qkv) => qkv,
                }
            }
            _ => (q, k, v),
        };
        // Rotation and cache write; one kernel for a decode step's slot where the backend has it.
        let (q, k, v) = match (rope, cache) {
            (Some(rope), Some(cache)) => match rope_slot::try_rope_slot(q, k, v, rope, cache) {
                Ok(qkv) => qkv,
                Err((q, k, v)) => {
                    let (k, v) = cache.append(rope.apply(k), v);
                    (rope.apply(q), k, v)
                }
            },
            (Some(rope), None) => (rope.apply(q), rope.apply(k), v),
            (None, Some(cache)) => {
                let (k, v) = cache.append(k, v);
                (q, k, v)
            }
            (None, None) => (q, k, v),
        };
        // One query per row (decoding): the backend's single-pass kernel where it has one, on the
        // shared key/value heads as they are.
        let (q, k, v) = match mask {
            AttentionMask::Full | AttentionMask::Explicit(_) if t == 1 => {
                let hidden = match mask {
                    AttentionMask::Explicit(m) => Some(m),
                    _ => None,
                };
                match decode_attention::try_decode_attention(q, k, v, hidden) {
                    Ok(out) => return self.output(out, precision),
                    Err(qkv) => qkv,
                }
            }
            _ => (q, k, v),
        };
        let options = |is_causal| AttentionModuleOptions {
            is_causal,
            ..Default::default()
        };
        // Training and prefill on a backend that registered it: the memory-efficient operation,
        // given the grouped key/value heads as they are (a kernel that reads them in place saves
        // the expansion's copies). Not for decoding (one query against the cache): torch's SDPA
        // took ~6 ms per call there on an H200 (docs/performance.md), and a single query's
        // scores are small anyway.
        let (q, k, v) = match mask {
            AttentionMask::Causal if q.dims()[2] == k.dims()[2] => {
                match sdpa::try_attention(q, k, v, true) {
                    Ok(out) => return self.output(out, precision),
                    Err(qkv) => qkv,
                }
            }
            _ => (q, k, v),
        };
        let (k, v) = (sdpa::expand_heads(k, &q), sdpa::expand_heads(v, &q));
        let out = match mask {
            // Burn's attention runs its softmax in the input dtype; in bf16 ours keeps it in f32.
            _ if precision.compute_dtype().is_some() => mixed_attention(q, k, v, mask),
            AttentionMask::Causal => attention(q, k, v, None, None, options(true)),
            AttentionMask::Full => attention(q, k, v, None, None, options(false)),
            AttentionMask::Explicit(m) => {
                let [_, _, tq, tk] = m.dims();
                let m = m.clone().expand([b, h, tq, tk]);
                attention_fallback(q, k, v, Some(m), None, options(false))
            }
        };
        self.output(out, precision)
    }

    /// `[batch, heads, T, head_dim]` → the output projection `[batch, T, dim]`.
    fn output(&self, out: Tensor<B, 4>, precision: Precision) -> Tensor<B, 3> {
        let [b, h, t, hd] = out.dims();
        precision.linear(&self.wo, out.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}

/// Scaled dot-product attention with the products in the inputs' dtype (bf16 on tensor cores)
/// and the scaling, masking and softmax in f32, as flash kernels and autocast's SDPA do. Masked
/// scores get a large finite negative value, so a fully hidden row (a left-pad query) stays finite.
fn mixed_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask<B>,
) -> Tensor<B, 4> {
    let [b, h, tq, _] = q.dims();
    let tk = k.dims()[2];
    let dtype = v.dtype();
    let hidden = match mask {
        AttentionMask::Full => None,
        // Bottom-right aligned (query i sits at key position tk - tq + i), as Burn's reference.
        AttentionMask::Causal => Some(sdpa::future_keys([b, h, tq, tk], tk - tq, &q.device())),
        AttentionMask::Explicit(m) => Some(m.clone().expand([b, h, tq, tk])),
    };
    crate::product::matmul(sdpa::masked_probabilities(q, k, hidden).cast(dtype), v)
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    type B = NdArray<f32>;

    /// In f32, the mixed path is Burn's reference attention: same causal alignment (also with
    /// fewer queries than keys, as with a cache), same explicit masks.
    #[test]
    fn mixed_attention_in_f32_equals_burns_reference() {
        let dev = Default::default();
        let r =
            |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        for (tq, tk) in [(5, 5), (2, 7), (1, 4)] {
            let (q, k, v) = (r([2, 3, tq, 8]), r([2, 3, tk, 8]), r([2, 3, tk, 8]));
            let opts = |is_causal| AttentionModuleOptions {
                is_causal,
                ..Default::default()
            };
            let causal = mixed_attention(q.clone(), k.clone(), v.clone(), &AttentionMask::Causal);
            let want = attention_fallback(q.clone(), k.clone(), v.clone(), None, None, opts(true));
            causal
                .into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Default::default());
            let full = mixed_attention(q.clone(), k.clone(), v.clone(), &AttentionMask::Full);
            let want = attention_fallback(q.clone(), k.clone(), v.clone(), None, None, opts(false));
            full.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Default::default());
            // Hide the first key of the second row only.
            let m: Vec<bool> = (0..2 * tq * tk)
                .map(|i| i >= tq * tk && i % tk == 0)
                .collect();
            let m = Tensor::<B, 4, Bool>::from_data(
                burn::tensor::TensorData::new(m, [2, 1, tq, tk]),
                &dev,
            );
            let got = mixed_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                &AttentionMask::Explicit(m.clone()),
            );
            let want =
                attention_fallback(q, k, v, Some(m.expand([2, 3, tq, tk])), None, opts(false));
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Default::default());
        }
    }
}
