//! Decoding on libtorch CUDA as one CUDA graph per token.
//!
//! A decoded token at batch 1 is a few hundred small kernels; dispatched one by one from the host
//! (Burn's tensor API, then torch's dispatcher, then the launch) they take ~10 µs each while the
//! GPU needs ~1–2 µs, so eager decoding is host-bound (docs/performance.md). Here the step
//! [`Llama::decode_step`] (same operations and shapes at every position: the cache slot and the
//! visibility mask are device tensors) is recorded once with torch's own `CUDAGraph`
//! (`csrc/cuda_graph.cpp`, through the C interface below) and replayed: per token the host copies
//! the step's inputs into the recorded buffers and launches the graph.
//!
//! The first [`WARMUP_STEPS`] steps run eagerly through the same step (torch's lazy set-up,
//! cuBLAS handles and workspaces, happens outside the capture); the capture then checks that
//! the step wrote the cache in place (a replay must update the cache the next step reads).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::NonNull;

use anyhow::{Context, Result, bail, ensure};
use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::tensor::{BasicOps, Tensor};
use llama_model::decode::StaticInputs;
use llama_model::{Decoder, KvCache, Llama, StaticDecoder, StepInput, StepTokens};

unsafe extern "C" {
    fn llama_graph_new(err: *mut c_char, len: usize) -> *mut c_void;
    fn llama_graph_free(g: *mut c_void);
    fn llama_graph_capture_begin(g: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn llama_graph_capture_end(g: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn llama_graph_replay(g: *mut c_void, err: *mut c_char, len: usize) -> c_int;
    fn llama_current_stream() -> *mut c_void;
    fn llama_copy_async(
        dst: *mut torch_sys::C_tensor,
        src: *const torch_sys::C_tensor,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
}

/// torch's current CUDA stream (null: the legacy default stream). The fused kernels
/// (`cuda_kernels`) launch on it, so that they are recorded with torch's work during a capture.
pub fn current_stream() -> *mut c_void {
    // SAFETY: no arguments; the shim catches every C++ exception.
    unsafe { llama_current_stream() }
}

/// Eager steps before the capture.
pub const WARMUP_STEPS: usize = 2;

/// A C++ call's result: `Ok` or the exception's message.
fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut buf = [0 as c_char; 512];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message into the buffer it was given.
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    bail!("CUDA graph {what}: {}", msg.lines().next().unwrap_or(""))
}

/// One recorded CUDA graph (torch's `at::cuda::CUDAGraph`).
pub struct CudaGraph(NonNull<c_void>);

impl CudaGraph {
    /// Records the torch work `f` queues on the current device; nothing runs until a replay.
    /// `f` must not synchronise with the host or copy from it.
    pub fn capture<R>(f: impl FnOnce() -> R) -> Result<(Self, R)> {
        let mut raw = std::ptr::null_mut();
        call("creation", |e, n| {
            // SAFETY: FFI into the shim; it returns null after writing the error.
            raw = unsafe { llama_graph_new(e, n) };
            raw.is_null() as c_int
        })?;
        let graph = Self(NonNull::new(raw).expect("checked above"));
        // SAFETY: a live graph from `llama_graph_new`.
        call("capture", |e, n| unsafe {
            llama_graph_capture_begin(graph.0.as_ptr(), e, n)
        })?;
        // A panic inside would leave the stream capturing: end it before unwinding further.
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        // SAFETY: as above; ends the capture begun above.
        let end = call("capture", |e, n| unsafe {
            llama_graph_capture_end(graph.0.as_ptr(), e, n)
        });
        match out {
            Ok(out) => end.map(|()| (graph, out)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs the recorded work on the current stream (asynchronously).
    pub fn replay(&self) -> Result<()> {
        // SAFETY: a live, instantiated graph.
        call("replay", |e, n| unsafe {
            llama_graph_replay(self.0.as_ptr(), e, n)
        })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: created by `llama_graph_new`, freed once.
        unsafe { llama_graph_free(self.0.as_ptr()) }
    }
}

/// The decoder of [`crate::decoder::decoder_for`] on libtorch CUDA.
pub struct GraphDecoder {
    eager_steps: usize,
    recorded: Option<Recorded>,
    /// A recording failed: the steps run eagerly (the same static step) from then on.
    unrecordable: bool,
}

impl Default for GraphDecoder {
    fn default() -> Self {
        // burn-tch runs `select_assign` out of place (on a copy): the replayed step must write
        // the cache's own buffers, so the slot write is torch's in-place `index_copy_`.
        llama_model::cache::register_slot_write::<LibTorch>(write_slot);
        Self {
            eager_steps: 0,
            recorded: None,
            unrecordable: false,
        }
    }
}

/// `buffer[:, :, slot] = new`, in `buffer`'s memory.
fn write_slot(buffer: TchTensor, slot: TchTensor, new: TchTensor) -> TchTensor {
    let mut b = buffer.tensor.shallow_clone();
    let _ = b.index_copy_(2, &slot.tensor, &new.tensor);
    buffer
}

struct Recorded {
    graph: CudaGraph,
    inputs: StaticInputs<LibTorch>,
    logits: Tensor<LibTorch, 2>,
    /// What the graph reads and writes besides its inputs: the model's first weight and every
    /// cache buffer, by address (a new cache may reuse a freed one's memory, all of it or not).
    memory: Vec<usize>,
    capacity: usize,
}

fn tch_of<const D: usize>(t: &Tensor<LibTorch, D>) -> tch::Tensor {
    let p: TchTensor = t.clone().into_primitive().tensor();
    p.tensor
}

/// The torch tensor of an int or bool tensor (whose primitive is the torch tensor itself).
fn tch_raw<const D: usize, K>(t: &Tensor<LibTorch, D, K>) -> tch::Tensor
where
    K: BasicOps<LibTorch, Primitive = TchTensor>,
{
    t.clone().into_primitive().tensor
}

/// Copies host values into a recorded input buffer (same storage, so the graph reads them),
/// queued on the current stream before the replay without waiting for it (`llama_copy_async`),
/// so that the host can prepare and launch a step while the device still runs the one before
/// (tch's `copy_` waited for the stream to drain, four times per token).
fn fill<T: tch::kind::Element>(mut dst: tch::Tensor, values: &[T]) -> Result<()> {
    let src = tch::Tensor::from_slice(values).reshape(dst.size());
    // SAFETY: two live tensors; the shim catches C++ exceptions.
    call("input copy", |e, n| unsafe {
        llama_copy_async(dst.as_mut_ptr(), src.as_ptr(), e, n)
    })
}

/// The addresses the recorded step depends on (see [`Recorded::memory`]), and its batch.
fn memory(model: &Llama<LibTorch>, cache: &KvCache<LibTorch>, batch: usize) -> Vec<usize> {
    let weight = tch_of(&model.layers[0].attention.wq.weight.val()).data_ptr() as usize;
    let buffers = cache.iter().flat_map(|c| {
        let (k, v) = c.buffers();
        [tch_of(k).data_ptr() as usize, tch_of(v).data_ptr() as usize]
    });
    [batch, weight].into_iter().chain(buffers).collect()
}

impl GraphDecoder {
    fn record(
        model: &Llama<LibTorch>,
        cache: &mut KvCache<LibTorch>,
        input: StepInput<'_, LibTorch>,
    ) -> Result<Recorded> {
        let keys = cache[0].buffers().0;
        ensure!(
            tch_of(keys).device().is_cuda(),
            "CUDA graphs need a CUDA device"
        );
        // The graph's own input buffers (device tokens would be another tensor's memory); the
        // step's values are filled in before each replay.
        let b = input.batch();
        let zeros = vec![0; b];
        let fresh = StepInput {
            tokens: StepTokens::Host(&zeros),
            ..input
        };
        let inputs = StaticInputs::<LibTorch>::new(fresh, cache, &keys.device());
        let before = memory(model, cache, b);
        let (graph, logits) = CudaGraph::capture(|| {
            let i = inputs.clone();
            model.decode_step(i.tokens, &i.positions, i.slot, i.hidden, cache)
        })?;
        ensure!(
            memory(model, cache, b) == before,
            "the recorded step did not update the KV cache in place"
        );
        Ok(Recorded {
            graph,
            inputs,
            logits,
            memory: before,
            capacity: cache[0].capacity(),
        })
    }

    fn try_step(
        &mut self,
        model: &Llama<LibTorch>,
        cache: &mut KvCache<LibTorch>,
        input: StepInput<'_, LibTorch>,
    ) -> Result<Tensor<LibTorch, 2>> {
        let b = input.batch();
        // Another model, cache or batch: record again.
        if let Some(r) = &self.recorded
            && (r.memory != memory(model, cache, b) || r.capacity != cache[0].capacity())
        {
            self.recorded = None;
            self.eager_steps = 0;
        }
        if self.recorded.is_none() {
            if self.unrecordable || self.eager_steps < WARMUP_STEPS {
                self.eager_steps += 1;
                return Ok(StaticDecoder.step(model, cache, input));
            }
            let before = memory(model, cache, b);
            match Self::record(model, cache, input.clone()) {
                Ok(r) => self.recorded = Some(r),
                // Nothing runs during a capture: if the cache still holds its own buffers, the
                // step can run eagerly instead.
                Err(e) if memory(model, cache, b) == before => {
                    eprintln!("warning: decoding without CUDA graphs: {e:#}");
                    self.unrecordable = true;
                    return Ok(StaticDecoder.step(model, cache, input));
                }
                Err(e) => return Err(e),
            }
        }
        let r = self.recorded.as_ref().expect("recorded above");
        match &input.tokens {
            StepTokens::Host(ids) => fill(tch_raw(&r.inputs.tokens), ids)?,
            // Drawn on the device: between two CUDA tensors torch's copy is a device copy queued
            // on the current stream, so the host does not wait for the token.
            StepTokens::Device(t) => tch_raw(&r.inputs.tokens)
                .f_copy_(&tch_raw(t))
                .context("copying the drawn tokens")?,
        }
        fill(tch_raw(&r.inputs.positions), &input.positions())?;
        fill(tch_raw(&r.inputs.slot), &[input.cur as i64])?;
        fill(tch_raw(&r.inputs.hidden), &input.hidden(r.capacity))?;
        r.graph.replay()?;
        Ok(r.logits.clone())
    }
}

impl Decoder<LibTorch> for GraphDecoder {
    fn name(&self) -> &'static str {
        "cuda-graph"
    }

    /// # Panics
    /// When a replay fails (a failed recording falls back to eager steps with a warning;
    /// `LLAMA_DECODE=eager` turns graphs off).
    fn step(
        &mut self,
        model: &Llama<LibTorch>,
        cache: &mut KvCache<LibTorch>,
        input: StepInput<'_, LibTorch>,
    ) -> Tensor<LibTorch, 2> {
        self.try_step(model, cache, input)
            .unwrap_or_else(|e| panic!("{e:#} (LLAMA_DECODE=eager decodes without graphs)"))
    }
}
