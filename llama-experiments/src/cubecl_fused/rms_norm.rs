//! RMSNorm for CubeCL's CUDA backend (docs/performance.md attempt 54):
//! [`llama_model::rms_norm`]'s native kernels for `burn::backend::Cuda`.
//!
//! Why: on CubeCL the norm ran as Burn's tensor ops (burn-nn's formula), whose row means and the
//! gain's gradient (a sum over all rows) are separate reductions, about 130 µs each at `125m`
//! batch 8 on an H200 against the ~20 µs one read of the f32 rows takes. The kernels are the
//! ones libtorch CUDA runs (`cuda_kernels/kernels.cu`, compiled here as its own NVRTC module):
//! forward one block per row (the row's `r = 1/√(mean(x²)+ε)` kept, `y` written in the next
//! layer's dtype), backward `dx` per row and the gain's gradient as per-block partial rows,
//! then their column sums (`column_sum_f32`).

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, FloatDType, Shape};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::OperationStreams;
use burn_ir::{CustomOpIr, OperationOutput, TensorIr};

use super::SOURCE;
use crate::cubecl_cublas::Cuda;
use crate::cubecl_launch::{self, Arg, Launch, Pass, Ran};
use crate::row_kernels::row_block;

/// Blocks of the backward pass (each adds its rows' share of the gain's gradient).
const ROW_GRID: usize = 1024;

/// The kernels' suffix for input dtype `x` and output dtype `y`.
fn suffix(x: DType, y: DType) -> Option<&'static str> {
    match (x, y) {
        (DType::F32, DType::F32) => Some("f32"),
        (DType::BF16, DType::BF16) => Some("bf16"),
        (DType::F32, DType::BF16) => Some("f32_bf16"),
        _ => None,
    }
}

fn f32_of(t: FloatTensor<Cuda>) -> FloatTensor<Cuda> {
    match t.dtype {
        DType::F32 => t,
        _ => Cuda::float_cast(t, FloatDType::F32),
    }
}

/// [`llama_model::rms_norm::NativeRmsNorm::forward`] for `burn::backend::Cuda`: `y` in `out` and
/// `[x, γ (f32), r]` for the backward pass; `None` for dtypes or widths the kernels do not take.
pub fn forward(
    x: FloatTensor<Cuda>,
    gamma: FloatTensor<Cuda>,
    eps: f64,
    out: DType,
) -> Option<(FloatTensor<Cuda>, Vec<FloatTensor<Cuda>>)> {
    let [n, dim]: [usize; 2] = x.shape.to_vec().try_into().ok()?;
    suffix(x.dtype, out)?;
    row_block(dim)?;
    if gamma.shape.to_vec() != [dim] || n == 0 || i32::try_from(dim).is_err() {
        return None;
    }
    let gamma = f32_of(gamma);
    let client = x.client.clone();
    let streams = OperationStreams::with_inputs([&x, &gamma]);
    let outs = [
        TensorIr::uninit(client.create_empty_handle(), Shape::from([n, dim]), out),
        TensorIr::uninit(client.create_empty_handle(), Shape::from([n]), DType::F32),
    ];
    let inputs = [x.clone().into_ir(), gamma.clone().into_ir()];
    let desc = CustomOpIr::new("rms_norm_forward", &inputs, &outs);
    let [y, r] = Pass {
        desc,
        what: "RMSNorm",
        run,
        scalars: vec![eps],
    }
    .register(&client, streams)
    .outputs();
    Some((y, vec![x, gamma, r]))
}

/// [`llama_model::rms_norm::NativeRmsNorm::backward`] for `burn::backend::Cuda`: `(dx in x's
/// dtype, dγ in f32)`.
pub fn backward(
    saved: Vec<FloatTensor<Cuda>>,
    dy: FloatTensor<Cuda>,
) -> (FloatTensor<Cuda>, FloatTensor<Cuda>) {
    let [x, gamma, r]: [FloatTensor<Cuda>; 3] =
        saved.try_into().expect("forward saves x, gamma and r");
    // The output's gradient in a dtype the kernels pair with x's (x's own otherwise).
    let dy = match suffix(x.dtype, dy.dtype) {
        Some(_) => dy,
        None => Cuda::float_cast(dy, x.dtype.into()),
    };
    let dim = x.shape[1];
    let client = x.client.clone();
    let streams = OperationStreams::with_inputs([&dy, &x, &gamma, &r]);
    let outs = [
        TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype),
        TensorIr::uninit(client.create_empty_handle(), Shape::from([dim]), DType::F32),
    ];
    let inputs = [dy, x, gamma, r].map(|t| t.into_ir());
    let desc = CustomOpIr::new("rms_norm_backward", &inputs, &outs);
    let [dx, dgamma] = Pass {
        desc,
        what: "RMSNorm's backward",
        run,
        scalars: vec![],
    }
    .register(&client, streams)
    .outputs();
    (dx, dgamma)
}

/// Allocates the pass's outputs (shapes and dtypes from its description) and queues its kernel.
fn run(inputs: Vec<CubeTensor<CudaRuntime>>, pass: &Pass) -> Ran {
    let inputs: Vec<_> = inputs
        .into_iter()
        .map(burn_cubecl::kernel::into_contiguous)
        .collect();
    let first = &inputs[0];
    let outputs: Vec<_> = (pass.desc.outputs.iter())
        .map(|o| cubecl_launch::empty(first, o.shape.clone(), o.dtype))
        .collect();
    let forward = inputs.len() == 2;
    // Forward: x, γ → y, r. Backward: dy, x, γ, r → dx, dγ (and the partial rows, scratch).
    let (x, y) = match forward {
        true => (&inputs[0], &outputs[0]),
        false => (&inputs[1], &inputs[0]),
    };
    let [n, dim]: [usize; 2] = x.meta.shape().to_vec().try_into().expect("rank 2");
    let sfx = suffix(x.dtype, y.dtype).expect("checked when registered");
    let block = row_block(dim).expect("checked when registered") as u32;
    let launch = match forward {
        true => Launch {
            name: format!("rms_norm_forward_{sfx}"),
            grid: (n as u32, 1, 1),
            threads: block,
            args: vec![
                Arg::Ptr(0),
                Arg::Ptr(1),
                Arg::Ptr(2),
                Arg::Ptr(3),
                Arg::I32(dim as i32),
                Arg::F32(pass.scalars[0] as f32),
            ],
        },
        false => Launch {
            name: format!("rms_norm_backward_{sfx}"),
            grid: (n.min(ROW_GRID) as u32, 1, 1),
            threads: block,
            args: vec![
                Arg::Ptr(0),
                Arg::Ptr(1),
                Arg::Ptr(2),
                Arg::Ptr(3),
                Arg::Ptr(4),
                Arg::Ptr(6),
                Arg::I64(n as i64),
                Arg::I32(dim as i32),
            ],
        },
    };
    let mut outputs = outputs;
    let mut launches = vec![launch];
    if !forward {
        // Scratch: the blocks' partial rows of the gain's gradient, then their column sums.
        let rows = n.min(ROW_GRID);
        outputs.push(cubecl_launch::empty(first, [rows, dim], DType::F32));
        launches.push(Launch {
            name: "column_sum_f32".into(),
            grid: (dim.div_ceil(32) as u32, 1, 1),
            threads: 256,
            args: vec![
                Arg::Ptr(6),
                Arg::Ptr(5),
                Arg::I32(rows as i32),
                Arg::I32(dim as i32),
            ],
        });
    }
    let tensors: Vec<&CubeTensor<CudaRuntime>> = inputs.iter().chain(&outputs).collect();
    let result = cubecl_launch::queue(&SOURCE, &tensors, inputs.len(), &[], launches);
    outputs.truncate(2);
    (outputs, result)
}
