//! Flash attention under CubeCL (`cubecl_flash`) against attention written with Burn's tensor ops
//! in f32 on the same device and inputs: the output, and dq, dk, dv through `llama_model::sdpa`'s
//! autodiff operation with the kernels registered as its native attention (bf16, causal, head
//! dims 64 and 128, lengths that are not multiples of the 64-row tiles, q/k/v with strided heads
//! as the model makes them, grouped-query heads read in place). `scripts/check_flash_attention.py`
//! checks the same kernels against PyTorch. Needs `--features cuda-untuned`, an NVIDIA GPU of
//! compute capability 8.0 or later and NVRTC on the library path; skips (passes, saying so)
//! without them.
#![cfg(feature = "cuda-untuned")]

mod common;

use burn::backend::Autodiff;
use burn::backend::cuda::CudaDevice;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Distribution, ElementConversion, Tensor, TensorPrimitive};
use llama_experiments::cubecl_cublas::Cuda;
use llama_experiments::cubecl_flash::{available, backward, forward};
use llama_model::sdpa::{AttentionForward, NativeAttention, expand_heads};

fn device() -> Option<CudaDevice> {
    common::gpu(|| CudaDevice::new(0), available)
}

/// Largest |got − want| over the largest |want|.
fn rel<B: burn::tensor::backend::Backend, const D: usize>(
    got: Tensor<B, D>,
    want: Tensor<B, D>,
) -> f32 {
    let scale = want
        .clone()
        .cast(DType::F32)
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>();
    let diff = (got.cast(DType::F32) - want.cast(DType::F32))
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>();
    diff / scale
}

/// Causal attention in f32 with tensor ops (the reference); grouped k/v heads are expanded.
fn reference<B: burn::tensor::backend::Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, t, d] = q.dims();
    let (k, v) = (expand_heads(k, &q), expand_heads(v, &q));
    let s = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    let future = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &s.device())
        .unsqueeze::<4>()
        .expand([b, h, t, t]);
    softmax(s.mask_fill(future, f32::NEG_INFINITY), 3).matmul(v)
}

/// `[b, h, t, d]` bf16 seen through strided heads (`[b, t, h, d]` swapped), as the model's q, k, v.
fn strided(dims: [usize; 4], dev: &CudaDevice) -> Tensor<Cuda, 4> {
    let [b, h, t, d] = dims;
    Tensor::<Cuda, 4>::random([b, t, h, d], Distribution::Normal(0.0, 1.0), dev)
        .cast(DType::BF16)
        .swap_dims(1, 2)
}

#[test]
fn flash_forward_matches_tensor_ops() {
    let Some(dev) = device() else { return };
    // The last number is k/v's heads (grouped-query attention where fewer than q's).
    for [b, h, t, d, hkv] in [
        [2, 3, 200, 64, 3],
        [1, 2, 64, 64, 2],
        [2, 2, 130, 128, 2],
        [2, 6, 150, 64, 2],
        [1, 4, 100, 128, 1],
    ] {
        let dims = [b, h, t, d];
        let (q, k, v) = (
            strided(dims, &dev),
            strided([b, hkv, t, d], &dev),
            strided([b, hkv, t, d], &dev),
        );
        let prim = |x: &Tensor<Cuda, 4>| x.clone().into_primitive().tensor();
        let (o, saved) = forward(prim(&q), prim(&k), prim(&v), true).expect("bf16, D 64/128");
        assert_eq!(saved.len(), 5);
        let o = Tensor::<Cuda, 4>::from_primitive(TensorPrimitive::Float(o));
        assert_eq!(o.dims(), dims);
        let f = |x: Tensor<Cuda, 4>| x.cast(DType::F32);
        let err = rel(o, reference(f(q), f(k), f(v)));
        assert!(err < 2e-2, "{dims:?}: output rel {err}");
    }
}

#[test]
fn flash_gradients_match_tensor_ops() {
    type A = Autodiff<Cuda>;
    let Some(dev) = device() else { return };
    llama_model::sdpa::register_native::<Cuda>(
        AttentionForward::FusedF32,
        NativeAttention {
            forward,
            backward,
            grouped: true,
        },
    );
    for [b, h, t, d, hkv] in [[2, 3, 200, 64, 3], [1, 2, 150, 128, 2], [2, 8, 130, 64, 2]] {
        let dims = [b, h, t, d];
        let (q, k, v) = (
            strided(dims, &dev),
            strided([b, hkv, t, d], &dev),
            strided([b, hkv, t, d], &dev),
        );
        let weights = Tensor::<Cuda, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
        let leaves = |dtype| {
            [&q, &k, &v].map(|x| Tensor::<A, 4>::from_inner(x.clone().cast(dtype)).require_grad())
        };
        // The kernels through sdpa's operation, in bf16.
        let [qa, ka, va] = leaves(DType::BF16);
        let out = llama_model::sdpa::try_attention(qa.clone(), ka.clone(), va.clone(), true)
            .unwrap_or_else(|_| panic!("registered"));
        let ga = (out.cast(DType::F32) * Tensor::from_inner(weights.clone()))
            .sum()
            .backward();
        // The reference in f32.
        let [qb, kb, vb] = leaves(DType::F32);
        let gb = (reference(qb.clone(), kb.clone(), vb.clone()) * Tensor::from_inner(weights))
            .sum()
            .backward();
        for (name, a, b) in [("dq", &qa, &qb), ("dk", &ka, &kb), ("dv", &va, &vb)] {
            let (a, b) = (a.grad(&ga).unwrap(), b.grad(&gb).unwrap());
            assert_eq!(a.dims(), b.dims(), "{dims:?}: {name}");
            let err = rel(a, b);
            assert!(err < 3e-2, "{dims:?}: {name} rel {err}");
        }
    }
}

#[test]
fn other_inputs_are_left_to_the_blocked_attention() {
    let Some(dev) = device() else { return };
    let prim = |x: Tensor<Cuda, 4>| x.into_primitive().tensor();
    let r = |dims, dtype| {
        Tensor::<Cuda, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev).cast(dtype)
    };
    // f32, a head dim of 32, and non-causal attention are not the kernels'.
    let x = r([1, 2, 64, 64], DType::F32);
    assert!(forward(prim(x.clone()), prim(x.clone()), prim(x), true).is_none());
    let x = r([1, 2, 64, 32], DType::BF16);
    assert!(forward(prim(x.clone()), prim(x.clone()), prim(x), true).is_none());
    let x = r([1, 2, 64, 64], DType::BF16);
    assert!(forward(prim(x.clone()), prim(x.clone()), prim(x), false).is_none());
    // k/v heads that do not divide q's.
    let (q, kv) = (
        r([1, 3, 64, 64], DType::BF16),
        r([1, 2, 64, 64], DType::BF16),
    );
    assert!(forward(prim(q), prim(kv.clone()), prim(kv), true).is_none());
}
