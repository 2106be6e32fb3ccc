//! The rotary embedding as one autodiff operation (`Rope::angles(..).apply(..)` with the operation
//! registered) against the half-split formula written out here with angles computed on the host
//! (`cat(x₁c − x₂s, x₂c + x₁s)` through Burn's autodiff): the same output and the same input
//! gradient, f32 on NdArray and f32/bf16 on Flex, with positions that differ between rows.

mod common;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use common::assert_close;
use llama_model::position::Rope;
use llama_model::rotary::{is_registered, register};

const THETA: f64 = 10_000.0;

/// `[batch, 1, time, half]` cosines and sines of `positions`, computed here.
fn tables<B: AutodiffBackend>(
    positions: &[Vec<usize>],
    hd: usize,
    dev: &B::Device,
) -> [Tensor<B, 4>; 2] {
    let (b, t, half) = (positions.len(), positions[0].len(), hd / 2);
    let angle = |p: usize, i: usize| p as f64 * THETA.powf(-((2 * i) as f64) / hd as f64);
    let table = |f: fn(f64) -> f64| {
        let v: Vec<f32> = positions
            .iter()
            .flat_map(|row| {
                row.iter()
                    .flat_map(move |&p| (0..half).map(move |i| f(angle(p, i)) as f32))
            })
            .collect();
        Tensor::<B, 4>::from_data(TensorData::new(v, [b, 1, t, half]), dev)
    };
    [table(f64::cos), table(f64::sin)]
}

/// Output and input gradient of `Σ w ⊙ rotate(x)`, by the model's path or by the formula here.
fn run<B: AutodiffBackend>(
    x: &Tensor<B::InnerBackend, 4>,
    w: &Tensor<B::InnerBackend, 4>,
    positions: &[Vec<usize>],
    model_path: bool,
) -> [Tensor<B::InnerBackend, 4>; 2] {
    let dev = x.device();
    let [b, _, t, hd] = x.dims();
    let x = Tensor::<B, 4>::from_inner(x.clone()).require_grad();
    let dtype = x.dtype();
    let y = match model_path {
        true => {
            let ids: Vec<i64> = positions.iter().flatten().map(|&p| p as i64).collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), &dev);
            Rope::<B>::new(hd, 64, THETA, &dev)
                .angles(&ids, dtype)
                .apply(x.clone())
        }
        false => {
            let [c, s] = tables::<B>(positions, hd, &dev).map(|t| t.cast(dtype));
            let half = hd / 2;
            let (x1, x2) = (
                x.clone().narrow(3, 0, half),
                x.clone().narrow(3, half, half),
            );
            let r1 = x1.clone() * c.clone() - x2.clone() * s.clone();
            Tensor::cat(vec![r1, x2 * c + x1 * s], 3)
        }
    };
    let grads = (y.clone().cast(DType::F32) * Tensor::from_inner(w.clone()))
        .sum()
        .backward();
    [y.inner(), x.grad(&grads).expect("tracked")]
}

fn check<B: AutodiffBackend>(dtype: DType, tol: f32) {
    assert!(
        is_registered::<B>(),
        "the operation, not the tensor-op form"
    );
    let dev = Default::default();
    let x =
        Tensor::<B::InnerBackend, 4>::random([2, 3, 5, 16], Distribution::Normal(0.0, 1.0), &dev)
            .cast(dtype);
    let w =
        Tensor::<B::InnerBackend, 4>::random([2, 3, 5, 16], Distribution::Normal(0.0, 1.0), &dev);
    // Rows at different offsets, as left-padded prompts have.
    let positions = vec![(0..5).collect::<Vec<_>>(), (37..42).collect()];
    let want = run::<B>(&x, &w, &positions, false);
    let got = run::<B>(&x, &w, &positions, true);
    for (name, (g, w)) in ["output", "dx"].iter().zip(got.iter().zip(&want)) {
        assert_eq!(g.dtype(), dtype, "{name}");
        assert_close(&format!("{name} ({dtype:?})"), g.clone(), w.clone(), tol);
    }
}

#[test]
fn the_operation_matches_the_half_split_formula_in_f32() {
    register::<NdArray>();
    check::<Autodiff<NdArray>>(DType::F32, 1e-6);
}

#[test]
fn the_operation_matches_the_half_split_formula_in_bf16() {
    register::<Flex>();
    check::<Autodiff<Flex>>(DType::F32, 1e-6);
    check::<Autodiff<Flex>>(DType::BF16, 1e-2);
}
