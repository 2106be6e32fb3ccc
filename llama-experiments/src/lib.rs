//! Library side of the `llama` command-line tool (the binary is `src/main.rs`).

pub mod ablate;
pub mod backend;
pub mod batcher;
pub mod bench;
pub mod check;
pub mod checkpoint;
#[cfg(feature = "cuda-untuned")]
pub mod cubecl_adamw;
#[cfg(feature = "cuda-untuned")]
pub mod cubecl_cublas;
#[cfg(feature = "cuda-untuned")]
pub mod cubecl_embedding;
#[cfg(feature = "cuda-untuned")]
pub mod cubecl_flash;
#[cfg(feature = "cuda-untuned")]
pub mod cubecl_fused;
#[cfg(feature = "cuda-untuned")]
mod cubecl_launch;
#[cfg(feature = "cuda-untuned")]
pub mod cubecl_loss;
#[cfg(feature = "cuda-untuned")]
pub mod cubecl_sum_squares;
#[cfg(all(feature = "tch", llama_cuda_graph))]
pub mod cuda_graph;
#[cfg(feature = "tch")]
pub mod cuda_kernels;
#[cfg(any(feature = "cuda-untuned", feature = "tch"))]
pub mod cupti_stream;
pub mod data;
pub mod decoder;
pub mod eval;
#[cfg(feature = "flex")]
pub mod flex_kernels;
pub mod generate;
pub mod gpu_trace;
pub mod host_profile;
#[cfg(feature = "tch")]
pub mod libtorch_adamw;
#[cfg(feature = "tch")]
pub mod libtorch_attention;
#[cfg(feature = "tch")]
mod libtorch_autograd;
#[cfg(feature = "tch")]
pub mod libtorch_fused;
#[cfg(feature = "tch")]
pub mod libtorch_loss;
#[cfg(feature = "tch")]
pub mod libtorch_residual;
#[cfg(feature = "tch")]
pub mod libtorch_swiglu;
pub mod oom;
mod op_registry;
pub mod params;
pub mod plot;
pub mod quickstart;
#[cfg(any(feature = "tch", feature = "cuda-untuned"))]
mod row_kernels;
pub mod score;
pub mod train;
