//! cuBLAS matrix products for CubeCL's CUDA backend (`--device cuda`, docs/performance.md
//! attempt 37).
//!
//! CubeCL 0.10's own matmul (cubek-matmul 0.2) ran a `125m` training step's products in 322 ms of
//! GPU time where cuBLAS takes ~16 ms (its profile: weight gradients on a few dozen cubes, no
//! split of long reductions). This registers cuBLAS as [`llama_model::product`]'s native product
//! for `burn::backend::Cuda`: each product is a custom operation in Burn's fusion stream (so it
//! runs in order with the fused kernels around it), which reads CubeCL's buffers in place through
//! their device pointers and writes a fresh CubeCL buffer.
//!
//! CubeCL keeps its CUDA streams private (one per caller's stream id), so cuBLAS cannot simply
//! be queued behind CubeCL's kernels. Three hand-overs (`LLAMA_CUBLAS_WAIT`):
//! - `stream` (the default where CUPTI loads, attempt 48): CubeCL's stream is found once per
//!   stream id through CUPTI ([`crate::cupti_stream`]) and cuBLAS is queued on it, in order with
//!   CubeCL's kernels: no wait at all.
//! - `host` (the default without CUPTI): the host waits for CubeCL's stream (the inputs are
//!   written) and then for cuBLAS's own (the output is written) around each product.
//! - `driver`: two flags in device memory; on CubeCL's stream a one-thread kernel ([`hand_over`])
//!   sets the first to the product's ticket and spins until the second reaches it; cuBLAS's
//!   stream waits for the first (`cuStreamWaitValue32`), runs the product and sets the second.
//!   On an H200 that was slower than the host waits (its stream wait reacts late), and a spinning
//!   kernel in place of `cuStreamWaitValue32` hung (a host call that waits for the device, made
//!   while both spun): docs/performance.md attempt 37.
//!
//! With the host waits a `125m` step stayed slower than CubeCL's own (split) products; on
//! CubeCL's stream both presets measured got faster (attempt 48), so `LLAMA_PRODUCT=auto` runs
//! these products where the hand-over is `stream`.
//!
//! cuBLAS is loaded at run time (cudarc's dynamic loading): a binary built here runs where
//! `libcublas` is on the library path, and [`available`] says whether it is.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use cubecl::prelude::*;
use cubecl::server::Handle;
use cudarc::cublas::{result as cublas, sys as blas};
use cudarc::driver::{result as driver, sys as cu};

/// CubeCL's CUDA backend without fusion, the one the fusion stream's handles belong to.
type Inner = CubeBackend<CudaRuntime, f32, i32, u8>;
/// `burn::backend::Cuda` (CubeCL's CUDA backend with fusion).
pub type Cuda = Fusion<Inner>;
type Runtime = <Inner as burn_fusion::FusionBackend>::FusionRuntime;

/// One device's cuBLAS handle, the streams it runs on and the hand-over flags.
struct Blas {
    ctx: cu::CUcontext,
    handle: blas::cublasHandle_t,
    /// cuBLAS's own stream (`host` and `driver` hand-overs).
    stream: cu::CUstream,
    /// The workspace cuBLAS uses on its own stream.
    workspace: cu::CUdeviceptr,
    /// The stream the handle is set to now.
    bound: cu::CUstream,
    /// CubeCL's stream for each of its stream ids (`stream` hand-over; Burn's fusion runs a
    /// caller's operations under the caller's id), found on the id's first product.
    cubecl_streams: HashMap<u64, cu::CUstream>,
    /// How cuBLAS's stream and CubeCL's hand over (`LLAMA_CUBLAS_WAIT`).
    wait: Wait,
    /// The two flags (a CubeCL buffer, kept for the process) and their device address.
    flags: Option<(Handle, u64)>,
    /// The last product's ticket.
    ticket: u32,
}

// SAFETY: the handle, stream and context are only used behind `BLAS`'s lock, one caller at a time.
unsafe impl Send for Blas {}

/// cuBLAS's workspace in bytes.
const WORKSPACE: usize = 32 << 20;

/// How the two streams hand over (`LLAMA_CUBLAS_WAIT`).
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    /// The host waits for CubeCL's stream before and for cuBLAS's after each product (default).
    Host,
    /// Through the flags (`LLAMA_CUBLAS_WAIT=driver`): cuBLAS's stream waits with
    /// `cuStreamWaitValue32`, no host wait; measured slower on an H200 (attempt 37).
    Driver,
    /// On CubeCL's own stream, found through CUPTI (`LLAMA_CUBLAS_WAIT=stream`; the default
    /// where CUPTI loads): no wait.
    Stream,
}

/// `LLAMA_CUBLAS_WAIT`'s values (the backend checks the knob against them too).
pub const WAIT_CHOICES: [&str; 4] = ["auto", "stream", "host", "driver"];

/// The hand-over `LLAMA_CUBLAS_WAIT` asks for (`auto`: `stream` where CUPTI loads, else `host`).
fn wait_choice() -> Result<Wait, String> {
    let cupti = crate::cupti_stream::available();
    match crate::backend::env_choice("LLAMA_CUBLAS_WAIT", &WAIT_CHOICES)
        .map_err(|e| e.to_string())?
    {
        "host" => Ok(Wait::Host),
        "driver" => Ok(Wait::Driver),
        "stream" if !cupti => {
            Err("LLAMA_CUBLAS_WAIT=stream needs libcupti (set LLAMA_CUPTI)".into())
        }
        "auto" if !cupti => Ok(Wait::Host),
        _ => Ok(Wait::Stream),
    }
}

static BLAS: Mutex<Option<HashMap<usize, Blas>>> = Mutex::new(None);

impl Blas {
    fn new(ordinal: usize) -> Result<Self, String> {
        // SAFETY: plain driver and cuBLAS calls; the context is the device's primary context (the
        // one CubeCL's runtime retains), so pointers from CubeCL's allocations are valid in it.
        unsafe {
            driver::init().map_err(|e| format!("CUDA driver: {e}"))?;
            let dev = driver::device::get(ordinal as i32).map_err(|e| format!("device: {e}"))?;
            let ctx = driver::primary_ctx::retain(dev).map_err(|e| format!("context: {e}"))?;
            driver::ctx::set_current(ctx).map_err(|e| format!("context: {e}"))?;
            let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
                .map_err(|e| format!("stream: {e}"))?;
            let handle = cublas::create_handle().map_err(|e| format!("cuBLAS: {e:?}"))?;
            cublas::set_stream(handle, stream as blas::cudaStream_t)
                .map_err(|e| format!("cuBLAS stream: {e:?}"))?;
            // A workspace of its own from the start (the size NVIDIA recommends for Hopper), so
            // that no product allocates while a hand-over kernel spins.
            let workspace =
                driver::malloc_sync(WORKSPACE).map_err(|e| format!("workspace: {e}"))?;
            blas::cublasSetWorkspace_v2(handle, workspace as *mut _, WORKSPACE)
                .result()
                .map_err(|e| format!("cuBLAS workspace: {e:?}"))?;
            Ok(Self {
                ctx,
                handle,
                stream,
                workspace,
                bound: stream,
                cubecl_streams: HashMap::new(),
                wait: wait_choice()?,
                flags: None,
                ticket: 0,
            })
        }
    }
}

/// Runs `f` with device `ordinal`'s cuBLAS state (created on first use).
fn with_blas<T>(
    ordinal: usize,
    f: impl FnOnce(&mut Blas) -> Result<T, String>,
) -> Result<T, String> {
    let mut guard = BLAS.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let blas = match map.entry(ordinal) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(Blas::new(ordinal)?),
    };
    // SAFETY: a context retained in `Blas::new` and never released.
    unsafe { driver::ctx::set_current(blas.ctx) }.map_err(|e| format!("context: {e}"))?;
    f(blas)
}

/// Sets `flags[0]` to `ticket` (CubeCL's stream reached this point: the product's inputs are
/// written) and holds CubeCL's stream until cuBLAS's sets `flags[1]` to it (the output is
/// written). One thread; its atomic loads go to L2, where the driver's write lands.
#[cube(launch)]
fn hand_over(flags: &Array<Atomic<u32>>, ticket: u32) {
    flags[0].store(ticket);
    loop {
        if flags[1].load() >= ticket {
            break;
        }
    }
}

/// Whether cuBLAS loads and gets a handle on `device` (the product is registered only then).
pub fn available(device: &CudaDevice) -> Result<(), String> {
    std::panic::catch_unwind(|| with_blas(device.index, |_| Ok(())))
        .unwrap_or_else(|_| Err("libcublas could not be loaded".into()))
}

/// The hand-over between CubeCL's stream and cuBLAS's that `device`'s products use (`stream`,
/// `host` or `driver`).
pub fn hand_over_name(device: &CudaDevice) -> Result<&'static str, String> {
    with_blas(device.index, |b| {
        Ok(match b.wait {
            Wait::Host => "host",
            Wait::Driver => "driver",
            Wait::Stream => "stream",
        })
    })
}

/// [`llama_model::product::NativeProduct`] for `burn::backend::Cuda`: `x [.., m, k] · w [.., k,
/// n]` through cuBLAS, queued as a custom operation of the fusion stream; `None` for dtypes other
/// than f32, f16 and bf16, or mixed ones.
pub fn product(x: FloatTensor<Cuda>, w: FloatTensor<Cuda>) -> Option<FloatTensor<Cuda>> {
    let dtype = x.dtype;
    let rank = x.shape.num_dims();
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        || w.dtype != dtype
        || rank < 2
        || w.shape.num_dims() != rank
        || x.shape[..rank - 2] != w.shape[..rank - 2]
        || x.shape[rank - 1] != w.shape[rank - 2]
    {
        return None;
    }
    let mut dims = x.shape.to_vec();
    dims[rank - 1] = w.shape[rank - 1];
    let client = x.client.clone();
    let streams = OperationStreams::with_inputs([&x, &w]);
    let out = TensorIr::uninit(client.create_empty_handle(), Shape::from(dims), dtype);
    let desc = CustomOpIr::new("cublas_product", &[x.into_ir(), w.into_ir()], &[out]);
    Some(
        client
            .register(streams, OperationIr::Custom(desc.clone()), Product { desc })
            .output(),
    )
}

#[derive(Clone, Debug)]
struct Product {
    desc: CustomOpIr,
}

impl Operation<Runtime> for Product {
    fn execute(&self, handles: &mut HandleContainer<<Runtime as FusionRuntime>::FusionHandle>) {
        let ([x, w], [y]) = self.desc.as_fixed();
        let x = handles.get_float_tensor::<Inner>(x);
        let w = handles.get_float_tensor::<Inner>(w);
        let out = match gemm(x.clone(), w.clone()) {
            Ok(out) => out,
            Err(e) => {
                // The operation cannot return an error: CubeCL's own product stands in, and the
                // reason is said once.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    eprintln!("warning: cuBLAS product failed ({e}); using CubeCL's")
                });
                <Inner as burn::tensor::ops::FloatTensorOps<Inner>>::float_matmul(x, w)
            }
        };
        handles.register_float_tensor::<Inner>(&y.id, out);
    }
}

/// How cuBLAS reads one operand: its (column-major) operation, leading dimension and the stride
/// between batch entries.
struct Operand {
    op: blas::cublasOperation_t,
    ld: usize,
    batch_stride: usize,
}

/// `t`'s matrices `[r, c]` as cuBLAS sees them, if its strides allow (row-major or transposed
/// rows with any leading dimension, batch dimensions one uniform stride apart).
fn operand(t: &CubeTensor<CudaRuntime>) -> Option<Operand> {
    let (shape, strides) = (t.meta.shape(), t.meta.strides());
    let rank = shape.len();
    let (r, c) = (shape[rank - 2], shape[rank - 1]);
    let (sr, sc) = (strides[rank - 2], strides[rank - 1]);
    // Row-major rows are a column-major `[c, r]` read as is (`N`); transposed ones a column-major
    // `[r, c]` read transposed (`T`).
    let (op, ld) = if sc == 1 || c == 1 {
        (blas::cublasOperation_t::CUBLAS_OP_N, sr.max(c))
    } else if sr == 1 || r == 1 {
        (blas::cublasOperation_t::CUBLAS_OP_T, sc.max(r))
    } else {
        return None;
    };
    if (op == blas::cublasOperation_t::CUBLAS_OP_N && r > 1 && sr < c)
        || (op == blas::cublasOperation_t::CUBLAS_OP_T && c > 1 && sc < r)
    {
        return None;
    }
    // The batch dimensions (those longer than one) must collapse into one stride.
    let batch: Vec<(usize, usize)> = (0..rank - 2)
        .filter(|&i| shape[i] > 1)
        .map(|i| (shape[i], strides[i]))
        .collect();
    if batch.windows(2).any(|p| p[0].1 != p[1].1 * p[1].0) {
        return None;
    }
    let batch_stride = batch.last().map_or(0, |&(_, s)| s);
    Some(Operand {
        op,
        ld,
        batch_stride,
    })
}

/// `t` and how cuBLAS reads it, made contiguous first where its strides do not allow.
fn prepared(t: CubeTensor<CudaRuntime>) -> Result<(CubeTensor<CudaRuntime>, Operand), String> {
    if let Some(o) = operand(&t) {
        return Ok((t, o));
    }
    let t = burn_cubecl::kernel::into_contiguous(t);
    let o = operand(&t).ok_or("a contiguous tensor cuBLAS cannot read")?;
    Ok((t, o))
}

fn data_type(dtype: DType) -> Result<blas::cudaDataType, String> {
    Ok(match dtype {
        DType::F32 => blas::cudaDataType::CUDA_R_32F,
        DType::F16 => blas::cudaDataType::CUDA_R_16F,
        DType::BF16 => blas::cudaDataType::CUDA_R_16BF,
        other => return Err(format!("dtype {other:?}")),
    })
}

fn int(v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{v} does not fit cuBLAS's 32-bit sizes"))
}

/// `y = x · w` for CubeCL tensors, `y` a new contiguous tensor.
fn gemm(
    x: CubeTensor<CudaRuntime>,
    w: CubeTensor<CudaRuntime>,
) -> Result<CubeTensor<CudaRuntime>, String> {
    let rank = x.meta.rank();
    let (m, k, n) = (
        x.meta.shape()[rank - 2],
        x.meta.shape()[rank - 1],
        w.meta.shape()[rank - 1],
    );
    let batch: usize = x.meta.shape()[..rank - 2].iter().product();
    let mut dims = x.meta.shape().to_vec();
    dims[rank - 1] = n;
    let dtype = x.dtype;
    let ty = data_type(dtype)?;
    let client = x.client.clone();
    let y = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        Shape::from(dims),
        dtype,
    );
    if m == 0 || n == 0 || batch == 0 {
        return Ok(y);
    }
    if k == 0 {
        return Ok(burn_cubecl::ops::numeric::zeros_client(
            client,
            x.device.clone(),
            y.meta.shape().clone(),
            dtype,
        ));
    }
    let (x, xo) = prepared(x)?;
    let (w, wo) = prepared(w)?;
    let ptr = |t: &CubeTensor<CudaRuntime>| {
        client
            .get_resource(t.handle.clone())
            .map_err(|e| format!("CubeCL buffer: {e:?}"))
    };
    let (xr, wr, yr) = (ptr(&x)?, ptr(&w)?, ptr(&y)?);
    let device = x.device.index;
    with_blas(device, |blas| {
        // The stream cuBLAS runs this product on.
        let mut on = blas.stream;
        if blas.wait == Wait::Stream {
            let id = cubecl::stream_id::StreamId::current().value;
            match blas.cubecl_streams.get(&id) {
                Some(&s) => on = s,
                None => {
                    // CubeCL's `sync` records its fence on this id's stream, last.
                    match crate::cupti_stream::stream_of(|| {
                        let _ = burn_cubecl::cubecl::future::block_on(client.sync());
                    }) {
                        Ok(s) => {
                            on = s as cu::CUstream;
                            blas.cubecl_streams.insert(id, on);
                        }
                        // E.g. a profiler holds CUPTI's one subscription: host waits from now.
                        Err(e) => {
                            eprintln!(
                                "warning: CubeCL's stream not found ({e}); cuBLAS waits on the host"
                            );
                            blas.wait = Wait::Host;
                        }
                    }
                }
            }
        }
        if blas.wait == Wait::Host {
            // CubeCL's kernels that write `x` and `w` are queued on its own stream: wait for them.
            burn_cubecl::cubecl::future::block_on(client.sync())
                .map_err(|e| format!("CubeCL sync: {e:?}"))?;
        } else if blas.wait == Wait::Driver && blas.flags.is_none() {
            let handle = client.create_from_slice(&[0u8; 8]);
            let addr = client
                .get_resource(handle.clone())
                .map_err(|e| format!("CubeCL buffer: {e:?}"))?
                .resource()
                .ptr;
            // Loaded now rather than inside the first hand-over.
            hand_over::launch::<CudaRuntime>(
                &client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                // SAFETY: the two-element buffer just made.
                unsafe { ArrayArg::from_raw_parts(handle.clone(), 2) },
                0,
            );
            blas.flags = Some((handle, addr));
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let compute = blas::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        let ticket = blas.ticket.wrapping_add(1);
        // Every fallible conversion before anything is queued on cuBLAS's stream.
        let (ni, mi, ki, ldw, ldx, batches) = (
            int(n)?,
            int(m)?,
            int(k)?,
            int(wo.ld)?,
            int(xo.ld)?,
            int(batch)?,
        );
        let stride = |s: usize| i64::try_from(s).map_err(|_| format!("stride {s} over i64"));
        let (sw, sx, sy) = (
            stride(wo.batch_stride)?,
            stride(xo.batch_stride)?,
            stride(m * n)?,
        );
        let flags = blas.flags.clone();
        // Row-major `y [m, n] = x · w` is column-major `yᵀ [n, m] = wᵀ · xᵀ`.
        // SAFETY: the pointers are CubeCL buffers of the sizes the shapes and strides describe;
        // the product is queued on CubeCL's stream behind the kernels that write them (the
        // `get_resource` calls above returned after CubeCL issued every earlier launch), or
        // CubeCL's stream does not go past the hand-over (or the host waits) until cuBLAS's
        // stream has written `y`: none of them is reused before.
        unsafe {
            // Setting a stream resets cuBLAS's workspace to its own pool (per stream, which
            // CubeCL's streams keep); the fixed one goes back with cuBLAS's own stream, where
            // no product may allocate while a hand-over kernel spins.
            if on != blas.bound {
                cublas::set_stream(blas.handle, on as blas::cudaStream_t)
                    .map_err(|e| format!("cuBLAS stream: {e:?}"))?;
                if on == blas.stream {
                    blas::cublasSetWorkspace_v2(blas.handle, blas.workspace as *mut _, WORKSPACE)
                        .result()
                        .map_err(|e| format!("cuBLAS workspace: {e:?}"))?;
                }
                blas.bound = on;
            }
            if let Some((_, addr)) = flags {
                cu::cuStreamWaitValue32_v2(
                    blas.stream,
                    addr,
                    ticket,
                    cu::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32,
                )
                .result()
                .map_err(|e| format!("cuStreamWaitValue32: {e}"))?;
            }
            let (a, b, c) = (
                wr.resource().ptr as *const _,
                xr.resource().ptr as *const _,
                yr.resource().ptr as *mut _,
            );
            let ab = (&alpha as *const f32).cast();
            let bb = (&beta as *const f32).cast();
            // One entry point for every product: with a batch count of 1 the strides are unused.
            let result = cublas::gemm_strided_batched_ex(
                blas.handle,
                wo.op,
                xo.op,
                ni,
                mi,
                ki,
                ab,
                a,
                ty,
                ldw,
                sw,
                b,
                ty,
                ldx,
                sx,
                bb,
                c,
                ty,
                ni,
                sy,
                batches,
                compute,
                algo,
            );
            let Some((flag_buffer, addr)) = flags else {
                result.map_err(|e| format!("cublasGemmStridedBatchedEx: {e:?}"))?;
                if blas.wait == Wait::Stream {
                    return Ok(());
                }
                return driver::stream::synchronize(blas.stream)
                    .map_err(|e| format!("cuBLAS stream: {e}"));
            };
            // Released whether or not the product was queued: a failed one falls back to
            // CubeCL's matmul, which must not wait forever.
            cu::cuStreamWriteValue32_v2(
                blas.stream,
                addr + 4,
                ticket,
                cu::CUstreamWriteValue_flags::CU_STREAM_WRITE_VALUE_DEFAULT as u32,
            )
            .result()
            .map_err(|e| format!("cuStreamWriteValue32: {e}"))?;
            hand_over::launch::<CudaRuntime>(
                &client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                ArrayArg::from_raw_parts(flag_buffer, 2),
                ticket,
            );
            blas.ticket = ticket;
            result.map_err(|e| format!("cublasGemmStridedBatchedEx: {e:?}"))
        }
    })?;
    drop((xr, wr, yr));
    Ok(y)
}
