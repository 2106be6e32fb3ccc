//! A registered accumulating product (`product::register_accumulate`): products that share an
//! input add their input gradients into one matrix instead of Burn's separate sums, with the same
//! gradients for every parameter, and the model's projections do share their flattened input
//! (attention's q, k, v: two accumulations per layer; the gate and up projections: one). NdArray
//! f32; the routines here are the plain tensor operations, counted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use common::*;
use llama_model::product::{matmul, register_accumulate, register_native};

static ADDS: AtomicUsize = AtomicUsize::new(0);

fn native(x: FloatTensor<B>, w: FloatTensor<B>) -> Option<FloatTensor<B>> {
    Some(B::float_matmul(x, w))
}

fn accumulate(c: FloatTensor<B>, x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
    ADDS.fetch_add(1, Ordering::SeqCst);
    B::float_add(c, B::float_matmul(x, w))
}

/// Every parameter's gradient, in visiting order.
struct Grads<'a> {
    grads: &'a burn::optim::GradientsParams,
    out: Vec<TensorData>,
}

impl ModuleVisitor<AB> for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let g = self.grads.get::<B, D>(param.id).expect("a gradient");
        self.out.push(g.into_data());
    }
}

fn model_grads(model: &llama_model::Llama<AB>, tokens: &Tensor<B, 2, Int>) -> Vec<TensorData> {
    let loss = model.loss(Tensor::from_inner(tokens.clone()));
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), model);
    let mut v = Grads {
        grads: &grads,
        out: vec![],
    };
    model.visit(&mut v);
    v.out
}

/// `(dx, dw₁, dw₂, dw₃)` of a loss over three products of one input that is also read by an
/// element-wise operation (created first, so its gradient is summed last, by Burn).
/// Each product's output is weighted per element by `weights[i]`, so that a transposed gradient
/// cannot pass.
fn shared_input_grads(
    x: &Tensor<B, 2>,
    ws: &[Tensor<B, 2>; 3],
    weights: &[Tensor<B, 2>; 3],
    plain: bool,
) -> Vec<TensorData> {
    let x = Tensor::<AB, 2>::from_inner(x.clone()).require_grad();
    let ws = ws
        .clone()
        .map(|w| Tensor::<AB, 2>::from_inner(w).require_grad());
    let mut loss = (x.clone() * x.clone()).sum();
    for (w, weight) in ws.iter().zip(weights) {
        let y = match plain {
            true => x.clone().matmul(w.clone()),
            false => matmul(x.clone(), w.clone()),
        };
        loss = loss + (y * Tensor::from_inner(weight.clone())).sum();
    }
    let g = loss.backward();
    let mut out = vec![x.grad(&g).unwrap().into_data()];
    out.extend(ws.iter().map(|w| w.grad(&g).unwrap().into_data()));
    out
}

fn assert_all_close(what: &str, got: &[TensorData], want: &[TensorData]) {
    assert_eq!(got.len(), want.len(), "{what}: number of gradients");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let diff = g
            .iter::<f32>()
            .zip(w.iter::<f32>())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{what}: gradient {i} differs by {diff}");
    }
}

#[test]
fn accumulated_input_gradients_match_burns_sums() {
    let device = dev();
    let r = |d: [usize; 2]| Tensor::<B, 2>::random(d, Distribution::Normal(0.0, 1.0), &device);
    let (x, ws) = (r([12, 16]), [r([16, 24]), r([16, 8]), r([16, 8])]);
    let weights = [r([12, 24]), r([12, 8]), r([12, 8])];
    let cfg = small(64);
    let model = cfg.init::<AB>(&device).unwrap();
    let tokens = Tensor::<B, 2, Int>::from_data([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]], &device);

    // Nothing registered: Burn's matmul and sums.
    let want = shared_input_grads(&x, &ws, &weights, true);
    let want_model = model_grads(&model, &tokens);
    // The registered product without accumulation, then with it.
    register_native::<B>(native);
    let products = shared_input_grads(&x, &ws, &weights, false);
    let products_model = model_grads(&model, &tokens);
    assert_eq!(ADDS.load(Ordering::SeqCst), 0);
    register_accumulate::<B>(accumulate);
    let got = shared_input_grads(&x, &ws, &weights, false);
    // Three products of one input: the second and third processed add into the first's.
    assert_eq!(ADDS.swap(0, Ordering::SeqCst), 2);
    let got_model = model_grads(&model, &tokens);
    assert_eq!(
        ADDS.load(Ordering::SeqCst),
        3 * cfg.n_layers,
        "q, k, v: two per layer; the gate and up projections: one"
    );

    assert_all_close("three products", &products, &want);
    assert_all_close("three products, accumulated", &got, &want);
    assert_all_close("model", &products_model, &want_model);
    assert_all_close("model, accumulated", &got_model, &want_model);
}
