//! The whole decoder: embeddings, blocks, final norm, output head, loss.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor};

use crate::attention::AttentionMask;
use crate::block::Block;
use crate::cache::{KvCache, LayerCache};
use crate::config::LlamaConfig;
use crate::error::ConfigError;
use crate::ffn::linear;
use crate::knobs::{NormPlacement, PositionKind};
use crate::loss::cross_entropy;
use crate::norm::Norm;
use crate::position::{AbsolutePosition, Rope, Sinusoids};
use crate::precision::Precision;

/// A decoder-only Transformer built from a [`LlamaConfig`]; exactly LLaMA with the default knobs.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub tok_embeddings: Embedding<B>,
    pub position: Option<AbsolutePosition<B>>,
    pub rope: Option<Rope<B>>,
    pub layers: Vec<Block<B>>,
    /// Final norm (pre-norm models only).
    pub norm: Option<Norm<B>>,
    /// Output projection; `None` when tied to `tok_embeddings`.
    pub output: Option<Linear<B>>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    precision: Precision,
}

impl LlamaConfig {
    /// Validates the config and builds a randomly initialised model on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Llama<B>, ConfigError> {
        self.validate()?;
        let std = self.init_std;
        let tok_embeddings = EmbeddingConfig::new(self.vocab_size, self.dim)
            .with_initializer(Initializer::Normal { mean: 0.0, std })
            .init(device);
        let position = match self.position {
            PositionKind::Learned => Some(AbsolutePosition::learned(
                self.max_seq_len,
                self.dim,
                std,
                device,
            )),
            PositionKind::Sinusoidal => Some(AbsolutePosition::Sinusoidal(Sinusoids::new(
                self.dim,
                self.max_seq_len,
                device,
            ))),
            PositionKind::Rope | PositionKind::None => None,
        };
        let rope = (self.position == PositionKind::Rope)
            .then(|| Rope::new(self.head_dim(), self.max_seq_len, self.rope_theta, device));
        let layers = (0..self.n_layers)
            .map(|_| Block::new(self, device))
            .collect();
        let norm = (self.norm_placement == NormPlacement::Pre)
            .then(|| Norm::new(self.norm, self.dim, self.norm_eps, device));
        let output = (!self.tie_embeddings).then(|| linear(self.dim, self.vocab_size, std, device));
        Ok(Llama {
            tok_embeddings,
            position,
            rope,
            layers,
            norm,
            output,
            config: self.clone(),
            precision: Precision::F32,
        })
    }
}

impl<B: Backend> Llama<B> {
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The compute precision (not saved with the weights: a runtime choice).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Computes in `precision` from now on; parameters keep their dtype. Check the backend with
    /// [`Precision::check`] first.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// For inference: the projection weights (attention, feed-forward and an untied output head)
    /// stored in the compute dtype, so that a forward pass reads them as they are instead of
    /// casting each one on every call (under bf16 a decoded token otherwise reads each f32 matrix
    /// and writes and reads its bf16 copy: 8 bytes per weight instead of 2, and one more kernel per
    /// projection). The numbers are the same: the cast is the one each call would make. Embeddings,
    /// norms and a tied head keep their dtype (the residual stream stays in it). Projections that
    /// read the same input are also stacked into one weight for few-row steps
    /// ([`crate::stacked`]), and stored out-major where the backend's few-row product wants it
    /// ([`crate::gemv`]). Not for training: the master weights would be bf16. A no-op in f32.
    pub fn with_inference_weights(mut self) -> Self {
        let Some(dtype) = self.precision.compute_dtype() else {
            return self;
        };
        // Out-major where the backend's few-row product reads weights that way (`gemv`).
        let out_major = crate::gemv::registered::<B>();
        // Weights already in `dtype` (a checkpoint loaded for inference in it, `load_hf_as`) are
        // not cast again.
        let to = |w: Tensor<B, 2>| match w.dtype() == dtype {
            true => w,
            false => w.cast(dtype),
        };
        let cast = |l: Linear<B>| Linear {
            weight: l.weight.map(|w| match out_major {
                true => crate::gemv::out_major(to(w)),
                false => to(w),
            }),
            bias: l.bias.map(|b| b.map(|b| b.cast(dtype))),
        };
        self.layers = self
            .layers
            .into_iter()
            .map(|mut block| {
                block.attention.wq = cast(block.attention.wq);
                block.attention.wk = cast(block.attention.wk);
                block.attention.wv = cast(block.attention.wv);
                block.attention.wo = cast(block.attention.wo);
                block.feed_forward.w1 = cast(block.feed_forward.w1);
                block.feed_forward.w3 = block.feed_forward.w3.map(cast);
                block.feed_forward.w2 = cast(block.feed_forward.w2);
                block.attention.stack_projections();
                block.feed_forward.stack_projections();
                block
            })
            .collect();
        self.output = self.output.map(cast);
        self
    }

    /// Position ids `0..t` for every row.
    pub fn default_positions(batch: usize, t: usize, device: &B::Device) -> Tensor<B, 2, Int> {
        Tensor::<B, 1, Int>::arange(0..t as i64, device)
            .unsqueeze::<2>()
            .expand([batch, t])
    }

    /// Logits `[batch, time, vocab]` of a full causal pass over `tokens: [batch, time]`.
    ///
    /// # Panics
    /// When `time > max_seq_len` (callers check lengths first).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = tokens.dims();
        assert!(
            t <= self.config.max_seq_len,
            "sequence of {t} tokens exceeds max_seq_len {}",
            self.config.max_seq_len
        );
        let positions = Self::default_positions(b, t, &tokens.device());
        let hidden = self.forward_hidden(tokens, &positions, &AttentionMask::Causal, None);
        self.logits(hidden)
    }

    /// Final hidden states `[batch, time, dim]` (after the final norm). With a cache, the keys and
    /// values of these tokens are appended to it and attention sees the whole cache.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: &Tensor<B, 2, Int>,
        mask: &AttentionMask<B>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        // `burn::nn::Embedding::forward`'s lookup, its weight gradient by the backend's own kernel
        // where one is registered.
        let mut x = crate::embedding::embedding(self.tok_embeddings.weight.val(), tokens);
        if let Some(pos) = &self.position {
            let p = pos.forward(positions);
            x = x.clone() + p.cast(x.dtype());
        }
        // The rotary angles in the dtype queries and keys come in (the projections' output dtype).
        let angles = self.rope.as_ref().map(|rope| {
            let dtype = self.precision.compute_dtype().unwrap_or(x.dtype());
            rope.angles(positions, dtype)
        });
        // Each block's last residual update goes to the next norm (one kernel where the backend
        // fuses them, `add_norm`).
        let mut pending = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[i]);
            let rope = angles.as_ref();
            (x, pending) =
                layer.forward_deferred(x, pending, rope, mask, layer_cache, self.precision);
        }
        let dtype = x.dtype();
        match (&self.norm, pending) {
            (Some(norm), Some(delta)) => norm.add_forward_to(x, delta, dtype).1,
            (Some(norm), None) => norm.forward(x),
            (None, Some(delta)) => crate::residual::add(x, delta),
            (None, None) => x,
        }
    }

    /// Output logits for hidden states `[batch, time, dim]` (in the compute dtype).
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.output {
            Some(out) => self.precision.linear(out, hidden),
            None => {
                let [b, t, d] = hidden.dims();
                let w = self.tok_embeddings.weight.val(); // [vocab, dim]
                let v = w.dims()[0];
                self.precision
                    .matmul_t(hidden.reshape([b * t, d]), w)
                    .reshape([b, t, v])
            }
        }
    }

    /// Mean next-token cross-entropy over `tokens: [batch, time + 1]` (inputs are `[.., :time]`,
    /// targets `[.., 1:]`).
    pub fn loss(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [b, t1] = tokens.dims();
        let t = t1 - 1;
        let inputs = tokens.clone().narrow(1, 0, t);
        let targets = tokens.narrow(1, 1, t);
        let logits = self.forward(inputs);
        let v = logits.dims()[2];
        cross_entropy(logits.reshape([b * t, v]), targets.reshape([b * t]))
    }

    /// One token per row at cache index `slot` with the same operations and shapes at every
    /// position (a CUDA graph captured once replays it; `forward_hidden` with a cache instead
    /// reads the filled prefix, whose length changes every step). `tokens`, `positions`:
    /// `[batch, 1]`; `slot`: `[1]`, the cache index written (still empty: see
    /// [`LayerCache::set_slot`]); `hidden`: `[batch, 1, 1, capacity]`, `true` for the keys each
    /// row must not see (later indices, left padding). Attention reads the whole capacity.
    /// Returns the logits `[batch, vocab]` in f32.
    pub fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: &Tensor<B, 2, Int>,
        slot: Tensor<B, 1, Int>,
        hidden: Tensor<B, 4, Bool>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let [b, _] = tokens.dims();
        for layer in cache.iter_mut() {
            layer.set_slot(Some(slot.clone()));
        }
        let h = self.forward_hidden(
            tokens,
            positions,
            &AttentionMask::Explicit(hidden),
            Some(cache),
        );
        for layer in cache.iter_mut() {
            layer.set_slot(None);
        }
        let logits = self.logits(h);
        let v = logits.dims()[2];
        logits.reshape([b, v]).cast(DType::F32)
    }

    /// An empty cache for `batch` rows and up to `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize, device: &B::Device) -> KvCache<B> {
        let c = &self.config;
        (0..c.n_layers)
            .map(|_| LayerCache::new(batch, c.kv_heads(), capacity, c.head_dim(), device))
            .collect()
    }
}
