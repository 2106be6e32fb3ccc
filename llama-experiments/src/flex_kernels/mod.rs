//! Kernels of ours for Burn's Flex backend (pure-Rust CPU): the model's attention, RMSNorm,
//! rotary embedding, SwiGLU gate and cross-entropy in both passes, the AdamW update and the
//! clipping's squared norm.
//!
//! Why: a `tiny` training step on Flex spent a quarter of its time in Flex's strided iterator,
//! the path its element-wise operations take as soon as one operand is broadcast (the norm's
//! `[rows, 1]` scale, the rotary tables' `[1, 1, time, dim]`, the attention backward's row sums),
//! and another ~11 % in the tensor-op AdamW (a dozen passes over each bucket, two
//! concatenations). Each kernel here is one pass (or two) over contiguous f32 rows, split over
//! rayon's pool, which Flex's own products use too (docs/performance.md, attempt 81).
//!
//! Every kernel takes f32 only; other dtypes (`--dtype bf16`) and shapes a kernel does not
//! handle go back to the model's tensor-op forms (the native hooks' `None`).

pub mod adamw;
pub mod attention;
mod exp;
pub mod loss;
pub mod rms_norm;
pub mod rotary;
pub mod sum_squares;
pub mod swiglu;

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;

/// Elements per rayon task of an element-wise pass: ~64 KB, large enough that scheduling is
/// noise, small enough that two cores share a `tiny` tensor evenly.
const CHUNK: usize = 1 << 14;

/// `t` as a contiguous f32 tensor whose storage is exactly its elements (no copy when it is so
/// already), or `None` for another dtype.
fn dense(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

/// The elements of a tensor from [`dense`].
fn elems(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("dense() makes it contiguous f32")
}

/// A contiguous f32 tensor of `shape` holding `v`.
fn tensor(v: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// `Σ f(x)` over `xs` in eight running sums, so that the compiler can vectorise `f` and the
/// additions (one running sum is a chain of dependent additions it must keep in order); the same
/// order every call.
#[inline(always)]
fn sum_of(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    acc.iter().sum::<f32>() + tail
}

/// The largest of `xs` (NaNs skipped, as `f32::max` does), in eight running maxima.
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    acc.iter().fold(tail, |m, &x| m.max(x))
}

/// A zero-filled buffer for an output of `n` elements (written in full by the kernel).
fn buffer(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_copies_a_transposed_view_into_row_major_order() {
        let t = tensor(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).transpose(0, 1);
        let d = dense(&t).unwrap();
        assert_eq!(elems(&d), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let i = FlexTensor::from_data(TensorData::new(vec![1i32, 2], [2]));
        assert!(dense(&i).is_none());
    }
}
