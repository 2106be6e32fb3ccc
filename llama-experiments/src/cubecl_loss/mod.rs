//! The mean cross-entropy for CubeCL's CUDA backend (`--device cuda`, docs/performance.md
//! attempt 51): [`llama_model::loss`]'s native loss for `burn::backend::Cuda`.
//!
//! Why: the closed-form operation (`llama_model::loss`) runs as Burn's tensor ops, a log-softmax
//! over the `[tokens, vocab]` logits in f32 in several reductions and element-wise passes each way
//! (~10 ms of a `125m` step on an H200, where one read of the bf16 logits takes 0.25 ms).
//! `cross_entropy.cu` reads each row once forward (a running-maximum log-sum-exp, the row's loss)
//! and once backward (writing `(softmax − onehot) · g / n` in the logits' dtype), queued on
//! CubeCL's stream through [`crate::cubecl_launch`]; a one-block kernel then averages the rows'
//! losses in a fixed order.

use burn::tensor::ops::{FloatTensor, FloatTensorOps, IntTensor, IntTensorOps};
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::OperationStreams;
use burn_ir::{CustomOpIr, OperationOutput, TensorIr};

use crate::cubecl_cublas::{Cuda, Runtime};
use crate::cubecl_launch::{self, Arg, Launch, Pass, Ran, Source};

static SOURCE: Source = Source {
    name: "cross_entropy.cu",
    code: include_str!("cross_entropy.cu"),
    kernels: &[
        "cross_entropy_forward_f32",
        "cross_entropy_backward_f32",
        "cross_entropy_forward_bf16",
        "cross_entropy_backward_bf16",
        "mean_f32",
    ],
};

/// Threads per row, and of the mean's one block (`THREADS` in the source).
const THREADS: u32 = 512;

/// Whether the kernels compile and load on `device` (the loss is registered only then).
pub fn available(device: &CudaDevice) -> Result<(), String> {
    cubecl_launch::available(&SOURCE, device.index)
}

fn suffix(dtype: DType) -> Option<&'static str> {
    match dtype {
        DType::F32 => Some("f32"),
        DType::BF16 => Some("bf16"),
        _ => None,
    }
}

/// [`llama_model::loss::NativeLoss::forward`] for `burn::backend::Cuda`: the mean loss (`[1]`,
/// f32) and `[logits, targets as f32, lse]` for the backward pass; `None` for other dtypes or
/// shapes, or a vocabulary too large for exact f32 targets.
pub fn forward(
    logits: FloatTensor<Cuda>,
    targets: IntTensor<Cuda>,
) -> Option<(FloatTensor<Cuda>, Vec<FloatTensor<Cuda>>)> {
    let [n, vocab]: [usize; 2] = logits.shape.to_vec().try_into().ok()?;
    suffix(logits.dtype)?;
    if targets.shape.to_vec() != [n]
        || n == 0
        || vocab == 0
        || vocab >= 1 << 24
        || n > i32::MAX as usize
    {
        return None;
    }
    let targets = Cuda::int_into_float(targets, burn::tensor::FloatDType::F32);
    let client = logits.client.clone();
    let streams = OperationStreams::with_inputs([&logits, &targets]);
    let rows = |c: &burn_fusion::client::GlobalFusionClient<Runtime>| {
        TensorIr::uninit(c.create_empty_handle(), Shape::from([n]), DType::F32)
    };
    let mean = TensorIr::uninit(client.create_empty_handle(), Shape::from([1]), DType::F32);
    let outs = [rows(&client), mean];
    let inputs = [logits.clone().into_ir(), targets.clone().into_ir()];
    let desc = CustomOpIr::new("cross_entropy_forward", &inputs, &outs);
    let [lse, mean] = Pass {
        desc,
        what: "the cross-entropy",
        run,
        scalars: vec![],
    }
    .register(&client, streams)
    .outputs();
    Some((mean, vec![logits, targets, lse]))
}

/// [`llama_model::loss::NativeLoss::backward`] for `burn::backend::Cuda`.
pub fn backward(saved: Vec<FloatTensor<Cuda>>, dloss: FloatTensor<Cuda>) -> FloatTensor<Cuda> {
    let [logits, targets, lse]: [FloatTensor<Cuda>; 3] = saved
        .try_into()
        .expect("forward saves logits, targets and lse");
    let dloss = if dloss.dtype == DType::F32 {
        dloss
    } else {
        Cuda::float_cast(dloss, burn::tensor::FloatDType::F32)
    };
    let client = logits.client.clone();
    let out = TensorIr::uninit(
        client.create_empty_handle(),
        logits.shape.clone(),
        logits.dtype,
    );
    let streams = OperationStreams::with_inputs([&logits, &targets, &lse, &dloss]);
    let inputs = [logits, targets, lse, dloss].map(|x| x.into_ir());
    let desc = CustomOpIr::new("cross_entropy_backward", &inputs, &[out]);
    Pass {
        desc,
        what: "the cross-entropy",
        run,
        scalars: vec![],
    }
    .register(&client, streams)
    .output()
}

/// Allocates the pass's outputs and queues its kernel.
fn run(inputs: Vec<CubeTensor<CudaRuntime>>, _: &Pass) -> Ran {
    let inputs: Vec<_> = inputs
        .into_iter()
        .map(burn_cubecl::kernel::into_contiguous)
        .collect();
    let logits = &inputs[0];
    let [n, vocab]: [usize; 2] = logits.meta.shape().to_vec().try_into().expect("rank 2");
    let empty = |dims: Vec<usize>, dtype| cubecl_launch::empty(logits, dims, dtype);
    let sfx = suffix(logits.dtype).unwrap_or("f32");
    let grid = (n as u32, 1, 1);
    let v = Arg::I32(vocab as i32);
    if inputs.len() == 2 {
        // Forward: logits, targets, lse, the mean, the rows' losses (scratch).
        let outputs = vec![
            empty(vec![n], DType::F32),
            empty(vec![1], DType::F32),
            empty(vec![n], DType::F32),
        ];
        let rows = Launch {
            name: format!("cross_entropy_forward_{sfx}"),
            grid,
            threads: THREADS,
            args: vec![Arg::Ptr(0), Arg::Ptr(1), Arg::Ptr(2), Arg::Ptr(4), v],
        };
        let mean = Launch {
            name: "mean_f32".into(),
            grid: (1, 1, 1),
            threads: THREADS,
            args: vec![Arg::Ptr(4), Arg::Ptr(3), Arg::I64(n as i64)],
        };
        let tensors = [
            &inputs[0],
            &inputs[1],
            &outputs[0],
            &outputs[1],
            &outputs[2],
        ];
        let result = cubecl_launch::queue(&SOURCE, &tensors, 2, &[], vec![rows, mean]);
        let mut outputs = outputs;
        outputs.truncate(2);
        (outputs, result)
    } else {
        // Backward: logits, targets, lse, g, dlogits.
        let outputs = vec![empty(vec![n, vocab], logits.dtype)];
        let launch = Launch {
            name: format!("cross_entropy_backward_{sfx}"),
            grid,
            threads: THREADS,
            args: vec![
                Arg::Ptr(0),
                Arg::Ptr(1),
                Arg::Ptr(2),
                Arg::Ptr(3),
                Arg::Ptr(4),
                v,
                Arg::F32(1.0 / n as f32),
            ],
        };
        let tensors = [&inputs[0], &inputs[1], &inputs[2], &inputs[3], &outputs[0]];
        let result = cubecl_launch::queue(&SOURCE, &tensors, 4, &[], vec![launch]);
        (outputs, result)
    }
}
