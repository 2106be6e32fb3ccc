//! This project's CUDA kernels on CubeCL's buffers (`cubecl_flash`, `cubecl_loss`): modules
//! compiled by NVRTC on first use and kernels queued in order with CubeCL's own.
//!
//! Like the cuBLAS products (`crate::cubecl_cublas`, docs/performance.md attempts 48–49), a pass
//! is a custom operation of Burn's fusion stream: its `execute` allocates the outputs and hands
//! [`queue`] the launches, which become a task of CubeCL's device runner thread that resolves the
//! buffers' device pointers and launches on CubeCL's stream for the caller's stream id (found
//! through CUPTI), so nothing waits. Where CUPTI is unavailable at run time (a profiler holds it),
//! the host waits for CubeCL's queue, launches on the legacy stream and waits for it.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::Mutex;

use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::client::GlobalFusionClient;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr};
use cubecl::device::Device;
use cubecl::device_handle::DeviceHandle;
use cubecl::server::{Binding, ComputeServer};
use cubecl::stream_id::StreamId;
use cudarc::driver::{result as driver, sys as cu};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use crate::cubecl_cublas::{Cuda, Inner, Runtime, Server, cubecl_stream, in_context};

/// A CUDA source and the kernels it defines.
pub(crate) struct Source {
    /// Its file name (NVRTC's messages name it).
    pub name: &'static str,
    pub code: &'static str,
    pub kernels: &'static [&'static str],
}

/// Loaded kernels by (source, CUDA ordinal), or why they are not there.
type Loaded = HashMap<(&'static str, usize), Result<HashMap<&'static str, usize>, String>>;
static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// `source` compiled to PTX for `arch` (`compute_90`).
fn compile(source: &Source, arch: &'static str) -> Result<String, String> {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("NVRTC (libnvrtc) is not on the library path".into());
    }
    let options = CompileOptions {
        name: Some(source.name.into()),
        arch: Some(arch),
        ..Default::default()
    };
    compile_ptx_with_opts(source.code, options)
        .map(|p| p.to_src())
        .map_err(|e| format!("NVRTC ({}): {e}", source.name))
}

fn load(source: &Source, ordinal: usize) -> Result<HashMap<&'static str, usize>, String> {
    in_context(ordinal, || {
        use cu::CUdevice_attribute as A;
        // SAFETY: driver queries and a module load in the current (primary) context.
        unsafe {
            let dev = driver::device::get(ordinal as i32).map_err(|e| format!("device: {e}"))?;
            let major =
                driver::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                    .map_err(|e| format!("device attribute: {e}"))?;
            if major < 8 {
                return Err(format!("compute capability {major}.x: needs 8.0 or later"));
            }
            let minor =
                driver::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                    .map_err(|e| format!("device attribute: {e}"))?;
            // sm_90a code on Hopper (its wgmma instructions, which later architectures lack:
            // the flash kernels use them under `__CUDA_ARCH_FEAT_SM90_ALL`; `LLAMA_SM90A=off`
            // keeps the portable mma.sync kernels), sm_90 code on later ones, sm_80 code on
            // Ampere and Ada.
            let specific = std::env::var("LLAMA_SM90A").map_or(true, |v| v != "off");
            let arch = match (major, minor) {
                (9, 0) if specific => "compute_90a",
                (m, _) if m >= 9 => "compute_90",
                _ => "compute_80",
            };
            let ptx = CString::new(compile(source, arch)?).map_err(|e| format!("PTX: {e}"))?;
            let module = driver::module::load_data(ptx.as_ptr().cast())
                .map_err(|e| format!("loading {}: {e}", source.name))?;
            let mut functions = HashMap::new();
            for &name in source.kernels {
                let c = CString::new(name).map_err(|e| format!("kernel name: {e}"))?;
                let f = driver::module::get_function(module, c)
                    .map_err(|e| format!("kernel {name}: {e}"))?;
                functions.insert(name, f as usize);
            }
            Ok(functions)
        }
    })
}

/// Kernel `name` of `source` on device `ordinal` (the source compiled and loaded on first use).
pub(crate) fn function(
    source: &'static Source,
    ordinal: usize,
    name: &str,
) -> Result<cu::CUfunction, String> {
    let mut guard = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let loaded = map
        .entry((source.name, ordinal))
        .or_insert_with(|| load(source, ordinal));
    match loaded {
        Ok(k) => k
            .get(name)
            .map(|&f| f as cu::CUfunction)
            .ok_or_else(|| format!("no kernel {name} in {}", source.name)),
        Err(e) => Err(e.clone()),
    }
}

/// Whether `source` compiles and loads on device `ordinal` (checked through its first kernel).
pub(crate) fn available(source: &'static Source, ordinal: usize) -> Result<(), String> {
    std::panic::catch_unwind(|| function(source, ordinal, source.kernels[0]).map(|_| ()))
        .unwrap_or_else(|_| Err("NVRTC or the CUDA driver could not be loaded".into()))
}

/// An uninitialised contiguous tensor of `shape` and `dtype` on `like`'s device (a pass's
/// output or scratch).
pub(crate) fn empty(
    like: &CubeTensor<CudaRuntime>,
    shape: impl Into<burn::tensor::Shape>,
    dtype: burn::tensor::DType,
) -> CubeTensor<CudaRuntime> {
    burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        dtype,
    )
}

/// An uninitialised `[b, h, t, d]` tensor stored as `[b, t, h, d]` (each time step's heads side by
/// side): the layout of the model's projections, so that turning attention's heads back into
/// `[b, t, h·d]` rows (`swap_dims(1, 2)`, a reshape) is a view, not a copy.
pub(crate) fn empty_time_major(
    like: &CubeTensor<CudaRuntime>,
    [b, h, t, d]: [usize; 4],
    dtype: burn::tensor::DType,
) -> CubeTensor<CudaRuntime> {
    burn_cubecl::ops::permute(empty(like, [b, t, h, d], dtype), &[0, 2, 1, 3])
}

/// What a pass's `run` returns: its outputs (allocated whatever happens) and whether its kernels
/// were queued.
pub(crate) type Ran = (Vec<CubeTensor<CudaRuntime>>, Result<(), String>);

/// A pass of this project's kernels as a custom operation of Burn's fusion stream: `run` gets the
/// inputs' CubeCL tensors (in the description's order) and the pass itself (the outputs'
/// descriptions, its scalars), and returns the outputs, registered under the description's
/// output ids.
#[derive(Clone, Debug)]
pub(crate) struct Pass {
    pub desc: CustomOpIr,
    /// What the pass is, for the error message.
    pub what: &'static str,
    pub run: fn(Vec<CubeTensor<CudaRuntime>>, &Pass) -> Ran,
    /// Numbers the kernels take besides the tensors (an epsilon).
    pub scalars: Vec<f64>,
}

impl Pass {
    /// Queues the pass in `client`'s fusion stream after the operations writing its inputs; its
    /// outputs.
    pub fn register(
        self,
        client: &GlobalFusionClient<Runtime>,
        streams: OperationStreams,
    ) -> Vec<burn::tensor::ops::FloatTensor<Cuda>> {
        client.register(streams, OperationIr::Custom(self.desc.clone()), self)
    }
}

impl Operation<Runtime> for Pass {
    fn execute(
        &self,
        handles: &mut HandleContainer<<Runtime as burn_fusion::FusionRuntime>::FusionHandle>,
    ) {
        let inputs = self
            .desc
            .inputs
            .iter()
            .map(|x| handles.get_float_tensor::<Inner>(x))
            .collect();
        let (outputs, result) = (self.run)(inputs, self);
        if let Err(e) = result {
            // The operation cannot return an error: the outputs are NaN (or unwritten, if the
            // pointers could not be had) and the step shows it.
            eprintln!(
                "error: {} could not be queued ({e}); its outputs are NaN",
                self.what
            );
        }
        for (ir, t) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<Inner>(&ir.id, t);
        }
    }
}

/// One kernel launch: its name, grid, block and parameters.
pub(crate) struct Launch {
    pub name: String,
    pub grid: (u32, u32, u32),
    pub threads: u32,
    pub args: Vec<Arg>,
}

/// A kernel parameter.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    /// The device pointer of the `i`-th tensor handed to [`queue`].
    Ptr(usize),
    /// The same, `bytes` further on (a range of a tensor).
    PtrAt(usize, u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Queues `launches` (kernels of `source`) after CubeCL's work on the caller's stream id. The
/// tensors from `first_output` on are outputs: if a launch fails inside the runner's task (where
/// nothing can be returned) they are filled with NaN and an error is printed; every row of the
/// tensors the kernels read with 16-byte loads must start 16-byte aligned, which is checked on the
/// pointers (`aligned16`: the tensors whose pointers must be).
pub(crate) fn queue(
    source: &'static Source,
    tensors: &[&CubeTensor<CudaRuntime>],
    first_output: usize,
    aligned16: &[usize],
    launches: Vec<Launch>,
) -> Result<(), String> {
    let client = tensors[0].client.clone();
    let device = tensors[0].device.index;
    let functions = launches
        .iter()
        .map(|l| function(source, device, &l.name).map(|f| f as usize))
        .collect::<Result<Vec<_>, _>>()?;
    let sizes: Vec<usize> = tensors
        .iter()
        .map(|t| t.handle.size_in_used() as usize)
        .collect();
    let aligned16 = aligned16.to_vec();
    let misaligned = move |ptrs: &[u64]| aligned16.iter().any(|&i| !ptrs[i].is_multiple_of(16));
    let id = StreamId::current();
    if let Some(stream) = cubecl_stream(&client, device, id)? {
        let bindings: Vec<Binding> = tensors.iter().map(|t| t.handle.clone().binding()).collect();
        let stream = stream as usize;
        let dev = tensors[0].device.to_id();
        DeviceHandle::<Server>::new(dev).submit(move |server| {
            let stream = stream as cu::CUstream;
            // The resources are held until the kernels are queued, like a CubeCL launch's.
            let held = bindings
                .into_iter()
                .map(|b| server.get_resource(b, id))
                .collect::<Result<Vec<_>, _>>();
            let held = match held {
                Ok(held) => held,
                Err(e) => {
                    eprintln!("error: {} could not read CubeCL's buffers ({e:?}); this step's result is invalid", source.name);
                    return;
                }
            };
            let ptrs: Vec<u64> = held.iter().map(|r| r.resource().ptr).collect();
            let result = if misaligned(&ptrs) {
                Err("a buffer not 16-byte aligned".to_string())
            } else {
                in_context(device, || launch_all(&launches, &functions, &ptrs, stream))
            };
            if let Err(e) = result {
                for (&p, &bytes) in ptrs.iter().zip(&sizes).skip(first_output) {
                    // SAFETY: an output buffer of `bytes` bytes on this stream.
                    let _ = unsafe { cu::cuMemsetD8Async(p, 0xff, bytes, stream) };
                }
                eprintln!("error: {} failed on CubeCL's stream ({e}); its outputs are NaN", source.name);
            }
        });
        return Ok(());
    }
    // Host waits: the pointers, CubeCL's queue drained, the kernels on the legacy stream, waited for.
    let held = tensors
        .iter()
        .map(|t| {
            client
                .get_resource(t.handle.clone())
                .map_err(|e| format!("CubeCL buffer: {e:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    burn_cubecl::cubecl::future::block_on(client.sync())
        .map_err(|e| format!("CubeCL sync: {e:?}"))?;
    let ptrs: Vec<u64> = held.iter().map(|r| r.resource().ptr).collect();
    in_context(device, || {
        let stream = std::ptr::null_mut();
        let result = if misaligned(&ptrs) {
            Err("a buffer not 16-byte aligned".to_string())
        } else {
            launch_all(&launches, &functions, &ptrs, stream)
        };
        if result.is_err() {
            for (&p, &bytes) in ptrs.iter().zip(&sizes).skip(first_output) {
                // SAFETY: an output buffer of `bytes` bytes, idle (CubeCL's queue is drained).
                let _ = unsafe { cu::cuMemsetD8Async(p, 0xff, bytes, stream) };
            }
        }
        // SAFETY: the legacy stream of the current context.
        let synced =
            unsafe { driver::stream::synchronize(stream) }.map_err(|e| format!("CUDA: {e}"));
        result.and(synced)
    })?;
    drop(held);
    Ok(())
}

fn launch_all(
    launches: &[Launch],
    functions: &[usize],
    ptrs: &[u64],
    stream: cu::CUstream,
) -> Result<(), String> {
    launches
        .iter()
        .zip(functions)
        .try_for_each(|(l, &f)| launch(f as cu::CUfunction, l, ptrs, stream))
}

/// Launches `l` with `ptrs` for its pointer parameters on `stream`.
fn launch(f: cu::CUfunction, l: &Launch, ptrs: &[u64], stream: cu::CUstream) -> Result<(), String> {
    // Parameter values live in `values` while the driver copies them at launch.
    let mut values: Vec<[u8; 8]> = l
        .args
        .iter()
        .map(|a| {
            let mut v = [0u8; 8];
            match *a {
                Arg::Ptr(i) => v.copy_from_slice(&ptrs[i].to_ne_bytes()),
                Arg::PtrAt(i, bytes) => v.copy_from_slice(&(ptrs[i] + bytes).to_ne_bytes()),
                Arg::I64(x) => v.copy_from_slice(&x.to_ne_bytes()),
                Arg::I32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                Arg::F32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
            }
            v
        })
        .collect();
    let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
    // SAFETY: `f` is a loaded kernel whose parameters are, in order, the ones `l.args` describes
    // (each caller follows its source's signatures); the buffers outlive the launch (held by the
    // caller until queued, then kept by CubeCL's stream order).
    unsafe { driver::launch_kernel(f, l.grid, (l.threads, 1, 1), 0, stream, &mut params) }
        .map_err(|e| format!("{}: {e}", l.name))
}
