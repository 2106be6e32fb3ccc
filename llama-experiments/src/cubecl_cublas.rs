//! cuBLAS matrix products for CubeCL's CUDA backend (`--device cuda`, docs/performance.md
//! attempts 37, 48 and 49).
//!
//! CubeCL 0.10's own matmul (cubek-matmul 0.2) ran a `125m` training step's products in 322 ms of
//! GPU time where cuBLAS takes ~16 ms (its profile: weight gradients on a few dozen cubes, no
//! split of long reductions). This registers cuBLAS as [`llama_model::product`]'s native product
//! for `burn::backend::Cuda`: each product is a custom operation in Burn's fusion stream (so it
//! runs in order with the fused kernels around it), which reads CubeCL's buffers in place through
//! their device pointers and writes a fresh CubeCL buffer.
//!
//! CubeCL keeps its CUDA streams private (one per caller's stream id), so cuBLAS cannot simply
//! be queued behind CubeCL's kernels. Two hand-overs (`LLAMA_CUBLAS_WAIT`):
//! - `stream` (the default where CUPTI loads, attempts 48–49): CubeCL's stream is found once per
//!   stream id through CUPTI ([`crate::cupti_stream`]); each product is then a task on CubeCL's
//!   device runner thread (the one thread that issues CubeCL's launches, in the order they were
//!   asked for), which looks up the buffers' pointers and queues cuBLAS on that stream. Nothing
//!   waits: neither the host for the device nor Burn's fusion thread for CubeCL's runner.
//! - `host` (the default without CUPTI): the host waits for CubeCL's stream (the inputs are
//!   written) and then for cuBLAS's own (the output is written) around each product.
//!
//! A third, flags in device memory that cuBLAS's stream waited on (`cuStreamWaitValue32`), was
//! slower than the host waits on an H200 and then failed there (`CUDA_ERROR_INVALID_VALUE`);
//! it was removed in session 27 (attempt 37 describes it).
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
use cubecl::client::ComputeClient;
use cubecl::device::Device;
use cubecl::device_handle::DeviceHandle;
use cubecl::server::{Binding, ComputeServer};
use cubecl::stream_id::StreamId;
use cudarc::cublas::{result as cublas, sys as blas};
use cudarc::driver::{result as driver, sys as cu};

/// CubeCL's CUDA backend without fusion, the one the fusion stream's handles belong to.
pub(crate) type Inner = CubeBackend<CudaRuntime, f32, i32, u8>;
/// `burn::backend::Cuda` (CubeCL's CUDA backend with fusion).
pub type Cuda = Fusion<Inner>;
pub(crate) type Runtime = <Inner as burn_fusion::FusionBackend>::FusionRuntime;
/// CubeCL's CUDA compute server, which lives on its device runner thread.
pub(crate) type Server = <CudaRuntime as cubecl::Runtime>::Server;

/// One device's cuBLAS handle and the streams it runs on.
struct Blas {
    ctx: cu::CUcontext,
    handle: blas::cublasHandle_t,
    /// cuBLAS's own stream (`host` hand-over).
    stream: cu::CUstream,
    /// The stream the handle is set to now.
    bound: cu::CUstream,
    /// CubeCL's stream for each of its stream ids (`stream` hand-over; Burn's fusion runs a
    /// caller's operations under the caller's id), found on the id's first product.
    cubecl_streams: HashMap<u64, cu::CUstream>,
    /// How cuBLAS's stream and CubeCL's hand over (`LLAMA_CUBLAS_WAIT`).
    wait: Wait,
}

// SAFETY: the handle, stream and context are only used behind `BLAS`'s lock, one caller at a time.
unsafe impl Send for Blas {}

/// How the two streams hand over (`LLAMA_CUBLAS_WAIT`).
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    /// The host waits for CubeCL's stream before and for cuBLAS's after each product (default
    /// without CUPTI).
    Host,
    /// On CubeCL's own stream, found through CUPTI, from CubeCL's runner thread
    /// (`LLAMA_CUBLAS_WAIT=stream`; the default where CUPTI loads): no wait.
    Stream,
}

/// `LLAMA_CUBLAS_WAIT`'s values (the backend checks the knob against them too).
pub const WAIT_CHOICES: [&str; 3] = ["auto", "stream", "host"];

/// The hand-over `LLAMA_CUBLAS_WAIT` asks for (`auto`: `stream` where CUPTI loads, else `host`).
fn wait_choice() -> Result<Wait, String> {
    let cupti = crate::cupti_stream::available();
    match crate::op_registry::env_choice("LLAMA_CUBLAS_WAIT", &WAIT_CHOICES)
        .map_err(|e| e.to_string())?
    {
        "host" => Ok(Wait::Host),
        "stream" if !cupti => {
            Err("LLAMA_CUBLAS_WAIT=stream needs libcupti (set LLAMA_CUPTI)".into())
        }
        "auto" if !cupti => Ok(Wait::Host),
        _ => Ok(Wait::Stream),
    }
}

/// Each device's cuBLAS state. Nothing that waits for CubeCL's runner thread may run while this
/// is held: the runner takes it for the products queued on it.
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
            Ok(Self {
                ctx,
                handle,
                stream,
                bound: stream,
                cubecl_streams: HashMap::new(),
                wait: wait_choice()?,
            })
        }
    }

    /// Points the handle at `on` (cuBLAS keeps a workspace per stream).
    fn bind(&mut self, on: cu::CUstream) -> Result<(), String> {
        if on != self.bound {
            // SAFETY: a live handle and a live stream of this context.
            unsafe { cublas::set_stream(self.handle, on as blas::cudaStream_t) }
                .map_err(|e| format!("cuBLAS stream: {e:?}"))?;
            self.bound = on;
        }
        Ok(())
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

/// Runs `f` with device `ordinal`'s primary context current, one caller at a time (behind the
/// cuBLAS state's lock, which CubeCL's runner also takes for queued products).
pub(crate) fn in_context<T>(
    ordinal: usize,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    with_blas(ordinal, |_| f())
}

/// Whether cuBLAS loads and gets a handle on `device` (the product is registered only then).
pub fn available(device: &CudaDevice) -> Result<(), String> {
    std::panic::catch_unwind(|| with_blas(device.index, |_| Ok(())))
        .unwrap_or_else(|_| Err("libcublas could not be loaded".into()))
}

/// The hand-over between CubeCL's stream and cuBLAS's that `device`'s products use (`stream` or
/// `host`).
pub fn hand_over_name(device: &CudaDevice) -> Result<&'static str, String> {
    with_blas(device.index, |b| {
        Ok(match b.wait {
            Wait::Host => "host",
            Wait::Stream => "stream",
        })
    })
}

/// [`llama_model::product::NativeProduct`] for `burn::backend::Cuda`: `x [.., m, k] · w [.., k,
/// n]` through cuBLAS, queued as a custom operation of the fusion stream; `None` for dtypes other
/// than f32, f16 and bf16, or mixed ones.
pub fn product(x: FloatTensor<Cuda>, w: FloatTensor<Cuda>) -> Option<FloatTensor<Cuda>> {
    let dims = product_dims(&x, &w)?;
    let dtype = x.dtype;
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

/// `x · w`'s dimensions where cuBLAS takes the pair (f32, f16 or bf16, one dtype, equal batch
/// dimensions).
fn product_dims(x: &FloatTensor<Cuda>, w: &FloatTensor<Cuda>) -> Option<Vec<usize>> {
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
    Some(dims)
}

/// [`llama_model::product::NativeAccumulate`] for `burn::backend::Cuda`: `c + x · w` as one
/// cuBLAS product with `β = 1` written into `c`'s buffer where the fusion stream hands that
/// buffer over (`c`'s last use, its memory not shared), else the product and a sum. Products
/// that share an input (q, k and v; gate and up) then leave one input gradient, without the
/// element-wise sums Burn's autodiff adds (a `[rows, dim]` read twice and written once each).
pub fn accumulate(
    c: FloatTensor<Cuda>,
    x: FloatTensor<Cuda>,
    w: FloatTensor<Cuda>,
) -> FloatTensor<Cuda> {
    use burn::tensor::ops::FloatTensorOps;
    // `c`'s shape and dtype are the product's (the caller's contract); cuBLAS's dtypes are not.
    if product_dims(&x, &w).is_none() {
        return Cuda::float_add(c, Cuda::float_matmul(x, w));
    }
    let client = x.client.clone();
    let streams = OperationStreams::with_inputs([&c, &x, &w]);
    let out = TensorIr::uninit(client.create_empty_handle(), c.shape.clone(), c.dtype);
    let desc = CustomOpIr::new(
        "cublas_accumulate",
        &[c.into_ir(), x.into_ir(), w.into_ir()],
        &[out],
    );
    client
        .register(
            streams,
            OperationIr::Custom(desc.clone()),
            Accumulate { desc },
        )
        .output()
}

#[derive(Clone, Debug)]
struct Accumulate {
    desc: CustomOpIr,
}

impl Operation<Runtime> for Accumulate {
    fn execute(&self, handles: &mut HandleContainer<<Runtime as FusionRuntime>::FusionHandle>) {
        use burn::tensor::ops::FloatTensorOps;
        let ([c, x, w], [y]) = self.desc.as_fixed();
        let c = handles.get_float_tensor::<Inner>(c);
        let x = handles.get_float_tensor::<Inner>(x);
        let w = handles.get_float_tensor::<Inner>(w);
        // Into `c` only where nothing else holds its buffer and cuBLAS can write it as `y`
        // (`gemm` checks its shape and dtype).
        let writable = c.can_mut() && c.is_contiguous() && c.is_contiguous_buffer();
        let summed = match writable {
            true => gemm(x.clone(), w.clone(), Some(&c)),
            false => Err("an accumulator shared or strided".into()),
        };
        let out = summed.unwrap_or_else(|_| {
            let p = gemm(x.clone(), w.clone(), None)
                .unwrap_or_else(|_| <Inner as FloatTensorOps<Inner>>::float_matmul(x, w));
            <Inner as FloatTensorOps<Inner>>::float_add(c, p)
        });
        handles.register_float_tensor::<Inner>(&y.id, out);
    }
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
        let out = match gemm(x.clone(), w.clone(), None) {
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

/// One product's cuBLAS arguments (`y [m, n] = x [m, k] · w [k, n]` per batch entry), every
/// fallible conversion done before anything is queued.
struct Gemm {
    ty: blas::cudaDataType,
    w_op: blas::cublasOperation_t,
    x_op: blas::cublasOperation_t,
    n: i32,
    m: i32,
    k: i32,
    ldw: i32,
    ldx: i32,
    w_stride: i64,
    x_stride: i64,
    y_stride: i64,
    batches: i32,
    /// `y`'s size in bytes.
    y_bytes: usize,
    /// 0 (`y = x · w`) or 1 (`y += x · w`).
    beta: f32,
}

impl Gemm {
    /// Queues the product on the stream `handle` is set to.
    ///
    /// # Safety
    /// `w`, `x` and `y` are device buffers of the sizes the arguments describe, written (`w`,
    /// `x`) before the product runs on that stream and not reused before it ends.
    unsafe fn queue(
        &self,
        handle: blas::cublasHandle_t,
        w: cu::CUdeviceptr,
        x: cu::CUdeviceptr,
        y: cu::CUdeviceptr,
    ) -> Result<(), String> {
        let (alpha, beta) = (1.0f32, self.beta);
        // Row-major `y [m, n] = x · w` is column-major `yᵀ [n, m] = wᵀ · xᵀ`; one entry point for
        // every product (with a batch count of 1 the strides are unused).
        unsafe {
            cublas::gemm_strided_batched_ex(
                handle,
                self.w_op,
                self.x_op,
                self.n,
                self.m,
                self.k,
                (&alpha as *const f32).cast(),
                w as *const _,
                self.ty,
                self.ldw,
                self.w_stride,
                x as *const _,
                self.ty,
                self.ldx,
                self.x_stride,
                (&beta as *const f32).cast(),
                y as *mut _,
                self.ty,
                self.n,
                self.y_stride,
                self.batches,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| format!("cublasGemmStridedBatchedEx: {e:?}"))
    }
}

/// CubeCL's stream for the caller's stream id where the hand-over is `stream` (found through
/// CUPTI on the id's first product), `None` where the host waits.
pub(crate) fn cubecl_stream(
    client: &ComputeClient<CudaRuntime>,
    device: usize,
    id: StreamId,
) -> Result<Option<cu::CUstream>, String> {
    let (wait, known) = with_blas(device, |b| {
        Ok((b.wait, b.cubecl_streams.get(&id.value).copied()))
    })?;
    if wait != Wait::Stream {
        return Ok(None);
    }
    if known.is_some() {
        return Ok(known);
    }
    // Outside `BLAS`'s lock: the sync waits for CubeCL's runner. Its fence is recorded on this
    // id's stream, last.
    match crate::cupti_stream::stream_of(|| {
        let _ = burn_cubecl::cubecl::future::block_on(client.sync());
    }) {
        Ok(s) => with_blas(device, |b| {
            b.cubecl_streams.insert(id.value, s as cu::CUstream);
            Ok(Some(s as cu::CUstream))
        }),
        // E.g. a profiler holds CUPTI's one subscription: host waits from now.
        Err(e) => {
            eprintln!("warning: CubeCL's stream not found ({e}); cuBLAS waits on the host");
            with_blas(device, |b| {
                b.wait = Wait::Host;
                Ok(None)
            })
        }
    }
}

/// The product as a task of CubeCL's runner thread: the buffers' pointers, then cuBLAS on
/// CubeCL's stream `stream`. Earlier launches are issued before it and later ones after it, so
/// the stream keeps them in order; CubeCL's pool reuses buffers in that order too.
fn queued_product(
    server: &mut Server,
    device: usize,
    id: StreamId,
    stream: usize,
    gemm: &Gemm,
    [w, x, y]: [Binding; 3],
) {
    let stream = stream as cu::CUstream;
    // The resources are held until cuBLAS is queued, like the bindings of a CubeCL launch.
    let mut resource = |b: Binding| {
        server
            .get_resource(b, id)
            .map_err(|e| format!("CubeCL buffer: {e:?}"))
    };
    let y = resource(y);
    let result = match &y {
        Ok(y) => resource(w).and_then(|w| {
            let x = resource(x)?;
            with_blas(device, |blas| {
                blas.bind(stream)?;
                // SAFETY: CubeCL's buffers of the product's sizes, queued behind their writers.
                unsafe {
                    gemm.queue(
                        blas.handle,
                        w.resource().ptr,
                        x.resource().ptr,
                        y.resource().ptr,
                    )
                }
            })
        }),
        Err(e) => Err(e.clone()),
    };
    if let Err(e) = result {
        // The task cannot fall back to CubeCL's product (it runs inside CubeCL's server): the
        // output is filled with NaN where it can be, so that the step shows it, and later
        // products wait on the host, where they can.
        let output = match &y {
            Ok(y) => {
                // SAFETY: `y` is a buffer of `y_bytes` bytes on this stream.
                let _ =
                    unsafe { cu::cuMemsetD8Async(y.resource().ptr, 0xff, gemm.y_bytes, stream) };
                "its output is NaN"
            }
            Err(_) => "this step's result is invalid",
        };
        let _ = with_blas(device, |blas| {
            blas.wait = Wait::Host;
            Ok(())
        });
        eprintln!(
            "error: a cuBLAS product failed on CubeCL's stream ({e}); {output}, later products \
             wait on the host"
        );
    }
}

/// `y = x · w` for CubeCL tensors, `y` a new contiguous tensor; or with `acc`, `acc += x · w`
/// in `acc`'s buffer (contiguous, of the product's shape and dtype, not read or written by
/// anything else), returned as `y`.
fn gemm(
    x: CubeTensor<CudaRuntime>,
    w: CubeTensor<CudaRuntime>,
    acc: Option<&CubeTensor<CudaRuntime>>,
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
    let y = match acc {
        Some(c) if c.meta.shape().to_vec() == dims && c.dtype == dtype => c.clone(),
        Some(_) => return Err("an accumulator of another shape or dtype".into()),
        None => burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            client.clone(),
            x.device.clone(),
            Shape::from(dims),
            dtype,
        ),
    };
    if m == 0 || n == 0 || batch == 0 || (k == 0 && acc.is_some()) {
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
    let stride = |s: usize| i64::try_from(s).map_err(|_| format!("stride {s} over i64"));
    let args = Gemm {
        ty,
        w_op: wo.op,
        x_op: xo.op,
        n: int(n)?,
        m: int(m)?,
        k: int(k)?,
        ldw: int(wo.ld)?,
        ldx: int(xo.ld)?,
        w_stride: stride(wo.batch_stride)?,
        x_stride: stride(xo.batch_stride)?,
        y_stride: stride(m * n)?,
        batches: int(batch)?,
        y_bytes: batch * m * n * dtype.size(),
        beta: if acc.is_some() { 1.0 } else { 0.0 },
    };
    let device = x.device.index;
    let id = StreamId::current();
    if let Some(stream) = cubecl_stream(&client, device, id)? {
        let bindings = [&w, &x, &y].map(|t| t.handle.clone().binding());
        let stream = stream as usize;
        DeviceHandle::<Server>::new(x.device.to_id())
            .submit(move |server| queued_product(server, device, id, stream, &args, bindings));
        return Ok(y);
    }
    // Host waits. The pointers and CubeCL's sync come before `BLAS`'s lock (both wait for the
    // runner, which may be running a product queued before the switch to host waits).
    let pointer = |t: &CubeTensor<CudaRuntime>| {
        client
            .get_resource(t.handle.clone())
            .map_err(|e| format!("CubeCL buffer: {e:?}"))
    };
    let (wr, xr, yr) = (pointer(&w)?, pointer(&x)?, pointer(&y)?);
    // CubeCL's kernels that write `x` and `w` are queued on its own stream: wait for them.
    burn_cubecl::cubecl::future::block_on(client.sync())
        .map_err(|e| format!("CubeCL sync: {e:?}"))?;
    with_blas(device, |blas| {
        let own = blas.stream;
        blas.bind(own)?;
        // SAFETY: CubeCL's buffers of the product's sizes, written (the sync above) and kept
        // (`wr`, `xr`, `yr`) until cuBLAS's stream is done with them.
        unsafe {
            let (w, x, y) = (wr.resource().ptr, xr.resource().ptr, yr.resource().ptr);
            args.queue(blas.handle, w, x, y)?;
            driver::stream::synchronize(own).map_err(|e| format!("cuBLAS stream: {e}"))
        }
    })?;
    drop((xr, wr, yr));
    Ok(y)
}
