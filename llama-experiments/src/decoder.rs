//! Which [`Decoder`] runs the decode steps of `llama generate` and `llama bench --mode decode`
//! (`LLAMA_DECODE=auto|eager|graph`): CUDA graphs on libtorch CUDA where the binary has them
//! (`src/cuda_graph.rs`), the model's eager cached pass everywhere else.

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use llama_model::{Decoder, EagerDecoder};

/// Whether this binary can record decode steps as CUDA graphs (libtorch with CUDA headers at
/// build time: build.rs).
pub fn has_cuda_graphs() -> bool {
    cfg!(all(feature = "tch", llama_cuda_graph))
}

/// The decoder for backend `B` on `device`.
pub fn decoder_for<B: Backend>(device: &B::Device) -> Result<Box<dyn Decoder<B>>> {
    let choice = crate::op_registry::env_choice("LLAMA_DECODE", &["auto", "eager", "graph"])?;
    if choice == "eager" {
        return Ok(Box::new(EagerDecoder));
    }
    if let Some(graph) = graph_decoder::<B>(device) {
        return Ok(graph);
    }
    if choice == "graph" {
        bail!(
            "LLAMA_DECODE=graph: CUDA graphs need the tch backend on a CUDA device, in a binary \
             built with the CUDA runtime headers (see llama-experiments/build.rs)"
        );
    }
    Ok(Box::new(EagerDecoder))
}

/// The graph decoder when `B` is libtorch and the device a GPU.
#[allow(unused_variables)]
fn graph_decoder<B: Backend>(device: &B::Device) -> Option<Box<dyn Decoder<B>>> {
    #[cfg(all(feature = "tch", llama_cuda_graph))]
    {
        use std::any::{Any, TypeId};

        use burn::backend::LibTorch;
        use burn::backend::libtorch::LibTorchDevice;
        if TypeId::of::<B>() != TypeId::of::<LibTorch>() {
            return None;
        }
        let on_gpu = (device as &dyn Any)
            .downcast_ref::<LibTorchDevice>()
            .is_some_and(|d| matches!(d, LibTorchDevice::Cuda(_)));
        if !on_gpu {
            return None;
        }
        let graph: Box<dyn Decoder<LibTorch>> =
            Box::new(crate::cuda_graph::GraphDecoder::default());
        // `B` is `LibTorch` (checked above), so this is the same type.
        let any: Box<dyn Any> = Box::new(graph);
        return any.downcast::<Box<dyn Decoder<B>>>().ok().map(|b| *b);
    }
    #[allow(unreachable_code)]
    None
}
