//! cuBLAS products under CubeCL (`cubecl_cublas`) against CubeCL's own matmul on the same
//! device: projections, the tied head's transposed weight, attention's batched products with a
//! transposed and a sliced operand, in f32 and bf16, and the gradients of both operands through
//! `llama_model::product`'s autodiff operation, and `c + x · w` into `c` (`accumulate`): alone,
//! with `c` still held elsewhere (which must not change), and as the input gradient of products
//! that share their input. Needs `--features cuda` and an NVIDIA GPU with
//! libcublas on the library path; skips (passes, saying so) without them.
#![cfg(feature = "cuda-untuned")]

mod common;

use burn::backend::Autodiff;
use burn::backend::cuda::CudaDevice;
use burn::tensor::{DType, Distribution, Tensor};
use llama_experiments::cubecl_cublas::{Cuda, accumulate, available, product};

fn device() -> Option<CudaDevice> {
    common::gpu(|| CudaDevice::new(0), available)
}

/// Largest |got − want| over the largest |want|.
fn rel<const D: usize>(got: Tensor<Cuda, D>, want: Tensor<Cuda, D>) -> f32 {
    let scale = want.clone().cast(DType::F32).abs().max().into_scalar();
    let diff = (got.cast(DType::F32) - want.cast(DType::F32))
        .abs()
        .max()
        .into_scalar();
    diff / scale
}

#[test]
fn cublas_products_match_cubecl_matmul() {
    let Some(dev) = device() else { return };
    llama_model::product::register_native::<Cuda>(product);
    let r = |d: [usize; 2]| Tensor::<Cuda, 2>::random(d, Distribution::Normal(0.0, 1.0), &dev);
    let r4 = |d: [usize; 4]| Tensor::<Cuda, 4>::random(d, Distribution::Normal(0.0, 1.0), &dev);
    // f32 within TF32's rounding, should either library use it.
    for (dtype, tol) in [(DType::F32, 2e-3), (DType::BF16, 2e-2)] {
        // A projection, and the tied head's `x · Wᵀ` (a transposed view).
        let (x, w, head) = (
            r([300, 192]).cast(dtype),
            r([192, 520]).cast(dtype),
            r([777, 192]).cast(dtype),
        );
        let got = llama_model::product::matmul(x.clone(), w.clone());
        assert_eq!(got.dims(), [300, 520]);
        assert!(rel(got, x.clone().matmul(w.clone())) < tol, "{dtype:?} x·w");
        let got = llama_model::product::matmul(x.clone(), head.clone().transpose());
        assert!(
            rel(got, x.clone().matmul(head.transpose())) < tol,
            "{dtype:?} x·headᵀ"
        );
        // A weight gradient's `xᵀ · dy` (a transposed first operand).
        let dy = r([300, 520]).cast(dtype);
        let got = llama_model::product::matmul(x.clone().transpose(), dy.clone());
        assert!(rel(got, x.transpose().matmul(dy)) < tol, "{dtype:?} xᵀ·dy");
        // Attention: q · kᵀ over [batch, heads], then the probabilities times a slice of v.
        let (q, k, v) = (
            r4([2, 3, 40, 16]).cast(dtype),
            r4([2, 3, 64, 16]).cast(dtype),
            r4([2, 3, 80, 16]).cast(dtype),
        );
        let kt = k.swap_dims(2, 3);
        let s = llama_model::product::matmul(q.clone(), kt.clone());
        assert!(rel(s.clone(), q.matmul(kt)) < tol, "{dtype:?} q·kᵀ");
        let vs = v.slice([0..2, 0..3, 0..64, 0..16]);
        let got = llama_model::product::matmul(s.clone(), vs.clone());
        assert!(rel(got, s.matmul(vs)) < tol, "{dtype:?} s·v[..64]");
    }
}

#[test]
fn cublas_gradients_match_cubecl_matmul() {
    type A = Autodiff<Cuda>;
    let Some(dev) = device() else { return };
    llama_model::product::register_native::<Cuda>(product);
    let r = |d: [usize; 2]| Tensor::<Cuda, 2>::random(d, Distribution::Normal(0.0, 1.0), &dev);
    let (x, w, weights) = (r([256, 96]), r([96, 130]), r([256, 130]));
    let leaves = || {
        (
            Tensor::<A, 2>::from_inner(x.clone()).require_grad(),
            Tensor::<A, 2>::from_inner(w.clone()).require_grad(),
        )
    };
    let weights = Tensor::<A, 2>::from_inner(weights);
    let (xa, wa) = leaves();
    let (xb, wb) = leaves();
    let ga = (xa.clone().matmul(wa.clone()) * weights.clone())
        .sum()
        .backward();
    let gb = (llama_model::product::matmul(xb.clone(), wb.clone()) * weights)
        .sum()
        .backward();
    assert!(
        rel(xb.grad(&gb).unwrap(), xa.grad(&ga).unwrap()) < 2e-3,
        "dx"
    );
    assert!(
        rel(wb.grad(&gb).unwrap(), wa.grad(&ga).unwrap()) < 2e-3,
        "dw"
    );
}

#[test]
fn accumulated_products_match_a_product_and_a_sum() {
    type A = Autodiff<Cuda>;
    let Some(dev) = device() else { return };
    llama_model::product::register_native::<Cuda>(product);
    let r = |d: [usize; 2]| Tensor::<Cuda, 2>::random(d, Distribution::Normal(0.0, 1.0), &dev);
    let prim = |t: Tensor<Cuda, 2>| t.into_primitive().tensor();
    let float = |p| Tensor::<Cuda, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(p));
    for (dtype, tol) in [(DType::F32, 2e-3), (DType::BF16, 2e-2)] {
        let (x, w) = (r([300, 192]).cast(dtype), r([192, 520]).cast(dtype));
        let c = r([300, 520]).cast(dtype);
        let want = c.clone() + x.clone().matmul(w.clone());
        // `c`'s only handle: the sum may be written into its buffer.
        let c2 = (c.clone() * 1.0).cast(dtype);
        let got = float(accumulate(prim(c2), prim(x.clone()), prim(w.clone())));
        assert!(rel(got, want.clone()) < tol, "{dtype:?} c + x·w");
        // `c` still held here: its values must not change.
        let before = c.clone().cast(DType::F32).into_data();
        let got = float(accumulate(
            prim(c.clone()),
            prim(x.clone()),
            prim(w.clone()),
        ));
        assert!(rel(got, want) < tol, "{dtype:?} shared c + x·w");
        assert_eq!(
            c.cast(DType::F32).into_data(),
            before,
            "{dtype:?}: c changed"
        );
    }
    // Three products of one input (attention's q, k, v): the input's gradient accumulated.
    llama_model::product::register_accumulate::<Cuda>(accumulate);
    let (x, ws) = (r([256, 96]), [r([96, 130]), r([96, 32]), r([96, 32])]);
    let weights = [r([256, 130]), r([256, 32]), r([256, 32])];
    let grads = |native: bool| {
        let x = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
        let ws = ws
            .clone()
            .map(|w| Tensor::<A, 2>::from_inner(w).require_grad());
        let mut loss = Tensor::<A, 1>::zeros([1], &dev);
        for (w, weight) in ws.iter().zip(&weights) {
            let y = match native {
                true => llama_model::product::matmul(x.clone(), w.clone()),
                false => x.clone().matmul(w.clone()),
            };
            loss = loss + (y * Tensor::from_inner(weight.clone())).sum();
        }
        let g = loss.backward();
        let mut out = vec![x.grad(&g).unwrap()];
        out.extend(ws.iter().map(|w| w.grad(&g).unwrap()));
        out
    };
    for (i, (got, want)) in grads(true).into_iter().zip(grads(false)).enumerate() {
        let err = rel(got, want);
        assert!(err < 2e-3, "gradient {i}: rel {err}");
    }
}

/// Products fed by CubeCL's kernels and feeding them, many in a row with the intermediates
/// freed as they go: with the `stream` hand-over (cuBLAS on CubeCL's own stream, no wait) an
/// operand read before its kernel ran, or a buffer reused before cuBLAS wrote or read it,
/// would show as a wrong result here. Every step's output is summed into one tensor (on the
/// device, no read in between), so an error at any step shows in the end, however the chain
/// damps it afterwards.
#[test]
fn a_chain_of_products_stays_in_order() {
    let Some(dev) = device() else { return };
    llama_model::product::register_native::<Cuda>(product);
    eprintln!(
        "hand-over: {}",
        llama_experiments::cubecl_cublas::hand_over_name(&dev).unwrap()
    );
    let r = |d: [usize; 2]| Tensor::<Cuda, 2>::random(d, Distribution::Normal(0.0, 1.0), &dev);
    for dtype in [DType::F32, DType::BF16] {
        // Entries of 0.02 over 512 rows: each product scales a row by ~0.45, so rounding
        // differences between the libraries do not grow along the chain.
        let ws: Vec<_> = (0..6).map(|_| (r([512, 512]) * 0.02).cast(dtype)).collect();
        let x0 = r([1024, 512]).cast(dtype);
        let (mut got, mut want) = (x0.clone(), x0);
        let (mut got_sum, mut want_sum) =
            (got.clone().cast(DType::F32), want.clone().cast(DType::F32));
        for i in 0..48 {
            let w = &ws[i % ws.len()];
            // An element-wise kernel of CubeCL's between the products (its fusion sees them).
            got = (llama_model::product::matmul(got, w.clone()).tanh() + 0.5).cast(dtype);
            want = (want.matmul(w.clone()).tanh() + 0.5).cast(dtype);
            got_sum = got_sum + got.clone().cast(DType::F32);
            want_sum = want_sum + want.clone().cast(DType::F32);
        }
        let tol = if dtype == DType::F32 { 2e-3 } else { 2e-2 };
        let err = rel(got_sum, want_sum);
        assert!(err < tol, "{dtype:?}: rel {err}");
    }
}
