//! SwiGLU's gate for CubeCL's CUDA backend: [`llama_model::swiglu`]'s native kernels.
//!
//! Why: Burn's fusion ran the gate `silu(a) ⊙ b` as one element-wise kernel of ~100 µs per `125m`
//! layer on an H200 (the 200 MB it moves take ~50 µs at the card's bandwidth) and the closed-form
//! backward as another of ~110 µs (docs/performance.md attempt 61). `swiglu_forward` and
//! `swiglu_backward` of `kernels.cu` (the libtorch CUDA path's) read each operand once in
//! four-element pieces and write the gate, or both gradients, in one pass.

use burn::tensor::activation::silu;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::OperationStreams;
use burn_ir::{CustomOpIr, OperationOutput, TensorIr};

use super::SOURCE;
use crate::cubecl_cublas::Cuda;
use crate::cubecl_launch::{self, Arg, Launch, Pass, Ran};
use llama_model::swiglu::closed_form_backward;

const THREADS: u32 = 256;

/// The operation's tensors are `[batch, time, hidden]`.
fn tensor(x: FloatTensor<Cuda>) -> Tensor<Cuda, 3> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

fn prim(x: Tensor<Cuda, 3>) -> FloatTensor<Cuda> {
    x.into_primitive().tensor()
}

/// Whether the kernels take `a` and `b` (one shape, f32 or bf16, not empty).
fn fits(a: &FloatTensor<Cuda>, b: &FloatTensor<Cuda>) -> bool {
    matches!(a.dtype, DType::F32 | DType::BF16)
        && b.dtype == a.dtype
        && a.shape == b.shape
        && a.shape.num_elements() > 0
}

/// `silu(a) ⊙ b` ([`llama_model::swiglu::NativeSwiglu::forward`]); Burn's tensor ops for inputs
/// the kernel does not take.
pub fn forward(a: FloatTensor<Cuda>, b: FloatTensor<Cuda>) -> FloatTensor<Cuda> {
    if !fits(&a, &b) {
        return prim(silu(tensor(a)) * tensor(b));
    }
    let client = a.client.clone();
    let streams = OperationStreams::with_inputs([&a, &b]);
    let out = TensorIr::uninit(client.create_empty_handle(), a.shape.clone(), a.dtype);
    let inputs = [a, b].map(|t| t.into_ir());
    let desc = CustomOpIr::new("swiglu_forward", &inputs, &[out]);
    Pass {
        desc,
        what: "SwiGLU's gate",
        run,
        scalars: vec![],
    }
    .register(&client, streams)
    .output()
}

/// `(da, db)` for the gate's output gradient `g` ([`llama_model::swiglu::NativeSwiglu::backward`]).
pub fn backward(
    a: FloatTensor<Cuda>,
    b: FloatTensor<Cuda>,
    g: FloatTensor<Cuda>,
) -> (FloatTensor<Cuda>, FloatTensor<Cuda>) {
    // The gradient arrives in the dtype autodiff accumulated it in.
    let g = if g.dtype == a.dtype || !fits(&a, &b) {
        g
    } else {
        <Cuda as burn::tensor::ops::FloatTensorOps<Cuda>>::float_cast(g, a.dtype.into())
    };
    if !fits(&a, &b) || g.shape != a.shape || g.dtype != a.dtype {
        let (da, db) = closed_form_backward(tensor(a), tensor(b), tensor(g));
        return (prim(da), prim(db));
    }
    let client = a.client.clone();
    let streams = OperationStreams::with_inputs([&a, &b, &g]);
    let outs =
        [0; 2].map(|_| TensorIr::uninit(client.create_empty_handle(), a.shape.clone(), a.dtype));
    let inputs = [a, b, g].map(|t| t.into_ir());
    let desc = CustomOpIr::new("swiglu_backward", &inputs, &outs);
    let [da, db] = Pass {
        desc,
        what: "SwiGLU's gate",
        run,
        scalars: vec![],
    }
    .register(&client, streams)
    .outputs();
    (da, db)
}

/// Allocates the outputs and queues the kernel (forward for two inputs, backward for three).
fn run(inputs: Vec<CubeTensor<CudaRuntime>>, _: &Pass) -> Ran {
    let inputs: Vec<_> = inputs
        .into_iter()
        .map(burn_cubecl::kernel::into_contiguous)
        .collect();
    let a = &inputs[0];
    let n = a.meta.num_elements();
    let outputs: Vec<_> = (0..inputs.len() - 1)
        .map(|_| cubecl_launch::empty(a, a.meta.shape().clone(), a.dtype))
        .collect();
    let sfx = if a.dtype == DType::BF16 {
        "bf16"
    } else {
        "f32"
    };
    let which = if inputs.len() == 2 {
        "forward"
    } else {
        "backward"
    };
    let tensors: Vec<&CubeTensor<CudaRuntime>> = inputs.iter().chain(outputs.iter()).collect();
    let mut args: Vec<Arg> = (0..tensors.len()).map(Arg::Ptr).collect();
    // Four-element pieces where every pointer allows them (the kernel checks).
    args.extend([Arg::I64(n as i64), Arg::I32(1)]);
    let launch = Launch {
        name: format!("swiglu_{which}_{sfx}"),
        // A thread per four elements, the grid-stride loop walking the rest.
        grid: (
            (n as u64 / 4).div_ceil(THREADS as u64).clamp(1, 65_536) as u32,
            1,
            1,
        ),
        threads: THREADS,
        args,
    };
    let result = cubecl_launch::queue(&SOURCE, &tensors, inputs.len(), &[], vec![launch]);
    (outputs, result)
}
