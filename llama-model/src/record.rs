//! In-memory (de)serialisation of model weights, used to move the same weights between backends.

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder, RecorderError};
use burn::tensor::backend::Backend;

use crate::config::LlamaConfig;
use crate::error::ConfigError;
use crate::model::Llama;

/// Errors of loading weights into a model.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot decode weights: {0}")]
    Decode(#[from] RecorderError),
}

impl<B: Backend> Llama<B> {
    /// The weights as full-precision named MessagePack bytes (backend independent).
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        Ok(Recorder::<B>::record(
            &recorder,
            self.clone().into_record(),
            (),
        )?)
    }

    /// Builds a model of `config` on `device` (any backend) with the weights of [`Self::to_bytes`].
    pub fn from_bytes(
        config: &LlamaConfig,
        bytes: Vec<u8>,
        device: &B::Device,
    ) -> Result<Self, RecordError> {
        let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
        let record = Recorder::<B>::load(&recorder, bytes, device)?;
        Ok(config.init::<B>(device)?.load_record(record))
    }
}
