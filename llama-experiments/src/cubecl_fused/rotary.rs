//! The rotary embedding for CubeCL's CUDA backend: [`llama_model::rotary`]'s native rotation.
//!
//! Why: on CubeCL the rotation ran as tensor ops on the two halves of each head (slices, products,
//! a concatenation; its backward slice-assigns into zeros), about 5 ms of slices, copies and
//! element-wise kernels per `125m` step on an H200 (docs/performance.md attempt 55). The kernel
//! (`rotary` in `kernels.cu`) reads `x` through its strides (the heads' transposed layout needs no
//! copy) and writes the rotated tensor time-major (`[b, t, h, d]` in memory, as the projections
//! are) in one pass, either way, a thread per four pairs of elements that the rotation mixes
//! (four-element loads).

use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::OperationStreams;
use burn_ir::{CustomOpIr, OperationOutput, TensorIr};

use super::SOURCE;
use crate::cubecl_cublas::Cuda;
use crate::cubecl_launch::{self, Arg, Launch, Pass, Ran};

const THREADS: u32 = 256;

/// `x ⊙ C + swap(x) ⊙ S` ([`llama_model::rotary::NativeRotary::forward`]).
pub fn forward(
    x: FloatTensor<Cuda>,
    c: FloatTensor<Cuda>,
    s: FloatTensor<Cuda>,
) -> Option<FloatTensor<Cuda>> {
    rotate(x, c, s, false)
}

/// `g ⊙ C + swap(g ⊙ S)` ([`llama_model::rotary::NativeRotary::backward`]).
pub fn backward(
    g: FloatTensor<Cuda>,
    c: FloatTensor<Cuda>,
    s: FloatTensor<Cuda>,
) -> Option<FloatTensor<Cuda>> {
    rotate(g, c, s, true)
}

/// `x [batch, heads, time, dim]` rotated with the tables `[batch or 1, 1, time, dim]` (x's
/// dtype, f32 or bf16), time-major; `None` for shapes or dtypes the kernel does not take.
fn rotate(
    x: FloatTensor<Cuda>,
    c: FloatTensor<Cuda>,
    s: FloatTensor<Cuda>,
    backward: bool,
) -> Option<FloatTensor<Cuda>> {
    let [batch, heads, time, dim]: [usize; 4] = x.shape.to_vec().try_into().ok()?;
    let table_ok = |t: &FloatTensor<Cuda>| {
        let sz = t.shape.to_vec();
        t.dtype == x.dtype
            && sz.len() == 4
            && (sz[0] == batch || sz[0] == 1)
            && sz[1..] == [1, time, dim]
    };
    let fits = matches!(x.dtype, DType::F32 | DType::BF16)
        && table_ok(&c)
        && table_ok(&s)
        && c.shape == s.shape
        && dim % 2 == 0
        && x.shape.num_elements() > 0
        && [heads, time, dim].iter().all(|&d| i32::try_from(d).is_ok());
    if !fits {
        return None;
    }
    let client = x.client.clone();
    let streams = OperationStreams::with_inputs([&x, &c, &s]);
    let out = TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype);
    let inputs = [x, c, s].map(|t| t.into_ir());
    let desc = CustomOpIr::new("rotary", &inputs, &[out]);
    Some(
        Pass {
            desc,
            what: "the rotary embedding",
            run,
            scalars: vec![if backward { 1.0 } else { 0.0 }],
        }
        .register(&client, streams)
        .output(),
    )
}

/// Allocates the rotated tensor and queues the kernel.
fn run(inputs: Vec<CubeTensor<CudaRuntime>>, pass: &Pass) -> Ran {
    let mut inputs = inputs.into_iter();
    let x = inputs.next().expect("x");
    // The kernel reads x through its strides but needs unit stride along `dim`; the tables flat.
    let x = match x.meta.strides().last() {
        Some(1) => x,
        _ => burn_cubecl::kernel::into_contiguous(x),
    };
    let c = burn_cubecl::kernel::into_contiguous(inputs.next().expect("c"));
    let s = burn_cubecl::kernel::into_contiguous(inputs.next().expect("s"));
    let shape = x.meta.shape().to_vec();
    let (heads, time, dim) = (shape[1], shape[2], shape[3]);
    // Time-major ([b, t, h, d] in memory): attention reads it through its strides, and the
    // backward pass's rotated gradients go back into `[b, t, h·d]` rows without a copy.
    let y = cubecl_launch::empty_time_major(&x, [shape[0], heads, time, dim], x.dtype);
    let ys = y.meta.strides().to_vec();
    let n = y.meta.num_elements();
    let xs = x.meta.strides().to_vec();
    let cs = c.meta.strides().to_vec();
    let cb = if c.meta.shape()[0] == 1 { 0 } else { cs[0] };
    let sfx = if x.dtype == DType::BF16 {
        "bf16"
    } else {
        "f32"
    };
    let launch = Launch {
        name: format!("rotary_{sfx}"),
        // A thread per four pairs of elements (per pair where a row cannot be read by fours: the
        // kernel's grid-stride loop then walks the rest).
        grid: (
            (n as u64 / 8).div_ceil(THREADS as u64).clamp(1, 65_536) as u32,
            1,
            1,
        ),
        threads: THREADS,
        args: vec![
            Arg::Ptr(0),
            Arg::Ptr(1),
            Arg::Ptr(2),
            Arg::Ptr(3),
            Arg::I64(n as i64),
            Arg::I32(heads as i32),
            Arg::I32(time as i32),
            Arg::I32(dim as i32),
            Arg::I64(xs[0] as i64),
            Arg::I64(xs[1] as i64),
            Arg::I64(xs[2] as i64),
            Arg::I64(cb as i64),
            Arg::I64(cs[2] as i64),
            Arg::I64(ys[0] as i64),
            Arg::I64(ys[1] as i64),
            Arg::I64(ys[2] as i64),
            Arg::I32(i32::from(pass.scalars[0] != 0.0)),
        ],
    };
    let result = cubecl_launch::queue(&SOURCE, &[&x, &c, &s, &y], 3, &[], vec![launch]);
    (vec![y], result)
}
