//! A backend's registered product (`product`) as one autodiff operation: the same values and the
//! same gradients for both operands as Burn's `matmul`, for 2-D projections, batched 4-D products
//! with transposed operands (attention's), an untracked operand, and a native product that
//! declines. The native product here is a different route to the same numbers (`(wᵀ·xᵀ)ᵀ`), so
//! the forward is checked too; the backward is this crate's. NdArray f32.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Distribution, Tensor, TensorMetadata};
use common::assert_close;
use llama_model::product::{matmul, register_native, registered};

type I = NdArray<f32>;
type A = Autodiff<I>;

/// `x · w` as `(wᵀ · xᵀ)ᵀ`; declines (None) products with an inner dimension of 7.
fn native(x: FloatTensor<I>, w: FloatTensor<I>) -> Option<FloatTensor<I>> {
    let r = x.shape().num_dims();
    if x.shape()[r - 1] == 7 {
        return None;
    }
    let t = |t| I::float_swap_dims(t, r - 2, r - 1);
    Some(t(I::float_matmul(t(w), t(x))))
}

fn check<const D: usize>(xd: [usize; D], wd: [usize; D], transpose_w: bool, track_x: bool) {
    let device = Default::default();
    let r = |d: [usize; D]| Tensor::<A, D>::random(d, Distribution::Normal(0.0, 1.0), &device);
    let (x, mut w) = (r(xd), r(wd));
    if transpose_w {
        // A transposed view, as attention's `k.swap_dims(2, 3)`.
        w = w.swap_dims(D - 2, D - 1);
    }
    let (x0, w0) = (x.clone().inner(), w.clone().inner());
    let leaves = || {
        let x = Tensor::<A, D>::from_inner(x0.clone());
        let x = if track_x { x.require_grad() } else { x };
        (x, Tensor::<A, D>::from_inner(w0.clone()).require_grad())
    };
    let (xa, wa) = leaves();
    let (xb, wb) = leaves();
    let want = xa.clone().matmul(wa.clone());
    let got = matmul(xb.clone(), wb.clone());
    assert_close("x · w", got.clone().inner(), want.clone().inner(), 1e-5);
    // A weighting that differs per output element, so a transposed gradient cannot pass.
    let weights = Tensor::<A, D>::random(want.dims(), Distribution::Normal(0.0, 1.0), &device);
    let ga = (want * weights.clone()).sum().backward();
    let gb = (got * weights).sum().backward();
    let dw = wb.grad(&gb).expect("w's gradient");
    assert_close("dw", dw, wa.grad(&ga).unwrap(), 1e-5);
    match (xb.grad(&gb), xa.grad(&ga)) {
        (Some(g), Some(w)) => assert_close("dx", g, w, 1e-5),
        (None, None) => assert!(!track_x),
        _ => panic!("x's gradient tracked in one form only"),
    }
}

#[test]
fn registered_product_matches_matmul_values_and_gradients() {
    assert!(!registered::<A>());
    register_native::<I>(native);
    assert!(registered::<A>() && registered::<I>());
    check([12, 16], [16, 24], false, true);
    check([12, 16], [24, 16], true, true);
    check([2, 3, 10, 8], [2, 3, 8, 10], false, true);
    check([2, 3, 10, 8], [2, 3, 10, 8], true, true);
    check([12, 16], [16, 24], false, false);
    // Declined by the native product: Burn's matmul forward, the same gradients.
    check([12, 7], [7, 5], false, true);
}
