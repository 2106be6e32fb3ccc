//! Projections split into row blocks (`split_k`, registered for CubeCL in the `llama` tool)
//! against one product: the same outputs and the same gradients for the input and the weight
//! (which the split computes as a sum of per-block products), for `Linear` layers and the tied
//! head's `x · Wᵀ`, on NdArray f32.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::nn::LinearConfig;
use burn::tensor::{Distribution, Tensor};
use common::assert_close;
use llama_model::Precision;
use llama_model::split_k::{register, splits};

type A = Autodiff<NdArray<f32>>;

#[test]
fn split_projections_match_one_product() {
    let device = Default::default();
    // Before registration nothing is split; after it, enough blocks for ~512 output tiles of
    // 128 × 128, within the maximum, of at least 512 rows each, dividing the rows.
    let small = 768 * 768; // 36 tiles
    assert_eq!(splits::<A>(16_384, small), None);
    register::<NdArray<f32>>(16);
    assert_eq!(splits::<A>(16_384, small), Some(16));
    assert_eq!(splits::<A>(16_384, 768 * 2048), Some(8)); // 96 tiles
    assert_eq!(splits::<A>(8192, 2048 * 2048), Some(2)); // 256 tiles
    assert_eq!(splits::<A>(8192, 2048 * 5632), None); // 704 tiles
    assert_eq!(splits::<A>(16_384, 768 * 32_000), None); // an output head
    assert_eq!(splits::<A>(4096, small), Some(8)); // blocks of 512 rows
    assert_eq!(splits::<A>(1536, small), Some(2));
    assert_eq!(splits::<A>(1000, small), None);
    let inner = splits::<NdArray<f32>>(16_384, small);
    assert_eq!(inner, None, "inference is never split");

    let layer = LinearConfig::new(24, 40)
        .with_bias(false)
        .init::<A>(&device);
    let x = Tensor::<A, 3>::random([2, 1024, 24], Distribution::Normal(0.0, 1.0), &device);
    let w_up = Tensor::<A, 3>::random([2, 1024, 40], Distribution::Normal(0.0, 1.0), &device);

    // Split (registered) against the same product written out.
    let xs = x.clone().require_grad();
    let y = Precision::F32.linear(&layer, xs.clone());
    let grads = (y.clone() * w_up.clone()).sum().backward();
    let (dx, dw) = (xs.grad(&grads).unwrap(), layer.weight.grad(&grads).unwrap());

    let xr = x.clone().require_grad();
    let wr = layer.weight.val().detach().require_grad();
    let yr = xr
        .clone()
        .reshape([2048, 24])
        .matmul(wr.clone())
        .reshape([2, 1024, 40]);
    let grads = (yr.clone() * w_up.clone()).sum().backward();
    assert_close("output", y.inner(), yr.inner(), 1e-5);
    assert_close("input gradient", dx, xr.grad(&grads).unwrap(), 1e-5);
    assert_close("weight gradient", dw, wr.grad(&grads).unwrap(), 1e-5);

    // The tied head: x · Wᵀ with W [vocab, dim].
    let e = Tensor::<A, 2>::random([40, 24], Distribution::Normal(0.0, 1.0), &device);
    let x2 = x.clone().reshape([2048, 24]);
    let up2 = w_up.reshape([2048, 40]);
    let es = e.clone().require_grad();
    let y = Precision::F32.matmul_t(x2.clone(), es.clone());
    let ge = (y.clone() * up2.clone()).sum().backward();
    let er = e.clone().require_grad();
    let yr = x2.matmul(er.clone().transpose());
    let gr = (yr.clone() * up2).sum().backward();
    assert_close("head output", y.inner(), yr.inner(), 1e-5);
    assert_close(
        "head weight gradient",
        es.grad(&ge).unwrap(),
        er.grad(&gr).unwrap(),
        1e-5,
    );
}
