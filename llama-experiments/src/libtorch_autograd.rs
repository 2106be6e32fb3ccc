//! Handing an operation's backward pass to torch's autograd from Burn-tch (used by
//! `libtorch_attention` and `libtorch_loss`).
//!
//! Burn's autodiff never lets torch record a graph (its tensors do not require a gradient). An
//! operation that wants torch's own backward kernels runs its forward on [`leaf`]s that do, keeps
//! the output's graph ([`keep_graph`]), and in its backward pass asks torch for the
//! vector-Jacobian product of the output's gradient ([`vjp`]); torch then runs the backward that
//! matches the kernels its forward picked.
//!
//! Every handle made here shares Burn-tch's storage handle (`TchTensor::from_existing`) with the
//! tensor it aliases: Burn-tch then sees more than one owner and never updates the buffer in
//! place, which would corrupt what torch saved for the backward pass (torch would refuse it).

use burn::backend::libtorch::TchTensor;
use tch::{Kind, Tensor};

/// A detached alias of `t` that requires a gradient.
pub(crate) fn leaf(t: &TchTensor) -> TchTensor {
    TchTensor::from_existing(t.tensor.detach().set_requires_grad(true), t.storage.clone())
}

/// The output for Burn (detached) and the output with its graph (for [`vjp`]), or `None` when
/// torch recorded no graph (grad mode off on this thread): the caller then falls back.
pub(crate) fn keep_graph(out: Tensor) -> Option<(TchTensor, TchTensor)> {
    if !out.requires_grad() {
        return None;
    }
    let graph = TchTensor::new(out);
    let detached = TchTensor::from_existing(graph.tensor.detach(), graph.storage.clone());
    Some((detached, graph))
}

/// The gradients of `Σ graph ⊙ grad` with respect to `inputs` (`grad`'s vector-Jacobian product),
/// freeing the graph.
pub(crate) fn vjp(graph: &TchTensor, grad: &TchTensor, inputs: &[&TchTensor]) -> Vec<TchTensor> {
    let grad = grad.tensor.to_kind(graph.tensor.kind());
    let inputs: Vec<&Tensor> = inputs.iter().map(|t| &t.tensor).collect();
    #[cfg(llama_cuda_graph)]
    if shim::wanted()
        && let Some(grads) = shim::vjp(&graph.tensor, &grad, &inputs)
    {
        return grads.into_iter().map(TchTensor::new).collect();
    }
    // tch starts a backward pass only from the outputs: the scalar whose gradient is `grad`.
    // d(Σ out ⊙ grad)/d out = grad exactly; the sum's dtype only sizes its accumulator.
    let seed = (&graph.tensor * &grad).sum(Kind::Float);
    Tensor::run_backward(&[seed], &inputs, false, false)
        .into_iter()
        .map(TchTensor::new)
        .collect()
}

/// torch's `autograd::grad` with the output's gradient given (`csrc/autograd.cpp`, built with the
/// CUDA-graph shim): no `Σ out ⊙ grad` to build and differentiate.
#[cfg(llama_cuda_graph)]
mod shim {
    use std::ffi::{CStr, c_char, c_int};

    use tch::Tensor;
    use torch_sys::C_tensor;

    unsafe extern "C" {
        fn llama_vjp(
            out: *const C_tensor,
            grad: *const C_tensor,
            inputs: *const *const C_tensor,
            n: usize,
            results: *mut *mut C_tensor,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
    }

    /// Unless `LLAMA_VJP=seed` (the `Σ out ⊙ grad` form, for comparisons).
    pub(super) fn wanted() -> bool {
        static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *WANTED.get_or_init(|| crate::op_registry::knob_on("LLAMA_VJP", "seed"))
    }

    /// The gradients, or `None` (with a warning) where torch raised before running the backward
    /// pass; the caller then takes the `run_backward` path, which reports torch's error itself.
    pub(super) fn vjp(out: &Tensor, grad: &Tensor, inputs: &[&Tensor]) -> Option<Vec<Tensor>> {
        let ptrs: Vec<*const C_tensor> = inputs.iter().map(|t| t.as_ptr()).collect();
        let mut results = vec![std::ptr::null_mut::<C_tensor>(); inputs.len()];
        let mut err = [0 as c_char; 512];
        // SAFETY: every pointer is a live tensor of tch's (`at::Tensor*`) or a buffer of the
        // length given; the shim catches every C++ exception and fills `results` on success only.
        let r = unsafe {
            llama_vjp(
                out.as_ptr(),
                grad.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len(),
                results.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if r != 0 {
            // SAFETY: the shim wrote a NUL-terminated message into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            eprintln!(
                "warning: torch autograd: {}",
                msg.lines().next().unwrap_or("")
            );
            return None;
        }
        // SAFETY: each result is a new `at::Tensor` the shim allocated for us to own.
        Some(
            results
                .into_iter()
                .map(|p| unsafe { Tensor::from_ptr(p) })
                .collect(),
        )
    }
}
