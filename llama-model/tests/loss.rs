//! The registered cross-entropy (`llama_model::loss`) against the tensor-op form: same loss and
//! the same gradient for the logits, in f32 and bf16, and the loss against a hand computation.

mod common;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::{DType, ElementConversion, Int, Tensor, TensorData};
use llama_model::loss::{self, cross_entropy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn inputs<B: burn::tensor::backend::Backend>(
    n: usize,
    v: usize,
) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    let device = Default::default();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x: Vec<f32> = (0..n * v).map(|_| rng.random_range(-4.0..4.0)).collect();
    let t: Vec<i64> = (0..n).map(|_| rng.random_range(0..v as i64)).collect();
    (
        Tensor::from_data(TensorData::new(x, [n, v]), &device),
        Tensor::from_data(TensorData::new(t, [n]), &device),
    )
}

/// Loss and gradient of the logits, through the tensor-op form (`registered = false` runs before
/// the registration) or the registered operation.
fn loss_and_grad<B: burn::tensor::backend::AutodiffBackend>(
    dtype: Option<DType>,
) -> (f32, Tensor<B::InnerBackend, 2>) {
    let (x, t) = inputs::<B>(37, 300);
    let x = x.require_grad();
    let input = match dtype {
        Some(d) => x.clone().cast(d),
        None => x.clone(),
    };
    let l = cross_entropy(input, t);
    let g = l.clone().backward();
    (l.into_scalar().elem::<f32>(), x.grad(&g).unwrap())
}

fn check<B: burn::tensor::backend::AutodiffBackend>(dtype: Option<DType>, tol: f32) {
    let (want_loss, want_grad) = loss_and_grad::<B>(dtype);
    loss::register::<B::InnerBackend>();
    let (got_loss, got_grad) = loss_and_grad::<B>(dtype);
    assert!(
        (want_loss - got_loss).abs() <= tol * want_loss.abs(),
        "{want_loss} vs {got_loss}"
    );
    let (d, scale) = common::diff_and_scale(got_grad, want_grad);
    assert!(
        d <= tol * scale,
        "gradient differs by {d} (largest {scale})"
    );
}

// One backend type per test: registration is process-wide and tests run in parallel.
#[test]
fn registered_cross_entropy_matches_the_tensor_ops_in_f32() {
    check::<Autodiff<NdArray>>(None, 1e-5);
}

#[test]
fn registered_cross_entropy_matches_the_tensor_ops_in_bf16() {
    // bf16 logits: both forms compute in f32 from the same bf16 values; the gradient is rounded to
    // bf16 at the end (different rounding order: a couple of bf16 ulps).
    check::<Autodiff<Flex>>(Some(DType::BF16), 2.0 * 2f32.powi(-8));
}

#[test]
fn the_loss_is_the_mean_negative_log_probability() {
    type B = Autodiff<NdArray<f32, i32>>;
    loss::register::<NdArray<f32, i32>>();
    let device = Default::default();
    let x = Tensor::<B, 2>::from_data(
        TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0, 3.0, 0.0], [2, 3]),
        &device,
    );
    let t = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![2i64, 1], [2]), &device);
    let got = cross_entropy(x, t).into_scalar().elem::<f64>();
    let lse = |r: [f64; 3]| r.iter().map(|v| v.exp()).sum::<f64>().ln();
    let want = ((lse([0.0, 1.0, 2.0]) - 2.0) + (lse([3.0, 3.0, 0.0]) - 3.0)) / 2.0;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}
