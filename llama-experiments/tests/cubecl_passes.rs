//! This project's smaller kernel passes under CubeCL against Burn on the same device and inputs:
//! the embedding's weight gradient (`cubecl_embedding`, through `llama_model::embedding`'s
//! autodiff operation: ids repeated many times, rows summed by atomics, and ids outside the
//! vocabulary adding nothing), RMSNorm both ways (`cubecl_rms_norm`, through
//! `llama_model::rms_norm`'s operation, against burn-nn's formula in f32), the squared norm
//! (`cubecl_sum_squares`), the rotary embedding and SwiGLU's gate both ways (`cubecl_fused`,
//! against their tensor-op forms), AdamW by parts (`cubecl_adamw`, against the tensor ops on
//! the concatenated bucket) and the bf16 copies of the weights it writes for
//! `llama_model::weight_cast`. Needs `--features cuda-untuned`, an NVIDIA GPU of compute
//! capability 8.0 or later and NVRTC on the library path; skips (passes, saying so) without them.
#![cfg(feature = "cuda-untuned")]

mod common;

use burn::backend::Autodiff;
use burn::backend::cuda::CudaDevice;
use burn::tensor::{DType, Distribution, ElementConversion, Int, Tensor, TensorPrimitive};
use llama_experiments::cubecl_cublas::Cuda;
use llama_experiments::cubecl_embedding::{available, backward};
use llama_model::embedding::NativeEmbedding;
use llama_model::rms_norm::NativeRmsNorm;
use llama_model::rotary::NativeRotary;
use llama_model::swiglu::NativeSwiglu;

fn device() -> Option<CudaDevice> {
    common::gpu(|| CudaDevice::new(0), available)
}

fn scalar(t: Tensor<Cuda, 1>) -> f32 {
    t.cast(DType::F32).into_scalar().elem::<f32>()
}

fn max_abs(t: Tensor<Cuda, 2>) -> f32 {
    t.abs().max().cast(DType::F32).into_scalar().elem::<f32>()
}

#[test]
fn the_weight_gradient_matches_burns() {
    type A = Autodiff<Cuda>;
    let Some(dev) = device() else { return };
    llama_model::embedding::register_native::<Cuda>(NativeEmbedding { backward });
    let (vocab, dim, batch, time) = (517, 96, 4, 300);
    let weight = Tensor::<Cuda, 2>::random([vocab, dim], Distribution::Normal(0.0, 1.0), &dev);
    // Few distinct ids: each row gets about 100 tokens' additions.
    let tokens =
        Tensor::<Cuda, 2, Int>::random([batch, time], Distribution::Uniform(0.0, 12.0), &dev);
    let dy = Tensor::<Cuda, 3>::random([batch, time, dim], Distribution::Normal(0.0, 1.0), &dev);
    let grad = |native: bool| {
        let w = Tensor::<A, 2>::from_inner(weight.clone()).require_grad();
        let t = Tensor::<A, 2, Int>::from_inner(tokens.clone());
        let y = if native {
            llama_model::embedding::embedding(w.clone(), t)
        } else {
            burn::tensor::module::embedding(w.clone(), t)
        };
        let g = (y * Tensor::<A, 3>::from_inner(dy.clone()))
            .sum()
            .backward();
        w.grad(&g).expect("the weight's gradient")
    };
    let (got, want) = (grad(true), grad(false));
    let err = max_abs(got - want.clone()) / max_abs(want);
    assert!(err < 1e-5, "relative error {err}");
}

#[test]
fn ids_outside_the_vocabulary_add_nothing() {
    let Some(dev) = device() else { return };
    let dy = Tensor::<Cuda, 2>::ones([4, 8], &dev);
    let ids = Tensor::<Cuda, 1, Int>::from_ints([1, -1, 5, 1], &dev);
    let dw = backward(dy.into_primitive().tensor(), ids.into_primitive(), 5).expect("f32");
    let dw = Tensor::<Cuda, 2>::from_primitive(TensorPrimitive::Float(dw));
    let rows: Vec<f32> = dw.sum_dim(1).into_data().to_vec().expect("f32");
    assert_eq!(rows, vec![0.0, 16.0, 0.0, 0.0, 0.0]);
}

#[test]
fn rms_norm_kernels_match_the_formula() {
    type A = Autodiff<Cuda>;
    let Some(dev) = device() else { return };
    llama_experiments::cubecl_fused::available(&dev).expect("the RMSNorm kernels load");
    llama_model::rms_norm::register_native::<Cuda>(NativeRmsNorm {
        forward: llama_experiments::cubecl_fused::rms_norm::forward,
        backward: llama_experiments::cubecl_fused::rms_norm::backward,
    });
    // More rows than the backward pass has blocks (1,024): each block then walks several.
    let (rows, dim, eps) = (2_500, 768, 1e-5);
    let x = Tensor::<Cuda, 2>::random([rows, dim], Distribution::Normal(0.0, 2.0), &dev);
    let gamma = Tensor::<Cuda, 1>::random([dim], Distribution::Normal(1.0, 0.2), &dev);
    let dy = Tensor::<Cuda, 2>::random([rows, dim], Distribution::Normal(0.0, 1.0), &dev);
    // f32 in and out, and an f32 residual stream into a bf16 layer input.
    for (out, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        let run = |native: bool| {
            let xa = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
            let ga = Tensor::<A, 1>::from_inner(gamma.clone()).require_grad();
            let y = match native {
                true => llama_model::rms_norm::rms_norm_to(xa.clone(), ga.clone(), eps, out),
                false => llama_model::rms_norm::decomposed(xa.clone(), ga.clone(), eps),
            };
            let dyo = Tensor::<A, 2>::from_inner(dy.clone().cast(y.dtype()));
            let grads = (y.clone().cast(DType::F32) * dyo.cast(DType::F32))
                .sum()
                .backward();
            let (dx, dg) = (xa.grad(&grads).unwrap(), ga.grad(&grads).unwrap());
            (
                y.inner().cast(DType::F32),
                dx.cast(DType::F32),
                dg.cast(DType::F32),
            )
        };
        let (y1, dx1, dg1) = run(true);
        let (y0, dx0, dg0) = run(false);
        let rel2 = |a: Tensor<Cuda, 2>, b: Tensor<Cuda, 2>| max_abs(a - b.clone()) / max_abs(b);
        let rel1 = |a: Tensor<Cuda, 1>, b: Tensor<Cuda, 1>| {
            scalar((a - b.clone()).abs().max()) / scalar(b.abs().max())
        };
        let (ey, edx, edg) = (rel2(y1, y0), rel2(dx1, dx0), rel1(dg1, dg0));
        assert!(
            ey < tol && edx < tol && edg < tol,
            "{out:?}: y {ey}, dx {edx}, dgamma {edg}"
        );
    }
}

#[test]
fn the_squared_norm_matches_burns_sum() {
    let Some(dev) = device() else { return };
    llama_experiments::cubecl_sum_squares::enable(&dev).expect("the kernels load");
    // A length that leaves a tail past the vector loads, and one over the most blocks' reach.
    for n in [1_003, 3_000_001] {
        let x = Tensor::<Cuda, 1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
        for dtype in [DType::F32, DType::BF16] {
            let xd = x.clone().cast(dtype);
            let want = scalar(xd.clone().cast(DType::F32).square().sum());
            let got = llama_experiments::cubecl_sum_squares::try_sum_squares(xd)
                .map(scalar)
                .expect("CubeCL's CUDA tensor");
            assert!(
                (got - want).abs() <= 1e-4 * want,
                "{n} {dtype:?}: {got} against {want}"
            );
        }
    }
}

/// The two halves of the last dimension exchanged, in tensor ops.
fn swap_halves(x: Tensor<Cuda, 4>) -> Tensor<Cuda, 4> {
    let half = x.dims()[3] / 2;
    Tensor::cat(
        vec![x.clone().narrow(3, half, half), x.narrow(3, 0, half)],
        3,
    )
}

#[test]
fn the_rotary_kernel_matches_tensor_ops() {
    type A = Autodiff<Cuda>;
    let Some(dev) = device() else { return };
    llama_experiments::cubecl_fused::available(&dev).expect("the kernels load");
    llama_model::rotary::register_native::<Cuda>(NativeRotary {
        forward: llama_experiments::cubecl_fused::rotary::forward,
        backward: llama_experiments::cubecl_fused::rotary::backward,
    });
    // A head dim read by fours, and one read element by element (half of 6 is odd).
    for (b, h, t, d) in [(2, 3, 37, 64), (1, 2, 9, 6)] {
        let angles =
            Tensor::<Cuda, 4>::random([1, 1, t, d / 2], Distribution::Uniform(0.0, 6.0), &dev);
        let (c, s) = llama_model::rotary::full_tables(angles.clone().cos(), angles.sin());
        // Queries as the model has them: [b, t, h, d] seen as [b, h, t, d] (strided heads).
        let x = Tensor::<Cuda, 4>::random([b, t, h, d], Distribution::Normal(0.0, 1.0), &dev)
            .swap_dims(1, 2);
        let dy = Tensor::<Cuda, 4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &dev);
        for dtype in [DType::F32, DType::BF16] {
            let (xd, cd, sd, dyd) = (
                x.clone().cast(dtype),
                c.clone().cast(dtype),
                s.clone().cast(dtype),
                dy.clone().cast(dtype),
            );
            let xa = Tensor::<A, 4>::from_inner(xd.clone()).require_grad();
            let y = llama_model::rotary::rotate(
                xa.clone(),
                Tensor::from_inner(cd.clone()),
                Tensor::from_inner(sd.clone()),
            );
            let grads = (y.clone() * Tensor::<A, 4>::from_inner(dyd.clone()))
                .sum()
                .backward();
            let dx = xa.grad(&grads).expect("x's gradient");
            let want_y = xd.clone() * cd.clone() + swap_halves(xd) * sd.clone();
            let want_dx = dyd.clone() * cd + swap_halves(dyd * sd);
            let rel = |a: Tensor<Cuda, 4>, w: Tensor<Cuda, 4>| {
                let (a, w) = (a.cast(DType::F32), w.cast(DType::F32));
                scalar((a - w.clone()).abs().max().reshape([1]))
                    / scalar(w.abs().max().reshape([1]))
            };
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
            let (ey, edx) = (rel(y.inner(), want_y), rel(dx, want_dx));
            assert!(ey < tol && edx < tol, "d {d} {dtype:?}: y {ey}, dx {edx}");
        }
    }
}

#[test]
fn the_swiglu_kernels_match_the_closed_form() {
    type A = Autodiff<Cuda>;
    let Some(dev) = device() else { return };
    llama_experiments::cubecl_fused::available(&dev).expect("the kernels load");
    llama_model::swiglu::register_native::<Cuda>(NativeSwiglu {
        forward: llama_experiments::cubecl_fused::swiglu::forward,
        backward: llama_experiments::cubecl_fused::swiglu::backward,
    });
    // Read by fours, and a size that leaves a tail of single elements (3 · 5 · 7 = 105).
    for [b, t, n] in [[2, 33, 256], [3, 5, 7]] {
        let x = || Tensor::<Cuda, 3>::random([b, t, n], Distribution::Normal(0.0, 2.0), &dev);
        let (a, g, dy) = (x(), x(), x());
        for dtype in [DType::F32, DType::BF16] {
            let (ad, gd, dyd) = (
                a.clone().cast(dtype),
                g.clone().cast(dtype),
                dy.clone().cast(dtype),
            );
            let aa = Tensor::<A, 3>::from_inner(ad.clone()).require_grad();
            let ga = Tensor::<A, 3>::from_inner(gd.clone()).require_grad();
            let y = llama_model::swiglu::swiglu(aa.clone(), ga.clone());
            let grads = (y.clone() * Tensor::<A, 3>::from_inner(dyd.clone()))
                .sum()
                .backward();
            let (da, dg) = (aa.grad(&grads).expect("a's"), ga.grad(&grads).expect("b's"));
            let f = |t: Tensor<Cuda, 3>| t.cast(DType::F32);
            let want_y = burn::tensor::activation::silu(f(ad.clone())) * f(gd.clone());
            let (want_da, want_dg) =
                llama_model::swiglu::closed_form_backward(f(ad), f(gd), f(dyd));
            let rel = |got: Tensor<Cuda, 3>, want: Tensor<Cuda, 3>| {
                let got = got.cast(DType::F32);
                scalar((got - want.clone()).abs().max().reshape([1]))
                    / scalar(want.abs().max().reshape([1]))
            };
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            let (ey, ea, eg) = (rel(y.inner(), want_y), rel(da, want_da), rel(dg, want_dg));
            assert!(
                ey < tol && ea < tol && eg < tol,
                "{b}x{t}x{n} {dtype:?}: y {ey}, da {ea}, db {eg}"
            );
        }
    }
}

#[test]
fn the_adamw_kernel_matches_the_tensor_ops() {
    use llama_experiments::train::optim::{AdamwParts, AdamwScalars};
    let Some(dev) = device() else { return };
    llama_experiments::cubecl_fused::available(&dev).expect("the kernels load");
    let x = |n: usize| Tensor::<Cuda, 1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
    let scalars = AdamwScalars {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        lr: 3e-3,
        decay: 3e-4,
        c1: 1.0 - 0.9f64.powi(3),
        c2: 1.0 - 0.95f64.powi(3),
    };
    // Parts of sizes that leave ranges not 16-byte aligned (a part of 3 elements), f32 and bf16
    // gradients, with and without moments and a gradient factor.
    let sizes = [1000, 3, 517, 4096];
    for (moments, factor) in [(true, true), (false, false), (true, false)] {
        let mut offset = 0;
        let parts: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let g = x(n);
                let g = if i % 2 == 0 { g.cast(DType::BF16) } else { g };
                let part = (offset, x(n), g);
                offset += n;
                part
            })
            .collect();
        let len = offset;
        let step = AdamwParts {
            len,
            parts,
            grad_factor: factor.then(|| Tensor::<Cuda, 1>::from_floats([0.5], &dev)),
            moments: moments.then(|| (x(len), x(len).abs())),
            scalars,
        };
        let want = AdamwParts {
            len,
            parts: step.parts.clone(),
            grad_factor: step.grad_factor.clone(),
            moments: step.moments.clone(),
            scalars,
        }
        .concatenated()
        .decomposed();
        let (got, copy) = llama_experiments::cubecl_adamw::try_update_parts(step)
            .unwrap_or_else(|_| panic!("the kernel takes CubeCL's f32 parameters"));
        // Copies are for buckets of bf16 gradients only (projection weights).
        assert!(copy.is_none());
        for (name, g, w) in [
            ("p", got.0, want.0),
            ("m", got.1, want.1),
            ("v", got.2, want.2),
        ] {
            let err = scalar((g - w.clone()).abs().max()) / scalar(w.abs().max());
            assert!(
                err < 1e-5,
                "{name} (moments {moments}, factor {factor}): {err}"
            );
        }
    }
}

#[test]
fn the_update_writes_bf16_copies_that_the_weight_cast_returns() {
    use llama_experiments::train::optim::{AdamwParts, AdamwScalars};
    use llama_model::weight_cast;
    let Some(dev) = device() else { return };
    llama_experiments::cubecl_fused::available(&dev).expect("the kernels load");
    let copies = llama_experiments::cubecl_adamw::enable_weight_copies();
    weight_cast::register::<Cuda>();
    weight_cast::register_copies::<Cuda>(copies);
    let x = |n: usize| Tensor::<Cuda, 1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
    let sizes = [1000, 3, 517, 4096];
    let mut offset = 0;
    let parts: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let part = (offset, x(n), x(n).cast(DType::BF16));
            offset += n;
            part
        })
        .collect();
    let step = AdamwParts {
        len: offset,
        parts,
        grad_factor: None,
        moments: Some((x(offset), x(offset).abs())),
        scalars: AdamwScalars {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            lr: 3e-3,
            decay: 3e-4,
            c1: 0.1,
            c2: 0.05,
        },
    };
    let ((p, _, _), copy) = llama_experiments::cubecl_adamw::try_update_parts(step)
        .unwrap_or_else(|_| panic!("the kernel takes CubeCL's f32 parameters"));
    let copy = copy.expect("bf16 gradients: a copy is written");
    assert_eq!(copy.dtype(), DType::BF16);
    // The same rounding as a cast: equal bit for bit (compared in f32, where both are exact).
    let diff = (copy.clone().cast(DType::F32) - p.clone().cast(DType::BF16).cast(DType::F32))
        .abs()
        .max();
    assert_eq!(scalar(diff), 0.0, "the copy is the cast of the new values");

    // A kept copy is what the weight's cast returns (a marker copy of zeros tells it from a
    // cast), its gradient reaches the f32 weight, and after `clear_copies` the cast is a cast.
    let value = p.clone().narrow(0, 1000, 517).reshape([11, 47]);
    let marker = Tensor::<Cuda, 1>::zeros([2000], &dev).cast(DType::BF16);
    weight_cast::keep_copy(&value, &marker, 1003);
    let w = Tensor::<Autodiff<Cuda>, 2>::from_inner(value.clone()).require_grad();
    let y = weight_cast::cast(w.clone(), DType::BF16);
    assert_eq!(y.dtype(), DType::BF16);
    assert_eq!(scalar(y.clone().inner().abs().sum().reshape([1])), 0.0);
    let grads = y.cast(DType::F32).sum().backward();
    let g = w.grad(&grads).expect("the weight gets a gradient");
    assert_eq!(scalar(g.cast(DType::F32).sum().reshape([1])), 11.0 * 47.0);
    weight_cast::clear_copies::<Cuda>();
    let w = Tensor::<Autodiff<Cuda>, 2>::from_inner(value.clone()).require_grad();
    let y = weight_cast::cast(w, DType::BF16).inner().cast(DType::F32);
    let want = value.cast(DType::BF16).cast(DType::F32);
    assert_eq!(scalar((y - want).abs().max().reshape([1])), 0.0);
}

#[test]
fn the_optimiser_on_cubecl_matches_torchs_adamw() {
    // Every bucket by parts here (`backend_parts_min_mean`: CubeCL concatenates piece by
    // piece), the tiny vectors included; with the kernel's squared norms as `llama` runs them.
    let Some(dev) = device() else { return };
    llama_experiments::cubecl_fused::available(&dev).expect("the kernels load");
    llama_experiments::cubecl_sum_squares::enable(&dev).expect("the squared-norm kernel loads");
    common::adamw::check_torch_adamw::<Autodiff<Cuda>>(&dev, true, None);
}
