//! Burn's `Batcher` for the packed token windows of `llama_data::dataset::PackedDataset`: a
//! batch of `seq_len + 1` ids per sequence, from which training takes inputs and shifted targets.

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;

/// `[batch, seq_len + 1]` token ids.
#[derive(Debug, Clone)]
pub struct TokenBatch<B: Backend> {
    pub tokens: Tensor<B, 2, Int>,
}

impl<B: Backend> TokenBatch<B> {
    /// `[batch, seq_len]`: positions `0..seq_len`.
    pub fn inputs(&self) -> Tensor<B, 2, Int> {
        let [b, t] = self.tokens.dims();
        self.tokens.clone().slice([0..b, 0..t - 1])
    }

    /// `[batch, seq_len]`: positions `1..=seq_len`, the next token of each input.
    pub fn targets(&self) -> Tensor<B, 2, Int> {
        let [b, t] = self.tokens.dims();
        self.tokens.clone().slice([0..b, 1..t])
    }
}

/// Stacks equal-length windows into a [`TokenBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SequenceBatcher;

impl<B: Backend> Batcher<B, Vec<u32>, TokenBatch<B>> for SequenceBatcher {
    /// Windows of one dataset all have `seq_len + 1` tokens; a shorter one would be a bug in
    /// the dataset, so lengths are checked (`assert!`) rather than padded silently.
    fn batch(&self, items: Vec<Vec<u32>>, device: &B::Device) -> TokenBatch<B> {
        let width = items.first().map_or(0, Vec::len);
        assert!(
            items.iter().all(|w| w.len() == width),
            "windows of unequal length"
        );
        let ids: Vec<i64> = items.iter().flatten().map(|&t| t as i64).collect();
        let tokens = Tensor::from_data(TensorData::new(ids, [items.len(), width]), device);
        TokenBatch { tokens }
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn batches_windows_into_inputs_and_shifted_targets() {
        let device = Default::default();
        let batch: TokenBatch<NdArray> =
            SequenceBatcher.batch(vec![vec![1, 5, 6, 7], vec![1, 8, 9, 2]], &device);
        assert_eq!(batch.tokens.dims(), [2, 4]);
        let inputs: Vec<i64> = batch
            .inputs()
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        let targets: Vec<i64> = batch
            .targets()
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(inputs, [1, 5, 6, 1, 8, 9]);
        assert_eq!(targets, [5, 6, 7, 8, 9, 2]);
    }
}
