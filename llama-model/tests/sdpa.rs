//! The registered training attention (`llama_model::sdpa`) against Burn's decomposition: same
//! outputs and the same gradients for q, k and v, causal and full, several query blocks, f32 and
//! bf16, grouped key/value heads; and a whole model's gradients unchanged by registering it.

mod common;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use llama_model::sdpa::{self, AttentionForward};
use llama_model::{Llama, LlamaConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Burn's reference decomposition, run under autodiff (what the model used before), on k and v
/// repeated to q's heads.
fn reference<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    let [b, h, t, hd] = q.dims();
    let (k, v) = (sdpa::expand_heads(k, &q), sdpa::expand_heads(v, &q));
    let dtype = v.dtype();
    let s = q.matmul(k.swap_dims(2, 3)).cast(DType::F32) / (hd as f64).sqrt();
    let s = if causal {
        let m = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &s.device())
            .unsqueeze::<4>()
            .expand([b, h, t, t]);
        s.mask_fill(m, -1e30)
    } else {
        s
    };
    softmax(s, 3).cast(dtype).matmul(v)
}

use burn::tensor::ElementConversion;

/// Output and q/k/v gradients of `f` for fixed random inputs and a random upstream gradient; k
/// and v have `hkv` heads.
fn run<B: AutodiffBackend>(
    dims: [usize; 4],
    hkv: usize,
    dtype: Option<DType>,
    f: impl Fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
) -> [Tensor<B::InnerBackend, 4>; 4] {
    let device = Default::default();
    // A local generator: the backends' global seeds are shared with tests running in parallel.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let [b, _, t, d] = dims;
    let mut uniform = |dims: [usize; 4]| {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::<B, 4>::from_data(TensorData::new(data, dims), &device)
    };
    let (q, k, v) = (
        uniform(dims).require_grad(),
        uniform([b, hkv, t, d]).require_grad(),
        uniform([b, hkv, t, d]).require_grad(),
    );
    let w = uniform(dims);
    let cast = |x: Tensor<B, 4>| match dtype {
        Some(d) => x.cast(d),
        None => x,
    };
    let o = f(cast(q.clone()), cast(k.clone()), cast(v.clone()));
    let grads = (o.clone().cast(DType::F32) * w).sum().backward();
    [
        o.inner(),
        q.grad(&grads).unwrap(),
        k.grad(&grads).unwrap(),
        v.grad(&grads).unwrap(),
    ]
}

fn compare<B: AutodiffBackend>(forward: AttentionForward, dtype: Option<DType>, tol: f32) {
    // A one-byte budget: blocks of the 64-query minimum, so 300 queries take five (the last
    // one short) and causal blocks see 64, 128, ... keys.
    sdpa::register_with_block_bytes::<B::InnerBackend>(forward, 1);
    for causal in [true, false] {
        // The last number is k/v's heads.
        for [b, h, t, d, hkv] in [[2, 3, 37, 16, 3], [1, 2, 300, 8, 2], [2, 6, 70, 8, 2]] {
            let dims = [b, h, t, d];
            let want = run::<B>(dims, hkv, dtype, |q, k, v| reference(q, k, v, causal));
            let got = run::<B>(dims, hkv, dtype, |q, k, v| {
                sdpa::try_attention(q, k, v, causal).unwrap_or_else(|_| panic!("registered"))
            });
            for (name, (g, w)) in ["output", "dq", "dk", "dv"]
                .iter()
                .zip(got.into_iter().zip(want))
            {
                let (d, scale) = common::diff_and_scale(g, w);
                let scale = scale.max(1.0);
                assert!(
                    d <= tol * scale,
                    "{name} causal={causal} {dims:?} kv {hkv}: {d} > {tol}·{scale}"
                );
            }
        }
    }
}

#[test]
fn blocked_attention_matches_the_decomposition_in_f32() {
    compare::<Autodiff<NdArray>>(AttentionForward::Blocked, None, 1e-5);
}

/// One test for both Flex cases: registration is per backend type and tests run in parallel.
#[test]
fn flex_fused_forward_in_f32_and_blocked_bf16_match_the_decomposition() {
    // Flex has its own attention kernel for the forward pass.
    compare::<Autodiff<Flex>>(AttentionForward::Fused, None, 1e-5);
    // bf16: different (equally valid) rounding orders, so a few bf16 ulps of the largest value.
    compare::<Autodiff<Flex>>(
        AttentionForward::Blocked,
        Some(DType::BF16),
        4.0 * 2f32.powi(-8),
    );
}

#[test]
fn unregistered_backends_get_their_inputs_back() {
    type B = Autodiff<NdArray<f64>>;
    let device = Default::default();
    let x = Tensor::<B, 4>::zeros([1, 1, 2, 2], &device);
    assert!(sdpa::try_attention(x.clone(), x.clone(), x, true).is_err());
}

#[test]
fn a_model_trains_to_the_same_gradients_with_the_registered_attention() {
    // A backend type no other test registers (they run in parallel, in one process).
    type B = Autodiff<NdArray<f32, i32>>;
    let device = Default::default();
    let cfg = LlamaConfig::preset("tiny").unwrap();
    let tokens = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            (0..2 * 65)
                .map(|i| (i * 37 % 4096) as i64)
                .collect::<Vec<_>>(),
            [2, 65],
        ),
        &device,
    );
    let grads_of = |model: &Llama<B>| {
        let loss = model.loss(tokens.clone());
        let g = loss.clone().backward();
        let wq = model.layers[0].attention.wq.weight.grad(&g).unwrap();
        (loss.into_scalar().elem::<f32>(), wq)
    };
    let model: Llama<B> = cfg.init(&device).unwrap();
    let (loss_before, g_before) = grads_of(&model);
    sdpa::register::<NdArray<f32, i32>>(AttentionForward::Blocked);
    let (loss_after, g_after) = grads_of(&model);
    assert!(
        (loss_before - loss_after).abs() < 1e-5,
        "{loss_before} vs {loss_after}"
    );
    let (d, scale) = common::diff_and_scale(g_after, g_before);
    assert!(d <= 1e-4 * scale, "{d} vs {scale}");
}
