//! The fused cross-entropy under CubeCL (`cubecl_loss`) against Burn's tensor ops in f32 on the
//! same device and inputs: the mean loss and the logits' gradient through `llama_model::loss`'s
//! autodiff operation with the kernels registered as its native loss, for f32 and bf16 logits,
//! and NaN for a target outside the vocabulary. Needs `--features cuda-untuned`, an NVIDIA GPU
//! of compute capability 8.0 or later and NVRTC on the library path; skips (passes, saying so)
//! without them.
#![cfg(feature = "cuda-untuned")]

mod common;

use burn::backend::Autodiff;
use burn::backend::cuda::CudaDevice;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Distribution, ElementConversion, Int, Tensor};
use llama_experiments::cubecl_cublas::Cuda;
use llama_experiments::cubecl_loss::{available, backward, forward};
use llama_model::loss::NativeLoss;

fn device() -> Option<CudaDevice> {
    common::gpu(|| CudaDevice::new(0), available)
}

fn scalar<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> f32 {
    t.cast(DType::F32).into_scalar().elem::<f32>()
}

#[test]
fn fused_loss_and_gradient_match_tensor_ops() {
    type A = Autodiff<Cuda>;
    let Some(dev) = device() else { return };
    llama_model::loss::register_native::<Cuda>(NativeLoss { forward, backward });
    // 1,003: one load per element; 1,024: 16-byte pieces.
    for vocab in [1003, 1024] {
        let n = 300;
        let logits = Tensor::<Cuda, 2>::random([n, vocab], Distribution::Normal(0.0, 3.0), &dev);
        let targets =
            Tensor::<Cuda, 1, Int>::random([n], Distribution::Uniform(0.0, vocab as f64), &dev);
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            let x = logits.clone().cast(dtype);
            // The kernels through the loss's operation.
            let xa = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
            let loss =
                llama_model::loss::cross_entropy(xa.clone(), Tensor::from_inner(targets.clone()));
            let got = scalar(loss.clone().inner());
            let ga = loss.backward();
            // The reference in f32.
            let xb = Tensor::<A, 2>::from_inner(x.cast(DType::F32)).require_grad();
            let picked = log_softmax(xb.clone(), 1)
                .gather(1, Tensor::from_inner(targets.clone()).unsqueeze_dim(1));
            let want_loss = picked.mean().neg();
            let want = scalar(want_loss.clone().inner());
            let gb = want_loss.backward();
            assert!(
                (got - want).abs() <= tol * want.abs(),
                "{vocab} {dtype:?}: loss {got} against {want}"
            );
            let (da, db) = (xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
            assert_eq!(da.dtype(), dtype);
            let scale = scalar(db.clone().abs().max());
            let err = scalar((da.cast(DType::F32) - db).abs().max()) / scale;
            assert!(err < 2e-2, "{vocab} {dtype:?}: gradient rel {err}");
        }
    }
}

#[test]
fn a_target_outside_the_vocabulary_gives_nan() {
    let Some(dev) = device() else { return };
    let logits = Tensor::<Cuda, 2>::random([4, 50], Distribution::Normal(0.0, 1.0), &dev);
    let targets = Tensor::<Cuda, 1, Int>::from_ints([1, 2, 50, 3], &dev);
    let (loss, _) =
        forward(logits.into_primitive().tensor(), targets.into_primitive()).expect("f32 logits");
    let loss = Tensor::<Cuda, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(loss));
    assert!(scalar(loss).is_nan());
}
