//! `Σ x²` of a flat vector for CubeCL's CUDA backend (`--device cuda`, docs/performance.md
//! attempt 53): the squared norm of each gradient bucket for the global-norm clipping.
//!
//! Why: written as `x.square().sum()`, the sum over a whole bucket (tens of millions of elements)
//! runs as CubeCL's `shared_sum` kernel, about 1.1 ms per 27M-element bucket on an H200 (100 GB/s,
//! 5.5 ms of a `125m` step, scaling with the parameters). `sum_squares.cu` reads the bucket once
//! with 16-byte loads into at most 1,024 per-block partial sums (the grid depends only on the
//! length: the same result every run); Burn adds the partials.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::OperationStreams;
use burn_ir::{CustomOpIr, OperationOutput, TensorIr};

use crate::cubecl_cublas::Cuda;
use crate::cubecl_launch::{self, Arg, Launch, Pass, Ran, Source};

static SOURCE: Source = Source {
    name: "sum_squares.cu",
    code: include_str!("sum_squares.cu"),
    kernels: &["sum_squares_f32", "sum_squares_bf16"],
};

/// Threads per block (`THREADS` in the source) and the most blocks (partial sums).
const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 1024;

/// Set once the kernels have loaded (`LLAMA_GRAD_NORM=decomposed` leaves it unset).
static ON: AtomicBool = AtomicBool::new(false);

/// Loads the kernels on `device` and, if they load, routes [`try_sum_squares`] through them.
pub fn enable(device: &CudaDevice) -> Result<(), String> {
    cubecl_launch::available(&SOURCE, device.index)?;
    ON.store(true, Ordering::Relaxed);
    Ok(())
}

/// `Σ t²` (`[1]`, f32) by the kernels where `t` is CubeCL's CUDA tensor of f32 or bf16 and they
/// are enabled, else `t` back.
pub fn try_sum_squares<I: burn::tensor::backend::Backend>(
    t: Tensor<I, 1>,
) -> Result<Tensor<I, 1>, Tensor<I, 1>> {
    let back = |b: Box<dyn Any>| *b.downcast::<Tensor<I, 1>>().expect("its own type");
    if !ON.load(Ordering::Relaxed) {
        return Err(t);
    }
    let boxed: Box<dyn Any> = Box::new(t);
    let t = match boxed.downcast::<Tensor<Cuda, 1>>() {
        Ok(t) => *t,
        Err(boxed) => return Err(back(boxed)),
    };
    match sum_squares(t.clone().into_primitive().tensor()) {
        Some(s) => {
            let out: Box<dyn Any> =
                Box::new(Tensor::<Cuda, 1>::from_primitive(TensorPrimitive::Float(s)));
            Ok(back(out))
        }
        None => Err(back(Box::new(t))),
    }
}

/// `Σ Σ t²` over `ts` (`[1]`, f32) by the kernels, one launch per tensor into one buffer of
/// partial sums (a bucket's gradients where they lie: ~3 µs per launch against two launches and
/// a sum per tensor), else `ts` back.
pub fn try_sum_squares_all<I: burn::tensor::backend::Backend>(
    ts: Vec<Tensor<I, 1>>,
) -> Result<Tensor<I, 1>, Vec<Tensor<I, 1>>> {
    if !ON.load(Ordering::Relaxed) || ts.is_empty() {
        return Err(ts);
    }
    let boxed: Box<dyn Any> = Box::new(ts);
    let ts = match boxed.downcast::<Vec<Tensor<Cuda, 1>>>() {
        Ok(ts) => *ts,
        Err(boxed) => return Err(*boxed.downcast::<Vec<Tensor<I, 1>>>().expect("its own type")),
    };
    let xs: Vec<FloatTensor<Cuda>> = ts
        .iter()
        .map(|t| t.clone().into_primitive().tensor())
        .collect();
    let back = |b: Box<dyn Any>| *b.downcast::<Tensor<I, 1>>().expect("I is Cuda here");
    match sum_squares_all(xs) {
        Some(s) => Ok(back(Box::new(Tensor::<Cuda, 1>::from_primitive(
            TensorPrimitive::Float(s),
        )))),
        None => {
            let boxed: Box<dyn Any> = Box::new(ts);
            Err(*boxed
                .downcast::<Vec<Tensor<I, 1>>>()
                .expect("I is Cuda here"))
        }
    }
}

/// Blocks (partial sums) for a vector of `n` elements: the grid depends only on the length.
fn blocks(n: usize) -> usize {
    n.div_ceil(THREADS as usize * 8).min(MAX_BLOCKS)
}

/// `Σ Σ x²` (`[1]`, f32) over flat f32 or bf16 vectors, or `None` if one is not.
fn sum_squares_all(xs: Vec<FloatTensor<Cuda>>) -> Option<FloatTensor<Cuda>> {
    let ok = |x: &FloatTensor<Cuda>| {
        x.shape.num_dims() == 1
            && x.shape.num_elements() > 0
            && matches!(x.dtype, DType::F32 | DType::BF16)
    };
    if xs.is_empty() || !xs.iter().all(ok) {
        return None;
    }
    let total: usize = xs.iter().map(|x| blocks(x.shape.num_elements())).sum();
    let client = xs[0].client.clone();
    let streams = OperationStreams::with_inputs(xs.iter());
    let out = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from([total]),
        DType::F32,
    );
    let inputs: Vec<_> = xs.into_iter().map(|x| x.into_ir()).collect();
    let desc = CustomOpIr::new("sum_squares", &inputs, &[out]);
    let partial = Pass {
        desc,
        what: "the gradient's squared norm",
        run,
        scalars: vec![],
    }
    .register(&client, streams)
    .output();
    Some(Cuda::float_sum(partial))
}

/// `Σ x²` (`[1]`, f32) of a flat f32 or bf16 vector, or `None` for other dtypes or an empty one.
pub fn sum_squares(x: FloatTensor<Cuda>) -> Option<FloatTensor<Cuda>> {
    sum_squares_all(vec![x])
}

/// Allocates the partial sums (`outputs[0]`: every input's blocks in turn) and queues a launch per
/// input.
fn run(inputs: Vec<CubeTensor<CudaRuntime>>, pass: &Pass) -> Ran {
    let inputs: Vec<_> = inputs
        .into_iter()
        .map(burn_cubecl::kernel::into_contiguous)
        .collect();
    let total = pass.desc.outputs[0].shape[0];
    let partial = cubecl_launch::empty(&inputs[0], [total], DType::F32);
    let out = inputs.len();
    let mut at = 0;
    let launches = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let n = x.meta.num_elements();
            let grid = blocks(n);
            let launch = Launch {
                name: match x.dtype {
                    DType::BF16 => "sum_squares_bf16".into(),
                    _ => "sum_squares_f32".into(),
                },
                grid: (grid as u32, 1, 1),
                threads: THREADS,
                args: vec![
                    Arg::Ptr(i),
                    Arg::I64(n as i64),
                    Arg::PtrAt(out, at as u64 * 4),
                ],
            };
            at += grid;
            launch
        })
        .collect();
    let tensors: Vec<&CubeTensor<CudaRuntime>> = inputs.iter().chain([&partial]).collect();
    let result = cubecl_launch::queue(&SOURCE, &tensors, out, &[], launches);
    (vec![partial], result)
}
