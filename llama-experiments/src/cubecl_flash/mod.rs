//! Flash attention for CubeCL's CUDA backend (`--device cuda`, docs/performance.md attempt 50):
//! [`llama_model::sdpa`]'s native attention for `burn::backend::Cuda` in bf16.
//!
//! Why: CubeCL 0.10's own flash kernel takes f32 only, so bf16 training ran `sdpa`'s blocked
//! attention: per layer and block of queries a product, then casts, scaling, masking, a softmax
//! in several passes and a cast back, each a pass over `[batch, heads, block, T]` scores in
//! memory, and twice that in the backward pass. `flash_attention.cu` is FlashAttention-2's
//! algorithm on tensor cores (mma.sync, ldmatrix as inline PTX; on Hopper, compiled for sm_90a,
//! the head-dim-64 kernels use its warp-group products, wgmma, reading their tiles from 128-byte
//! swizzled shared memory, attempt 70): the scores live in registers, the forward pass writes the
//! output and one log-sum-exp per row, the backward pass recomputes the probabilities tile by
//! tile in two kernels (dq, then dk and dv). Grouped-query key/value heads
//! are read in place (`NativeAttention::grouped`, attempt 63): query head `h` reads key/value head
//! `h / G`, and the per-query-head dk and dv are summed per group after the pass.
//!
//! How it is launched: like the cuBLAS products (`crate::cubecl_cublas`), each pass is a custom
//! operation of Burn's fusion stream whose kernels are queued on CubeCL's own CUDA stream, found
//! through CUPTI, by a task on CubeCL's device runner thread, so they run in order with CubeCL's
//! kernels and nothing waits. Where CUPTI is unavailable at run time (a profiler holds it), the
//! host waits for CubeCL's stream, launches on the legacy stream and waits for it.
//!
//! The kernels are compiled by NVRTC (`cudarc`, loaded at run time) for the device's architecture
//! on first use; they need sm_80 or later and head dims 64 or 128. [`forward`] returns `None`
//! otherwise (other dtypes, shapes, no NVRTC), and `sdpa` then runs its blocked attention.

use std::collections::HashMap;
use std::sync::LazyLock;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::OperationStreams;
use burn_ir::{CustomOpIr, OperationOutput, TensorIr};

use crate::cubecl_cublas::Cuda;
use crate::cubecl_launch::{self, Arg, Launch, Pass, Ran, Source};

static SOURCE: Source = Source {
    name: "flash_attention.cu",
    // The mma.sync kernels, then the wgmma ones and the entry points (one NVRTC source).
    code: concat!(
        include_str!("flash_attention.cu"),
        include_str!("flash_attention_sm90.cu")
    ),
    kernels: &[
        "flash_forward_d64",
        "flash_backward_dq_d64",
        "flash_backward_dkdv_d64",
        "flash_forward_d128",
        "flash_backward_dq_d128",
        "flash_backward_dkdv_d128",
    ],
};

/// Rows (queries, or keys for dk/dv) per block of `kernel` at head dim `d` (`#define ROWS_FWD_D64
/// 128` in the source; 64 where it names none): the grid's first dimension is `T / rows`, rounded
/// up. Read from the source, so that the launcher cannot disagree with the kernels.
fn rows(kernel: &str, d: usize) -> usize {
    static ROWS: LazyLock<HashMap<String, usize>> = LazyLock::new(|| {
        (SOURCE.code.lines())
            .filter_map(|l| {
                let (name, value) = l.strip_prefix("#define ROWS_")?.split_once(' ')?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    });
    ROWS.get(&format!("{kernel}_D{d}")).copied().unwrap_or(64)
}

/// Head dims the source instantiates.
const HEAD_DIMS: [usize; 2] = [64, 128];

/// Whether the kernels compile and load on `device` (the attention is registered only then).
pub fn available(device: &CudaDevice) -> Result<(), String> {
    cubecl_launch::available(&SOURCE, device.index)
}

/// `[batch, heads, T, D]` of q and k/v's heads when the kernels take them: bf16, one shape but for
/// k/v's heads, a divisor of q's (grouped-query attention, read in place), D of [`HEAD_DIMS`],
/// sizes that fit the kernels' 32-bit indices.
fn accepted(
    q: &FloatTensor<Cuda>,
    k: &FloatTensor<Cuda>,
    v: &FloatTensor<Cuda>,
) -> Option<([usize; 4], usize)> {
    let dims: [usize; 4] = q.shape.to_vec().try_into().ok()?;
    let [b, h, t, d] = dims;
    let hkv = *k.shape.to_vec().get(1)?;
    let same = |x: &FloatTensor<Cuda>, heads| {
        x.dtype == DType::BF16 && x.shape.to_vec() == [b, heads, t, d]
    };
    (same(q, h) && same(k, hkv) && same(v, hkv) && hkv > 0 && h % hkv == 0).then_some(())?;
    (HEAD_DIMS.contains(&d) && b > 0 && h > 0 && t > 0).then_some(())?;
    (b <= 65_535 && h <= 65_535 && i32::try_from(t).is_ok()).then_some((dims, hkv))
}

/// [`llama_model::sdpa::NativeAttention::forward`] for `burn::backend::Cuda`: the output and, for
/// the backward pass, `[q, k, v, o, lse2]`. Causal attention only (training's; the kernels take
/// both, but the saved list has no room for the flag): `None` otherwise.
pub fn forward(
    q: FloatTensor<Cuda>,
    k: FloatTensor<Cuda>,
    v: FloatTensor<Cuda>,
    causal: bool,
) -> Option<(FloatTensor<Cuda>, Vec<FloatTensor<Cuda>>)> {
    let ([b, h, t, d], _) = accepted(&q, &k, &v)?;
    if !causal {
        return None;
    }
    let client = q.client.clone();
    let streams = OperationStreams::with_inputs([&q, &k, &v]);
    let o = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from([b, h, t, d]),
        DType::BF16,
    );
    let lse = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from([b, h, t]),
        DType::F32,
    );
    let inputs = [
        q.clone().into_ir(),
        k.clone().into_ir(),
        v.clone().into_ir(),
    ];
    let desc = CustomOpIr::new("flash_forward", &inputs, &[o, lse]);
    let [o, lse] = Pass {
        desc,
        what: "flash attention",
        run,
        scalars: vec![],
    }
    .register(&client, streams)
    .outputs();
    Some((o.clone(), vec![q, k, v, o, lse]))
}

/// [`llama_model::sdpa::NativeAttention::backward`] for `burn::backend::Cuda`. With grouped k/v
/// heads the dk/dv kernel writes one gradient per query head, summed here over each group (a
/// reduction over `h / h_kv` at memory speed, against the expansion's copies in the forward pass
/// and its sum in the backward pass that it replaces).
pub fn backward(saved: Vec<FloatTensor<Cuda>>, dout: FloatTensor<Cuda>) -> [FloatTensor<Cuda>; 3] {
    let [q, k, v, o, lse]: [FloatTensor<Cuda>; 5] =
        saved.try_into().expect("forward saves q, k, v, o and lse2");
    // The output's gradient arrives in the dtype autodiff accumulated it in.
    let dout = if dout.dtype == DType::BF16 {
        dout
    } else {
        <Cuda as burn::tensor::ops::FloatTensorOps<Cuda>>::float_cast(
            dout,
            burn::tensor::FloatDType::BF16,
        )
    };
    let client = q.client.clone();
    let shape = q.shape.clone();
    let hkv = k.shape[1];
    let streams = OperationStreams::with_inputs([&q, &k, &v, &o, &lse, &dout]);
    let outs =
        [0; 3].map(|_| TensorIr::uninit(client.create_empty_handle(), shape.clone(), DType::BF16));
    let inputs = [q, k, v, o, lse, dout].map(|x| x.into_ir());
    let desc = CustomOpIr::new("flash_backward", &inputs, &outs);
    let [dq, dk, dv] = Pass {
        desc,
        what: "flash attention",
        run,
        scalars: vec![],
    }
    .register(&client, streams)
    .outputs();
    let sum = |x: FloatTensor<Cuda>| {
        let x = Tensor::<Cuda, 4>::from_primitive(TensorPrimitive::Float(x));
        llama_model::sdpa::sum_heads(x, hkv)
            .into_primitive()
            .tensor()
    };
    [dq, sum(dk), sum(dv)]
}

/// `t` as the kernels read it: rows contiguous, and the batch, head and row strides multiples of
/// 8 elements (16-byte rows); copied to a contiguous tensor otherwise.
fn readable(t: CubeTensor<CudaRuntime>) -> CubeTensor<CudaRuntime> {
    let s = t.meta.strides();
    let ok = s.len() == 4 && s[3] == 1 && s[..3].iter().all(|x| x % 8 == 0);
    if ok {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

fn strides(t: &CubeTensor<CudaRuntime>) -> [i64; 3] {
    let s = t.meta.strides();
    [s[0] as i64, s[1] as i64, s[2] as i64]
}

/// Allocates the pass's outputs and queues its kernels; on failure the outputs come back NaN.
fn run(inputs: Vec<CubeTensor<CudaRuntime>>, _: &Pass) -> Ran {
    let inputs: Vec<_> = inputs
        .into_iter()
        .map(|t| if t.meta.rank() == 4 { readable(t) } else { t })
        .collect();
    let q = &inputs[0];
    let [b, h, t, d]: [usize; 4] = q.meta.shape().to_vec().try_into().expect("rank 4");
    // Query heads per key/value head.
    let group = h / inputs[1].meta.shape()[1];
    let empty = |dims: Vec<usize>, dtype| cubecl_launch::empty(q, dims, dtype);
    // o, dq, dk and dv are written through their strides, time-major: the model turns them back
    // into `[b, t, h·d]` rows without a copy.
    let heads = || cubecl_launch::empty_time_major(q, [b, h, t, d], DType::BF16);
    let grid = |kernel: &str| (t.div_ceil(rows(kernel, d)) as u32, h as u32, b as u32);
    // A warp per 16 rows.
    let threads = |kernel: &str| 2 * rows(kernel, d) as u32;
    let scale = 1.0 / (d as f32).sqrt();
    let scale2 = scale * std::f32::consts::LOG2_E;
    let (hh, tt) = (Arg::I32(h as i32), Arg::I32(t as i32));
    let gg = Arg::I32(group as i32);
    let st = |i: usize| strides(&inputs[i]).map(Arg::I64);
    let c = Arg::I32(1); // causal
    let (outputs, launches) = if inputs.len() == 3 {
        // Forward: bindings q, k, v, o, lse2.
        let outputs = vec![heads(), empty(vec![b, h, t], DType::F32)];
        let mut args = vec![
            Arg::Ptr(0),
            Arg::Ptr(1),
            Arg::Ptr(2),
            Arg::Ptr(3),
            Arg::Ptr(4),
            hh,
            gg,
            tt,
        ];
        args.extend(st(0).into_iter().chain(st(1)).chain(st(2)));
        args.extend(strides(&outputs[0]).map(Arg::I64));
        args.extend([Arg::F32(scale2), c]);
        let launch = Launch {
            name: format!("flash_forward_d{d}"),
            grid: grid("FWD"),
            threads: threads("FWD"),
            args,
        };
        (outputs, vec![launch])
    } else {
        // Backward: bindings q, k, v, o, lse2, dout, dq, dk, dv, dsum. Per-query-head dk and dv
        // of grouped heads are summed by `backward` over `[b, h_kv, group, T, D]`: head-major.
        let grads = || match group {
            1 => heads(),
            _ => empty(vec![b, h, t, d], DType::BF16),
        };
        let f32_rows = empty(vec![b, h, t], DType::F32);
        let outputs = vec![heads(), grads(), grads(), f32_rows];
        let (gs, gs_kv) = (strides(&outputs[0]), strides(&outputs[1]));
        let tail = |args: &mut Vec<Arg>, extra: &[Arg]| {
            args.extend([hh, gg, tt]);
            args.extend(st(0).into_iter().chain(st(1)).chain(st(2)).chain(st(5)));
            args.extend(extra);
            args.extend([Arg::F32(scale2), Arg::F32(scale), c]);
        };
        let mut dq = [0, 1, 2, 3, 5, 4, 9, 6].map(Arg::Ptr).to_vec();
        tail(&mut dq, &[st(3), gs.map(Arg::I64)].concat());
        let mut dkdv = [0, 1, 2, 5, 4, 9, 7, 8].map(Arg::Ptr).to_vec();
        tail(&mut dkdv, &gs_kv.map(Arg::I64));
        let launches = vec![
            Launch {
                name: format!("flash_backward_dq_d{d}"),
                grid: grid("DQ"),
                threads: threads("DQ"),
                args: dq,
            },
            Launch {
                name: format!("flash_backward_dkdv_d{d}"),
                grid: grid("DKDV"),
                threads: threads("DKDV"),
                args: dkdv,
            },
        ];
        (outputs, launches)
    };
    let tensors: Vec<&CubeTensor<CudaRuntime>> = inputs.iter().chain(outputs.iter()).collect();
    // Every tensor but the f32 row statistics is read or written in 16-byte rows.
    let aligned: Vec<usize> = (0..tensors.len())
        .filter(|&i| tensors[i].dtype == DType::BF16)
        .collect();
    let result = cubecl_launch::queue(&SOURCE, &tensors, inputs.len(), &aligned, launches);
    // The backward pass's last buffer (dsum) is scratch.
    let mut outputs = outputs;
    outputs.truncate(if inputs.len() == 3 { 2 } else { 3 });
    (outputs, result)
}
