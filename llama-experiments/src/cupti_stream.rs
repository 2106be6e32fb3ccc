//! The CUDA stream another library keeps private, found through CUPTI's driver-API callbacks.
//!
//! CubeCL 0.10 creates one non-blocking stream per calling thread and gives no handle to it, so
//! cuBLAS could only be ordered against CubeCL's kernels by host waits or by flags
//! (docs/performance.md attempt 37). CUPTI, NVIDIA's tools interface, calls back on every
//! driver call it is asked to watch, with the call's arguments: [`stream_of`] watches
//! `cuEventRecord` while the caller makes the library record an event on its stream (CubeCL's
//! `sync` does, for its fence) and returns that stream. Work queued on it afterwards runs in
//! order with the library's own, with no wait on the host or the device.
//!
//! CUPTI is loaded at run time (`libcupti.so`, from the CUDA toolkit or PyPI's
//! `nvidia-cuda-cupti`; `LLAMA_CUPTI` names the file): nothing of it is needed to build, and
//! without it the caller keeps its other hand-over. There are no Rust bindings of the callback
//! API on crates.io, so the few declarations used are written here, from `cupti_callbacks.h` and
//! `cupti_driver_cbid.h` (CUDA 12 and 13 agree on them).
//!
//! A libtorch build uses only [`library`] (`--trace-gpu`'s activity records).
#![cfg_attr(not(feature = "cuda-untuned"), allow(dead_code))]

use std::ffi::{c_char, c_void};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

/// `CUPTI_CB_DOMAIN_DRIVER_API`.
const DRIVER_API: u32 = 1;
/// `CUPTI_DRIVER_TRACE_CBID_cuEventRecord`.
const EVENT_RECORD: u32 = 119;
/// `CUPTI_API_ENTER`.
const API_ENTER: i32 = 0;

/// The head of `CUpti_CallbackData` (the fields after these are not read).
#[repr(C)]
struct CallbackData {
    callback_site: i32,
    _function_name: *const c_char,
    function_params: *const c_void,
}

/// `cuEventRecord_params`.
#[repr(C)]
struct EventRecordParams {
    _event: *mut c_void,
    stream: *mut c_void,
}

type Callback = unsafe extern "C" fn(*mut c_void, u32, u32, *const CallbackData);
type Subscribe = unsafe extern "C" fn(*mut *mut c_void, Callback, *mut c_void) -> i32;
type EnableCallback = unsafe extern "C" fn(u32, *mut c_void, u32, u32) -> i32;
type Unsubscribe = unsafe extern "C" fn(*mut c_void) -> i32;

/// The library and the three entry points used, loaded once for the process (CUPTI is not
/// unloaded: its hooks stay in the driver).
struct Cupti {
    lib: libloading::Library,
    subscribe: Subscribe,
    enable_callback: EnableCallback,
    unsubscribe: Unsubscribe,
}

/// The stream of the last `cuEventRecord` seen while watching.
static SEEN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
/// One watch at a time (CUPTI allows one subscriber).
static WATCH: Mutex<()> = Mutex::new(());

unsafe extern "C" fn on_driver_call(
    _user: *mut c_void,
    domain: u32,
    cbid: u32,
    data: *const CallbackData,
) {
    if domain != DRIVER_API || cbid != EVENT_RECORD || data.is_null() {
        return;
    }
    // SAFETY: CUPTI passes a valid `CUpti_CallbackData` whose parameters are the recorded call's
    // `cuEventRecord_params`, live for the duration of the callback.
    unsafe {
        let data = &*data;
        if data.callback_site != API_ENTER || data.function_params.is_null() {
            return;
        }
        let params = &*(data.function_params as *const EventRecordParams);
        SEEN.store(params.stream, Ordering::SeqCst);
    }
}

fn load() -> Result<&'static Cupti, String> {
    static CUPTI: OnceLock<Result<Cupti, String>> = OnceLock::new();
    CUPTI
        .get_or_init(|| {
            let mut names: Vec<String> = std::env::var("LLAMA_CUPTI").into_iter().collect();
            names.extend(
                [
                    "libcupti.so",
                    "libcupti.so.13",
                    "libcupti.so.12",
                    "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so",
                ]
                .map(String::from),
            );
            let mut last = String::new();
            for name in &names {
                // SAFETY: loading CUPTI runs no initialiser with preconditions of ours.
                match unsafe { libloading::Library::new(name) } {
                    Ok(lib) => {
                        // SAFETY: the C signatures of `cupti.h` for these three symbols.
                        return unsafe {
                            let subscribe = *lib
                                .get::<Subscribe>(b"cuptiSubscribe\0")
                                .map_err(|e| format!("{name}: {e}"))?;
                            let enable_callback = *lib
                                .get::<EnableCallback>(b"cuptiEnableCallback\0")
                                .map_err(|e| format!("{name}: {e}"))?;
                            let unsubscribe = *lib
                                .get::<Unsubscribe>(b"cuptiUnsubscribe\0")
                                .map_err(|e| format!("{name}: {e}"))?;
                            Ok(Cupti {
                                lib,
                                subscribe,
                                enable_callback,
                                unsubscribe,
                            })
                        };
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            Err(format!("libcupti could not be loaded ({last})"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The loaded CUPTI library, for the other parts of its API ([`crate::gpu_trace`]'s activity
/// records).
pub(crate) fn library() -> Result<&'static libloading::Library, String> {
    load().map(|c| &c.lib)
}

/// Whether CUPTI loads (it is not initialised until [`stream_of`] subscribes).
pub fn available() -> bool {
    load().is_ok()
}

/// The stream of the last `cuEventRecord` that `record` makes, on any thread (`record` must
/// make the one whose stream is wanted last, as CubeCL's `sync` does with its fence). Fails
/// when CUPTI is missing, already has a subscriber (a profiler such as Nsight Compute), or no
/// event was recorded on a stream other than the legacy one.
pub fn stream_of(record: impl FnOnce()) -> Result<*mut c_void, String> {
    let cupti = load()?;
    let _one = WATCH.lock().unwrap_or_else(|e| e.into_inner());
    let mut subscriber = std::ptr::null_mut();
    // SAFETY: CUPTI's documented sequence: subscribe with a callback that outlives the
    // subscription, enable one callback id, run, unsubscribe.
    unsafe {
        let rc = (cupti.subscribe)(&mut subscriber, on_driver_call, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!(
                "cuptiSubscribe: error {rc} (another profiler attached?)"
            ));
        }
        let rc = (cupti.enable_callback)(1, subscriber, DRIVER_API, EVENT_RECORD);
        if rc != 0 {
            (cupti.unsubscribe)(subscriber);
            return Err(format!("cuptiEnableCallback: error {rc}"));
        }
        SEEN.store(std::ptr::null_mut(), Ordering::SeqCst);
        record();
        let rc = (cupti.unsubscribe)(subscriber);
        if rc != 0 {
            return Err(format!("cuptiUnsubscribe: error {rc}"));
        }
    }
    let stream = SEEN.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if stream.is_null() {
        return Err("no event was recorded on a stream of its own".into());
    }
    Ok(stream)
}
