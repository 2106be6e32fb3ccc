//! The token embedding's weight gradient for CubeCL's CUDA backend (`--device cuda`,
//! docs/performance.md attempt 52): [`llama_model::embedding`]'s native backward for
//! `burn::backend::Cuda`.
//!
//! Why: Burn's `embedding_backward` is a `select_assign` into zeros, and CubeCL's kernel for it
//! runs one thread per column, each adding every token's value in turn (768 threads walking 16,384
//! tokens at `125m` batch 8: 6.4 ms of the step on an H200). `embedding.cu` clears the
//! `[vocab, dim]` gradient and adds each token's row with f32 atomics, one block per token, queued
//! on CubeCL's stream through [`crate::cubecl_launch`]. The sums into a row that several tokens
//! share are then not in a fixed order; `LLAMA_EMBEDDING=decomposed` keeps Burn's kernel.

use burn::tensor::ops::{FloatTensor, IntTensor, IntTensorOps};
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::OperationStreams;
use burn_ir::{CustomOpIr, OperationOutput, TensorIr};

use crate::cubecl_cublas::Cuda;
use crate::cubecl_launch::{self, Arg, Launch, Pass, Ran, Source};

static SOURCE: Source = Source {
    name: "embedding.cu",
    code: include_str!("embedding.cu"),
    kernels: &["embedding_zero", "embedding_backward"],
};

const THREADS: u32 = 256;

/// Whether the kernels compile and load on `device` (the backward is registered only then).
pub fn available(device: &CudaDevice) -> Result<(), String> {
    cubecl_launch::available(&SOURCE, device.index)
}

/// [`llama_model::embedding::NativeEmbedding::backward`] for `burn::backend::Cuda`: the f32
/// gradient of a `[vocab, dim]` weight from `dy [n, dim]` (f32) and the token ids `[n]`; `None`
/// for other dtypes or shapes, or a vocabulary too large for exact f32 ids.
pub fn backward(
    dy: FloatTensor<Cuda>,
    ids: IntTensor<Cuda>,
    vocab: usize,
) -> Option<FloatTensor<Cuda>> {
    let [n, dim]: [usize; 2] = dy.shape.to_vec().try_into().ok()?;
    let fits = dy.dtype == DType::F32
        && ids.shape.to_vec() == [n]
        && n > 0
        && dim > 0
        && vocab > 0
        && vocab < 1 << 24
        && n <= i32::MAX as usize
        && i32::try_from(dim).is_ok();
    if !fits {
        return None;
    }
    let ids = Cuda::int_into_float(ids, burn::tensor::FloatDType::F32);
    let client = dy.client.clone();
    let streams = OperationStreams::with_inputs([&dy, &ids]);
    let out = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from([vocab, dim]),
        DType::F32,
    );
    let inputs = [dy.into_ir(), ids.into_ir()];
    let desc = CustomOpIr::new("embedding_backward", &inputs, &[out]);
    Some(
        Pass {
            desc,
            what: "the embedding's gradient",
            run,
            scalars: vec![],
        }
        .register(&client, streams)
        .output(),
    )
}

/// Allocates the gradient (`outputs[0]`'s shape) and queues the clearing and the additions.
fn run(inputs: Vec<CubeTensor<CudaRuntime>>, pass: &Pass) -> Ran {
    let inputs: Vec<_> = inputs
        .into_iter()
        .map(burn_cubecl::kernel::into_contiguous)
        .collect();
    let dy = &inputs[0];
    let [n, dim]: [usize; 2] = dy.meta.shape().to_vec().try_into().expect("rank 2");
    let vocab = pass.desc.outputs[0].shape[0];
    let dw = cubecl_launch::empty(dy, [vocab, dim], DType::F32);
    let total = (vocab * dim) as i64;
    let zero = Launch {
        name: "embedding_zero".into(),
        grid: (
            (total as u64).div_ceil(THREADS as u64 * 4).clamp(1, 4096) as u32,
            1,
            1,
        ),
        threads: THREADS,
        args: vec![Arg::Ptr(2), Arg::I64(total)],
    };
    let add = Launch {
        name: "embedding_backward".into(),
        grid: (n as u32, 1, 1),
        threads: THREADS,
        args: vec![
            Arg::Ptr(0),
            Arg::Ptr(1),
            Arg::Ptr(2),
            Arg::I32(dim as i32),
            Arg::I32(vocab as i32),
        ],
    };
    let tensors = [&inputs[0], &inputs[1], &dw];
    let result = cubecl_launch::queue(&SOURCE, &tensors, 2, &[], vec![zero, add]);
    (vec![dw], result)
}
