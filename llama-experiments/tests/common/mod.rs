//! Shared by the binary's integration tests (each uses some of it).
#![allow(dead_code)]

pub mod adamw;

use std::process::Command;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Tensor};

/// Runs `llama ARGS` and returns (exit code, stdout, stderr).
pub fn llama(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llama"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Largest absolute difference of `a` and `b` (in f32) over the largest magnitude of `b`.
pub fn rel<B: Backend, const D: usize>(a: &Tensor<B, D>, b: &Tensor<B, D>) -> f64 {
    let (a, b) = (a.clone().cast(DType::F32), b.clone().cast(DType::F32));
    let err: f64 = (a - b.clone()).abs().max().into_scalar().elem();
    err / b.abs().max().into_scalar().elem::<f64>().max(1e-12)
}

/// A GPU device for the tests of this project's CUDA code where `available` accepts it; `None`
/// (the test then passes, saying why it skipped) without an NVIDIA device or the library it needs.
pub fn gpu<D>(
    device: impl FnOnce() -> D,
    available: impl FnOnce(&D) -> Result<(), String>,
) -> Option<D> {
    if !std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!("skipped: no NVIDIA device");
        return None;
    }
    let device = device();
    match available(&device) {
        Ok(()) => Some(device),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}
