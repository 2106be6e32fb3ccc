//! AdamW for CubeCL's CUDA backend (`--device cuda`, docs/performance.md attempt 62): a bucket's
//! update by `kernels.cu`'s fused `adamw` kernel (the libtorch CUDA path's), one launch per
//! parameter, each reading its parameter and gradient where they lie and writing its range of the
//! bucket's new parameters and moments.
//!
//! Why: in tensor ops the bucket's parameters and gradients are first concatenated (one
//! `slice_assign` launch per parameter, twice: 222 launches, ~1 ms of a `125m` step on an H200)
//! and the update then runs as several element-wise kernels over the bucket (~0.75 ms), all of
//! it scaling with the parameter count. The fused kernel reads and writes each element once.
//!
//! Where [`enable_weight_copies`] is registered, a bucket of projection weights (bf16 gradients) also
//! gets its new values in bf16 from the same kernel (`adamw_f32_bf16_copy`), kept for
//! `llama_model::weight_cast` so that the next forward pass's products read them instead of
//! casting every weight again (docs/performance.md, attempt 68).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::OperationStreams;
use burn_ir::{CustomOpIr, OperationOutput, TensorId, TensorIr};
use llama_model::weight_cast::NativeCopies;

use crate::cubecl_cublas::Cuda;
use crate::cubecl_fused::SOURCE;
use crate::cubecl_launch::{self, Arg, Launch, Pass, Ran};
use crate::train::optim::{AdamwOutput, AdamwParts, AdamwPartsOutput, AdamwStep};

const THREADS: u32 = 256;

/// Whether buckets on `device` are updated by the kernel (CubeCL's CUDA device, the kernels load).
pub fn updates_parts<I: Backend>(device: &I::Device) -> bool {
    let device: &dyn Any = device;
    device
        .downcast_ref::<CudaDevice>()
        .is_some_and(|d| crate::cubecl_fused::available(d).is_ok())
}

/// Whether updates write bf16 copies of projection weights ([`enable_weight_copies`] was registered).
static WRITE_COPIES: AtomicBool = AtomicBool::new(false);

/// A weight's bf16 copy: its bucket's copy, its offset there and the weight's shape.
type Kept = (FloatTensor<Cuda>, usize, Shape);

/// The copies, by the tensor id of the f32 value each rounds (ids are never reused).
static COPIES: LazyLock<Mutex<HashMap<TensorId, Kept>>> = LazyLock::new(Default::default);

fn copies() -> std::sync::MutexGuard<'static, HashMap<TensorId, Kept>> {
    COPIES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The store of weights' bf16 copies for `llama_model::weight_cast::register_copies`; from now
/// on the update of a bucket of projection weights writes them.
pub fn enable_weight_copies() -> NativeCopies<Cuda> {
    WRITE_COPIES.store(true, Ordering::Relaxed);
    NativeCopies {
        keep: |value, bucket, offset| {
            copies().insert(value.id, (bucket.clone(), offset, value.shape.clone()));
        },
        find: |value| {
            let (bucket, offset, shape) = copies().get(&value.id).cloned()?;
            let n = shape.num_elements();
            let flat = Tensor::<Cuda, 1>::from_primitive(TensorPrimitive::Float(bucket));
            (flat.dims()[0] >= offset + n).then(|| {
                let view = flat.narrow(0, offset, n).into_primitive().tensor();
                <Cuda as FloatTensorOps<Cuda>>::float_reshape(view, shape)
            })
        },
        // Dropped outside the lock (a drop is an operation registered with fusion's client).
        clear: || drop(std::mem::take(&mut *copies())),
    }
}

/// [`AdamwParts`]'s update by the kernel, with the bucket's new values in bf16 where copies are
/// kept and the gradients are bf16 (projection weights), or the step back when its tensors are
/// not CubeCL CUDA ones with f32 parameters and f32 or bf16 gradients.
pub fn try_update_parts<I: Backend>(
    step: AdamwParts<I>,
) -> Result<AdamwPartsOutput<I>, AdamwParts<I>> {
    let copy = WRITE_COPIES.load(Ordering::Relaxed)
        && step.parts.iter().all(|(_, _, g)| g.dtype() == DType::BF16);
    try_update_parts_with(step, copy)
}

fn try_update_parts_with<I: Backend>(
    step: AdamwParts<I>,
    copy: bool,
) -> Result<AdamwPartsOutput<I>, AdamwParts<I>> {
    let boxed: Box<dyn Any> = Box::new(step);
    let step = match boxed.downcast::<AdamwParts<Cuda>>() {
        Ok(step) => *step,
        Err(boxed) => return Err(*boxed.downcast::<AdamwParts<I>>().expect("its own type")),
    };
    let out: Box<dyn Any> = match update(&step, copy) {
        Some(out) => Box::new(out),
        None => Box::new(step),
    };
    match out.downcast::<AdamwPartsOutput<I>>() {
        Ok(out) => Ok(*out),
        Err(step) => Err(*step.downcast::<AdamwParts<I>>().expect("I is Cuda here")),
    }
}

/// A concatenated bucket's update by the kernel (one part), or the step back.
pub fn try_update<I: Backend>(step: AdamwStep<I>) -> Result<AdamwOutput<I>, AdamwStep<I>> {
    try_update_parts_with(step.into_one_part(), false)
        .map(|(out, _)| out)
        .map_err(AdamwParts::into_one_step)
}

fn prim(t: &Tensor<Cuda, 1>) -> FloatTensor<Cuda> {
    t.clone().into_primitive().tensor()
}

fn tensor(x: FloatTensor<Cuda>) -> Tensor<Cuda, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// Queues the update: inputs are each part's parameter and gradient, then the moments and the
/// gradient factor where present; `Pass::scalars` carries the AdamW scalars, the layout (whether
/// moments, a factor and a bf16 copy come) and each part's offset. `copy` needs bf16 gradients.
fn update(step: &AdamwParts<Cuda>, copy: bool) -> Option<AdamwPartsOutput<Cuda>> {
    let fits = |p: &Tensor<Cuda, 1>, g: &Tensor<Cuda, 1>| {
        p.dtype() == DType::F32
            && matches!(g.dtype(), DType::F32 | DType::BF16)
            && p.dims() == g.dims()
    };
    let covered: usize = step.parts.iter().map(|(_, p, _)| p.dims()[0]).sum();
    if step.parts.is_empty()
        || covered != step.len
        || !step.parts.iter().all(|(_, p, g)| fits(p, g))
        || step.moments.as_ref().is_some_and(|(m, v)| {
            m.dims() != [step.len]
                || v.dims() != [step.len]
                || m.dtype() != DType::F32
                || v.dtype() != DType::F32
        })
    {
        return None;
    }
    let mut inputs: Vec<FloatTensor<Cuda>> = Vec::new();
    for (_, p, g) in &step.parts {
        inputs.extend([prim(p), prim(g)]);
    }
    if let Some((m, v)) = &step.moments {
        inputs.extend([prim(m), prim(v)]);
    }
    if let Some(f) = &step.grad_factor {
        inputs.push(prim(&f.clone().cast(DType::F32)));
    }
    let s = step.scalars;
    let mut scalars = vec![
        s.beta1,
        s.beta2,
        s.lr / s.c1,
        1.0 / s.c2.sqrt(),
        s.eps,
        1.0 - s.decay,
        f64::from(u8::from(step.moments.is_some())),
        f64::from(u8::from(step.grad_factor.is_some())),
        f64::from(u8::from(copy)),
    ];
    scalars.extend(step.parts.iter().map(|(offset, _, _)| *offset as f64));
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let dtypes = [DType::F32, DType::F32, DType::F32, DType::BF16];
    let outs: Vec<_> = dtypes[..3 + usize::from(copy)]
        .iter()
        .map(|&dtype| {
            TensorIr::uninit(client.create_empty_handle(), Shape::from([step.len]), dtype)
        })
        .collect();
    let irs: Vec<_> = inputs.into_iter().map(|x| x.into_ir()).collect();
    let desc = CustomOpIr::new("adamw", &irs, &outs);
    let registered = Pass {
        desc,
        what: "the AdamW update",
        run,
        scalars,
    }
    .register(&client, streams);
    let ([p, m, v], half) = match copy {
        true => {
            let [p, m, v, h] = registered.outputs();
            ([p, m, v], Some(tensor(h)))
        }
        false => (registered.outputs(), None),
    };
    let [p, m, v] = [p, m, v].map(tensor);
    Some(((p, m, v), half))
}

/// Allocates the bucket's new vectors and queues one launch per part.
fn run(inputs: Vec<CubeTensor<CudaRuntime>>, pass: &Pass) -> Ran {
    let inputs: Vec<_> = inputs
        .into_iter()
        .map(burn_cubecl::kernel::into_contiguous)
        .collect();
    let s = &pass.scalars;
    let (moments, factor, copy) = (s[6] != 0.0, s[7] != 0.0, s[8] != 0.0);
    let offsets = &s[9..];
    let n_parts = offsets.len();
    let len = pass.desc.outputs[0].shape[0];
    let outputs: Vec<_> = pass
        .desc
        .outputs
        .iter()
        .map(|o| cubecl_launch::empty(&inputs[0], [len], o.dtype))
        .collect();
    // Tensor indices: parts 0..2n, then m, v, the factor; the outputs after the inputs.
    let (m, v) = (2 * n_parts, 2 * n_parts + 1);
    let f = 2 * n_parts + if moments { 2 } else { 0 };
    let out = inputs.len();
    let launches = (0..n_parts)
        .map(|i| {
            let (p, g) = (&inputs[2 * i], &inputs[2 * i + 1]);
            let n = p.meta.num_elements();
            let at = offsets[i] as u64 * 4;
            let ptr_or_null = |on: bool, t: usize| match on {
                true => Arg::PtrAt(t, at),
                false => Arg::I64(0),
            };
            let mut args = vec![
                Arg::Ptr(2 * i),
                Arg::Ptr(2 * i + 1),
                ptr_or_null(moments, m),
                ptr_or_null(moments, v),
                Arg::PtrAt(out, at),
                Arg::PtrAt(out + 1, at),
                Arg::PtrAt(out + 2, at),
                Arg::I64(n as i64),
                match factor {
                    true => Arg::Ptr(f),
                    false => Arg::I64(0),
                },
                Arg::F32(s[0] as f32),
                Arg::F32(s[1] as f32),
                Arg::F32(s[2] as f32),
                Arg::F32(s[3] as f32),
                Arg::F32(s[4] as f32),
                Arg::F32(s[5] as f32),
                // Four-element pieces where the pointers allow (the kernel checks).
                Arg::I32(1),
            ];
            if copy {
                args.push(Arg::PtrAt(out + 3, offsets[i] as u64 * 2));
            }
            Launch {
                name: match (g.dtype, copy) {
                    (DType::BF16, true) => "adamw_f32_bf16_copy".into(),
                    (DType::BF16, false) => "adamw_f32_bf16".into(),
                    _ => "adamw_f32".into(),
                },
                grid: (
                    (n as u64 / 4).div_ceil(THREADS as u64).clamp(1, 65_536) as u32,
                    1,
                    1,
                ),
                threads: THREADS,
                args,
            }
        })
        .collect();
    let tensors: Vec<&CubeTensor<CudaRuntime>> = inputs.iter().chain(outputs.iter()).collect();
    let result = cubecl_launch::queue(&SOURCE, &tensors, inputs.len(), &[], launches);
    (outputs, result)
}
