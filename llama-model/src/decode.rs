//! How a decode loop runs one token per row against the KV cache.
//!
//! [`generate_with`](crate::generate::generate_with) and `llama bench --mode decode` hand each
//! step to a [`Decoder`]: [`EagerDecoder`] runs the model's usual cached pass (attention over the
//! filled prefix); [`StaticDecoder`] runs [`Llama::decode_step`], whose operations and shapes are
//! the same at every position, the form a backend can record once and replay (the `llama` tool's
//! CUDA-graph decoder on libtorch wraps it).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::attention::AttentionMask;
use crate::cache::KvCache;
use crate::generate::{padding_mask, positions};
use crate::model::Llama;

/// A decode step's tokens, one per row.
#[derive(Debug, Clone)]
pub enum StepTokens<'a, B: Backend> {
    /// Ids on the host.
    Host(&'a [i64]),
    /// `[batch, 1]` on the model's device (drawn there from the step before: the host need not
    /// wait for them).
    Device(Tensor<B, 2, Int>),
}

impl<B: Backend> StepTokens<'_, B> {
    /// The tokens `[batch, 1]` on `device` (ids from the host copied there).
    pub fn on(self, device: &B::Device) -> Tensor<B, 2, Int> {
        match self {
            StepTokens::Host(ids) => {
                Tensor::from_data(TensorData::new(ids.to_vec(), [ids.len(), 1]), device)
            }
            StepTokens::Device(t) => t,
        }
    }
}

/// One decode step: row `r`'s token at cache index `cur`; rows are left-padded by `pads[r]`
/// positions (one entry per row).
#[derive(Debug, Clone)]
pub struct StepInput<'a, B: Backend> {
    pub tokens: StepTokens<'a, B>,
    pub pads: &'a [usize],
    pub cur: usize,
}

impl<B: Backend> StepInput<'_, B> {
    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.pads.len()
    }

    /// Each row's position id (its index minus its padding).
    pub fn positions(&self) -> Vec<i64> {
        self.pads
            .iter()
            .map(|&p| self.cur.saturating_sub(p) as i64)
            .collect()
    }

    /// `[batch × capacity]`, `true` for the keys a row must not see: its padding and every index
    /// after `cur`.
    pub fn hidden(&self, capacity: usize) -> Vec<bool> {
        self.pads
            .iter()
            .flat_map(|&p| (0..capacity).map(move |k| k < p || k > self.cur))
            .collect()
    }
}

/// Runs decode steps.
pub trait Decoder<B: Backend> {
    /// The step's logits `[batch, vocab]`, f32, on the device (a replaying decoder may return
    /// its output buffer: read it before the next step).
    fn step(
        &mut self,
        model: &Llama<B>,
        cache: &mut KvCache<B>,
        input: StepInput<'_, B>,
    ) -> Tensor<B, 2>;

    /// A short name for reports (`eager`, `static`, `cuda-graph`).
    fn name(&self) -> &'static str;
}

/// The model's cached pass: the new token against the filled prefix of the cache.
#[derive(Debug, Default, Clone, Copy)]
pub struct EagerDecoder;

impl<B: Backend> Decoder<B> for EagerDecoder {
    fn name(&self) -> &'static str {
        "eager"
    }

    fn step(
        &mut self,
        model: &Llama<B>,
        cache: &mut KvCache<B>,
        input: StepInput<'_, B>,
    ) -> Tensor<B, 2> {
        let device = device_of(model);
        let pos = positions::<B>(input.pads, input.cur, 1, &device);
        let mask = if input.pads.iter().any(|&p| p > 0) {
            AttentionMask::Explicit(padding_mask::<B>(input.pads, input.cur, 1, &device))
        } else {
            // One query per row against the whole unpadded prefix: nothing to mask.
            AttentionMask::Full
        };
        let tokens = input.tokens.on(&device);
        let hidden = model.forward_hidden(tokens, &pos, &mask, Some(cache));
        model
            .logits(hidden)
            .squeeze_dim::<2>(1)
            .cast(burn::tensor::DType::F32)
    }
}

/// [`Llama::decode_step`] with inputs made from the host each step: the reference for a
/// recorded replay of the same step, and itself a decoder on any backend (it reads the whole
/// capacity every step, so on its own it is slower than [`EagerDecoder`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct StaticDecoder;

impl<B: Backend> Decoder<B> for StaticDecoder {
    fn name(&self) -> &'static str {
        "static"
    }

    fn step(
        &mut self,
        model: &Llama<B>,
        cache: &mut KvCache<B>,
        input: StepInput<'_, B>,
    ) -> Tensor<B, 2> {
        let t = StaticInputs::<B>::new(input, cache, &device_of(model));
        model.decode_step(t.tokens, &t.positions, t.slot, t.hidden, cache)
    }
}

/// [`Llama::decode_step`]'s inputs on the device.
#[derive(Debug, Clone)]
pub struct StaticInputs<B: Backend> {
    /// `[batch, 1]`
    pub tokens: Tensor<B, 2, Int>,
    /// `[batch, 1]`
    pub positions: Tensor<B, 2, Int>,
    /// `[1]`
    pub slot: Tensor<B, 1, Int>,
    /// `[batch, 1, 1, capacity]`
    pub hidden: Tensor<B, 4, Bool>,
}

impl<B: Backend> StaticInputs<B> {
    /// # Panics
    /// When the cache has no layers or `input.cur` lies outside its capacity.
    pub fn new(input: StepInput<'_, B>, cache: &KvCache<B>, device: &B::Device) -> Self {
        let b = input.batch();
        let cap = cache[0].capacity();
        assert!(
            input.cur < cap,
            "cache index {} >= capacity {cap}",
            input.cur
        );
        Self {
            positions: Tensor::from_data(TensorData::new(input.positions(), [b, 1]), device),
            slot: Tensor::from_data(TensorData::new(vec![input.cur as i64], [1]), device),
            hidden: Tensor::from_data(TensorData::new(input.hidden(cap), [b, 1, 1, cap]), device),
            tokens: input.tokens.on(device),
        }
    }
}

fn device_of<B: Backend>(model: &Llama<B>) -> B::Device {
    use burn::module::Module;
    model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device")
}
