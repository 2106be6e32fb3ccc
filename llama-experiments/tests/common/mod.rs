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
