//! Fused CUDA kernels for libtorch tensors (`kernels.cu`), compiled at run time by NVRTC and
//! launched through `cudarc` on the stream torch uses; the launchers per operation are in `ops`.
//!
//! Why our own kernels: after attempts 1–13 a tch-cuda training step runs the same kernels as
//! PyTorch eager, and what separates both from `torch.compile` is fusion (docs/performance.md).
//! Compile's Triton kernels cannot be reached from Rust and libtorch has no fused cross-entropy,
//! RMSNorm, rotary, SwiGLU or single-pass AdamW, so these are written out: the cross-entropy
//! reads the `[tokens, vocab]` logits once forward and once backward (torch: about six passes, two
//! of them in f32), RMSNorm is one kernel each way instead of about seven (writing the next
//! layer's bf16 input directly), the rotary embedding and SwiGLU one each way, AdamW one pass per
//! bucket instead of eight (docs/performance.md, attempts 14–15). `cudarc` is the CUDA binding candle and CubeCL use; it loads the driver and NVRTC
//! when first asked, so a binary without a GPU never needs them.
//!
//! Launches go to torch's current stream (asked through the CUDA-graph shim where the binary has
//! it: while a decode step is recorded that is the capture's side stream; otherwise the legacy
//! default stream, torch's unless changed), so they are ordered with torch's kernels and its
//! caching allocator's reuse of freed blocks. Every function returns `None` when it cannot run (a CPU tensor, another
//! dtype, no NVRTC, a too-wide row); the callers then use torch's kernels.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use tch::{Device, Kind, Tensor};

mod decode_attention;
mod gemv;
mod occupancy;
mod ops;
mod rope_slot;
mod sample;
pub use decode_attention::*;
pub use gemv::*;
pub use ops::*;
pub use rope_slot::*;
pub use sample::*;

/// `kernels.cu` with decoding's attention, one-row products, rotation-and-cache-write and the
/// token draw appended (they use its helpers).
const SOURCE: &str = concat!(
    include_str!("kernels.cu"),
    include_str!("decode_attention.cu"),
    include_str!("gemv.cu"),
    include_str!("rope_slot.cu"),
    include_str!("sample.cu")
);

/// Kernel names without their dtype suffix (`_f32`, `_bf16`), in both dtypes.
pub const KERNELS: [&str; 20] = [
    "decode_attention_k32_d32",
    "decode_attention_k32_d64",
    "decode_attention_k32_d128",
    "decode_attention_k32_d256",
    "decode_attention_k16_d32",
    "decode_attention_k16_d64",
    "decode_attention_k16_d128",
    "decode_attention_k16_d256",
    "decode_attention_k8_d32",
    "decode_attention_k8_d64",
    "decode_attention_k8_d128",
    "decode_attention_k8_d256",
    "rope_slot",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "swiglu_forward",
    "swiglu_backward",
    "rotary",
    "rms_norm_forward",
    "rms_norm_backward",
];

/// Kernels with an f32 form only.
pub const F32_KERNELS: [&str; 2] = ["adamw", "sample_rows"];

/// Kernels with a bf16 form only.
pub const BF16_KERNELS: [&str; 2] = ["gemv", "gemv_swiglu"];

/// The residual update with the next RMSNorm, by (update, output) dtype; the stream is f32.
pub const ADD_NORM_KERNELS: [&str; 3] = [
    "add_rms_norm_f32_f32",
    "add_rms_norm_bf16_bf16",
    "add_rms_norm_bf16_f32",
];

/// RMSNorm's f32 input with a bf16 output, AdamW's f32 parameters with a bf16 gradient
/// (`_f32_bf16`).
pub const MIXED_KERNELS: [&str; 3] = ["rms_norm_forward", "rms_norm_backward", "adamw"];

/// Kernels launched with programmatic dependent launch on sm_90 and later (each starts with
/// `pdl_start`, or waits with `pdl_wait` before reading anything the kernel ahead may write; see
/// `kernels.cu`): those of a decoded token, so that each is resident and waiting when the one
/// ahead ends instead of launching after it. Only while a graph is recorded and only behind
/// another of these (see `capture`). `LLAMA_PDL=off` launches them plainly.
pub const PDL_KERNELS: [&str; 7] = [
    "gemv",
    "add_rms_norm",
    "rms_norm_forward",
    "swiglu_forward",
    "rotary",
    "decode_attention",
    "rope_slot",
];

/// The virtual architecture the kernels are compiled for on a device of compute capability
/// `major`: sm_90's for Hopper and later (programmatic dependent launch's instructions exist from
/// there), NVRTC's default below it.
pub fn arch_for(major: i32) -> Option<&'static str> {
    (major >= 9).then_some("compute_90")
}

/// Whether NVRTC can be loaded (a CUDA toolkit, or PyPI's `nvidia-cuda-nvrtc`, on the library
/// path).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The kernels compiled to PTX for NVRTC's default architecture (no GPU needed; the tests use it
/// to check the source).
pub fn compile() -> Result<Ptx, String> {
    compile_for(None)
}

/// The kernels compiled to PTX for the virtual architecture `arch` (`compute_90`), or NVRTC's
/// default.
pub fn compile_for(arch: Option<&'static str>) -> Result<Ptx, String> {
    if !nvrtc_present() {
        return Err("NVRTC (libnvrtc) is not on the library path".into());
    }
    let options = CompileOptions {
        // Accurate expf/logf/division: the statistics must match torch's to f32 rounding.
        use_fast_math: Some(false),
        name: Some("kernels.cu".into()),
        arch,
        // Attempt 31's value loads and the one-row product's L1-allocating weight loads, for
        // comparison (`decode_attention.cu`, `gemv.cu`).
        options: [
            (!crate::op_registry::knob_on("LLAMA_ATTN_VALUES", "narrow"))
                .then(|| "-DDECODE_VALUE_FLOATS=8".to_string()),
            (!crate::op_registry::knob_on("LLAMA_GEMV_LOADS", "cached"))
                .then(|| "-DGEMV_CACHED_LOADS".to_string()),
        ]
        .into_iter()
        .flatten()
        .collect(),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, options).map_err(|e| format!("NVRTC: {e}"))
}

/// The loaded kernels of one device.
pub(super) struct Loaded {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<String, CudaFunction>,
    /// Kernels whose argument list was checked against their signature.
    checked: Mutex<HashSet<String>>,
    /// Whether [`PDL_KERNELS`] launch with programmatic dependent launch.
    pdl: bool,
    /// The capture and graph node of the last of [`PDL_KERNELS`] recorded (see `capture`).
    tail: Mutex<Option<(u64, usize)>>,
    /// Streaming multiprocessors of the device.
    pub(super) sms: usize,
    /// Whether the kernels were compiled for sm_90 (`arch_for`): launches in thread-block
    /// clusters are available.
    pub(super) sm90: bool,
    /// [`Loaded::resident_blocks`] by kernel and block size.
    resident: Mutex<HashMap<(&'static str, usize), usize>>,
    /// [`Loaded::resident_clusters`] by kernel (its handle), block size, shared memory and
    /// cluster size.
    clusters: Mutex<HashMap<(usize, usize, u32, u32), usize>>,
}

/// Per CUDA ordinal: the loaded kernels, or `None` after a failure (reported once).
static LOADED: OnceLock<Mutex<HashMap<usize, Option<Arc<Loaded>>>>> = OnceLock::new();

fn load(ordinal: usize) -> Result<Loaded, String> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA context: {e}"))?;
    let attribute = |a| {
        ctx.attribute(a)
            .map_err(|e| format!("CUDA device attributes: {e}"))
    };
    let major = attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let sms = usize::try_from(attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?)
        .map_err(|e| format!("CUDA device attributes: {e}"))?;
    let ptx = compile_for(arch_for(major))?;
    let module = ctx
        .load_module(ptx)
        .map_err(|e| format!("loading the kernels: {e}"))?;
    let mut functions = HashMap::new();
    let names = KERNELS
        .iter()
        .flat_map(|name| [format!("{name}_f32"), format!("{name}_bf16")])
        .chain(F32_KERNELS.iter().map(|name| format!("{name}_f32")))
        .chain(BF16_KERNELS.iter().map(|name| format!("{name}_bf16")))
        .chain(ADD_NORM_KERNELS.iter().map(|name| name.to_string()))
        .chain(MIXED_KERNELS.iter().map(|name| format!("{name}_f32_bf16")));
    for full in names {
        let f = module
            .load_function(&full)
            .map_err(|e| format!("kernel {full}: {e}"))?;
        functions.insert(full, f);
    }
    Ok(Loaded {
        pdl: arch_for(major).is_some()
            && driver_version() >= 12030
            && crate::op_registry::knob_on("LLAMA_PDL", "off"),
        stream: ctx.default_stream(),
        ctx,
        functions,
        checked: Mutex::default(),
        tail: Mutex::default(),
        sms,
        sm90: arch_for(major).is_some(),
        resident: Mutex::default(),
        clusters: Mutex::default(),
    })
}

pub(super) fn loaded(device: Device) -> Option<Arc<Loaded>> {
    let Device::Cuda(ordinal) = device else {
        return None;
    };
    let mut map = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(ordinal)
        .or_insert_with(|| match load(ordinal) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                eprintln!("warning: fused CUDA kernels unavailable, using torch's: {e}");
                None
            }
        })
        .clone()
}

/// Whether the fused kernels load on `device` (compiling them on first use).
pub fn available(device: Device) -> bool {
    loaded(device).is_some()
}

/// The dtype suffix of a tensor the kernels take.
pub(super) fn suffix(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Float => Some("f32"),
        Kind::BFloat16 => Some("bf16"),
        _ => None,
    }
}

pub(super) fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// 1 when every tensor's data is aligned for the kernels' four-element loads, else 0.
pub(super) fn vec4(ts: &[&Tensor]) -> i32 {
    ts.iter()
        .all(|t| ptr(t).is_multiple_of(4 * t.kind().elt_size_in_bytes() as u64))
        .into()
}

/// `name` with the suffix of the dtype it runs in.
pub(super) fn named(name: &str, kind: Kind) -> Option<String> {
    Some(format!("{name}_{}", suffix(kind)?))
}

pub(super) fn launch(
    k: &Loaded,
    full: String,
    grid: usize,
    block: usize,
    args: &[&dyn Arg],
) -> Option<()> {
    launch_shared(k, full, grid, block, 0, args)
}

/// [`launch`] with `shared` bytes of dynamic shared memory per block.
pub(super) fn launch_shared(
    k: &Loaded,
    full: String,
    grid: usize,
    block: usize,
    shared: u32,
    args: &[&dyn Arg],
) -> Option<()> {
    launch_cluster(k, full, grid, block, shared, 1, args)
}

/// [`launch_shared`] in thread-block clusters of `cluster` blocks (1: none; more only where
/// `Loaded::sm90`, with `grid` a multiple of it, at most 8).
pub(super) fn launch_cluster(
    k: &Loaded,
    full: String,
    grid: usize,
    block: usize,
    shared: u32,
    cluster: u32,
    args: &[&dyn Arg],
) -> Option<()> {
    let f = k.functions.get(&full)?;
    // The driver reads one value per parameter of the kernel from the argument list: a list that
    // does not match would make it read past it (a crash in the driver, not an error), so the
    // first launch of each kernel checks the list against the kernel's signature.
    let mut checked = k.checked.lock().unwrap_or_else(|e| e.into_inner());
    if !checked.contains(&full) {
        let want: Vec<usize> = args.iter().map(|a| a.size()).collect();
        if let Some(have) = param_sizes(f)
            && have != want
        {
            eprintln!(
                "warning: fused CUDA kernel {full} takes parameters of {have:?} bytes, given {want:?}"
            );
            return None;
        }
        checked.insert(full.clone());
    }
    drop(checked);
    let stream = current_stream(k);
    // Only a PDL kernel on a stream that records a graph needs the capture's state (one driver
    // query here, one after the launch; none outside a capture beyond this one).
    let recording = (k.pdl && PDL_KERNELS.iter().any(|base| full.starts_with(base)))
        .then(|| capture(&stream))
        .flatten();
    let tail = |c: Option<(u64, Option<usize>)>| c.and_then(|(id, n)| Some((id, n?)));
    let after_ours = tail(recording)
        .is_some_and(|t| *k.tail.lock().unwrap_or_else(|e| e.into_inner()) == Some(t));
    let dims = (grid, block, shared);
    let launched = if after_ours || cluster > 1 {
        launch_ex(k, f, &stream, dims, args, after_ours, cluster)
    } else {
        launch_plain(f, &stream, dims, args)
    };
    if let Err(e) = launched {
        eprintln!("warning: fused CUDA kernel {full} failed to launch: {e}");
        return None;
    }
    if recording.is_some() {
        *k.tail.lock().unwrap_or_else(|e| e.into_inner()) = tail(capture(&stream));
    }
    Some(())
}

/// `f` launched on `stream` through `cudarc`'s builder.
fn launch_plain(
    f: &CudaFunction,
    stream: &CudaStream,
    (grid, block, shared): (usize, usize, u32),
    args: &[&dyn Arg],
) -> Result<(), String> {
    let mut b = stream.launch_builder(f);
    for a in args {
        a.push(&mut b);
    }
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(grid).map_err(|_| format!("grid of {grid} blocks"))?,
            1,
            1,
        ),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: shared,
    };
    // SAFETY: every pointer argument is the data of a contiguous tensor of the kind and size the
    // kernel indexes (checked by the callers), alive until this call returns; torch's allocator
    // reuses a freed block only for work queued after this launch on the same stream.
    unsafe { b.launch(cfg) }
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The capture's id and its one tail node (`None` for several) when `stream` is recording a CUDA
/// graph (a decode step); `None` when it is not.
///
/// A kernel goes in with programmatic dependent launch only when the node ahead of it is the last
/// of ours recorded: our kernels let the next one start early (`pdl_trigger`), torch's do not,
/// and behind those the attribute only cost time (`1b` decoding at batch 8, whose products are
/// cuBLAS's, was 3 % slower with it on every kernel in two device calls). Outside a capture
/// (training) the kernels around ours are torch's, so there is nothing to gain there either.
fn capture(stream: &CudaStream) -> Option<(u64, Option<usize>)> {
    use cudarc::driver::sys;
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    let (mut id, mut deps, mut n) = (0u64, std::ptr::null(), 0usize);
    // SAFETY: a query of a live stream with out-pointers we own; the driver owns the dependency
    // array, read before the next call on this stream.
    let r = unsafe {
        sys::cuStreamGetCaptureInfo_v3(
            stream.cu_stream(),
            &mut status,
            &mut id,
            std::ptr::null_mut(),
            &mut deps,
            std::ptr::null_mut(),
            &mut n,
        )
    };
    let capturing = r == sys::CUresult::CUDA_SUCCESS
        && status == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE;
    // SAFETY: `deps` points at `n` nodes when the query succeeded.
    let node = (n == 1 && !deps.is_null()).then(|| unsafe { *deps } as usize);
    capturing.then_some((id, node))
}

/// The launch attribute for thread-block clusters of `cluster` blocks along x.
pub(super) fn cluster_attribute(cluster: u32) -> cudarc::driver::sys::CUlaunchAttribute {
    use cudarc::driver::sys;
    // SAFETY: a plain-data C struct; zero is a valid value of every field.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim.x = cluster;
    attr.value.clusterDim.y = 1;
    attr.value.clusterDim.z = 1;
    attr
}

/// `f` launched on `stream` through `cuLaunchKernelEx` (`cudarc`'s builder has no launch
/// attributes): with programmatic stream serialisation allowed if `pdl` (a stream capture records
/// it as a programmatic edge of the graph), in clusters of `cluster` blocks if more than one.
fn launch_ex(
    k: &Loaded,
    f: &CudaFunction,
    stream: &CudaStream,
    (grid, block, shared): (usize, usize, u32),
    args: &[&dyn Arg],
    pdl: bool,
    cluster: u32,
) -> Result<(), String> {
    use cudarc::driver::sys;
    let grid = u32::try_from(grid).map_err(|_| format!("grid of {grid} blocks"))?;
    let block = u32::try_from(block).map_err(|_| format!("block of {block} threads"))?;
    // The driver reads each parameter through its pointer during the call only.
    let mut params: Vec<*mut std::ffi::c_void> = args.iter().map(|a| a.addr()).collect();
    let mut attrs: Vec<sys::CUlaunchAttribute> = Vec::with_capacity(2);
    if pdl {
        // SAFETY: a plain-data C struct; zero is a valid value of every field.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        attrs.push(attr);
    }
    if cluster > 1 {
        attrs.push(cluster_attribute(cluster));
    }
    let config = sys::CUlaunchConfig {
        gridDimX: grid,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: shared,
        hStream: stream.cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: attrs.len() as u32,
    };
    k.ctx.bind_to_thread().map_err(|e| e.to_string())?;
    // SAFETY: as for `launch_plain`'s launch (the argument list was checked against the
    // kernel's signature); `params` and `attrs` outlive the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(|e| e.to_string())
}

/// torch's current stream where the binary can ask torch for it (the CUDA-graph shim: a capture
/// records work on a side stream), else the legacy default stream, torch's unless changed.
fn current_stream(k: &Loaded) -> Arc<CudaStream> {
    #[cfg(llama_cuda_graph)]
    {
        let raw = crate::cuda_graph::current_stream();
        if !raw.is_null() {
            // SAFETY: torch's stream of this device (the primary context, which cudarc shares);
            // torch keeps its streams alive for the process, and the launch is ordered with
            // torch's work by being queued on that stream.
            return unsafe {
                k.ctx
                    .wrap_borrowed_stream(raw as cudarc::driver::sys::CUstream)
            };
        }
    }
    k.stream.clone()
}

/// A kernel argument (`cudarc`'s builder borrows each; this keeps them in one slice).
pub(super) trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
    fn size(&self) -> usize;
    /// The value's address, as `cuLaunchKernelEx` takes each parameter.
    fn addr(&self) -> *mut std::ffi::c_void;
}
macro_rules! arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
            fn size(&self) -> usize {
                std::mem::size_of::<$t>()
            }
            fn addr(&self) -> *mut std::ffi::c_void {
                (self as *const $t).cast_mut().cast()
            }
        }
    )*};
}
arg!(u64, i64, i32, f32);

/// The driver's CUDA version (`12030` for 12.3), 0 where it cannot say. Programmatic dependent
/// launch needs 12.3 (`cuStreamGetCaptureInfo_v3`, and launches with the attribute recorded into
/// graphs), the parameter check 12.4.
fn driver_version() -> i32 {
    let mut version = 0;
    // SAFETY: a plain driver query with an out-pointer we own.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if r == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        version
    } else {
        0
    }
}

/// The byte size of each of `f`'s parameters as the driver reads them (`cuFuncGetParamInfo`), or
/// `None` where the driver cannot say (before CUDA 12.4).
fn param_sizes(f: &CudaFunction) -> Option<Vec<usize>> {
    use cudarc::driver::sys;
    if driver_version() < 12040 {
        return None;
    }
    // SAFETY: plain driver queries with out-pointers we own; `f` is a loaded function.
    unsafe {
        let mut sizes = Vec::new();
        loop {
            let (mut offset, mut size) = (0usize, 0usize);
            let r = sys::cuFuncGetParamInfo(f.cu_function(), sizes.len(), &mut offset, &mut size);
            if r != sys::CUresult::CUDA_SUCCESS || sizes.len() > 64 {
                return Some(sizes);
            }
            sizes.push(size);
        }
    }
}

/// `t` contiguous, on a CUDA device with the kernels loaded, of a kind they take.
pub(super) fn ready(t: &Tensor) -> Option<(Tensor, Arc<Loaded>)> {
    suffix(t.kind())?;
    let k = loaded(t.device())?;
    Some((t.contiguous(), k))
}

pub(super) const ELEMENT_BLOCK: usize = 256;

pub(super) fn element_grid(n: usize) -> usize {
    n.div_ceil(ELEMENT_BLOCK).clamp(1, 65_536)
}
