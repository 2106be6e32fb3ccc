//! The optimiser's reference check, shared by `train` (NdArray) and `libtorch_adamw` (tch-cpu).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

/// A weight matrix (decayed) and two vectors (not) whose gradients are known: `loss = Σ W ⊙ cw +
/// Σ b ⊙ cb + Σ c ⊙ cc` has gradients cw, cb, cc at every step.
#[derive(burn::module::Module, Debug)]
struct Three<B: burn::tensor::backend::Backend> {
    lin: burn::nn::Linear<B>,
    b: burn::module::Param<Tensor<B, 1>>,
    c: burn::module::Param<Tensor<B, 1>>,
    /// Not trained: the optimiser must leave it alone (a weight matrix: no decay either).
    frozen: burn::nn::Linear<B>,
}

/// Three steps of [`LlamaOptimizer`] against an f64 implementation of `torch.optim.AdamW` after
/// `clip_grad_norm_`: decay on the matrix only, clipping off/inactive/active, four bucket sizes, a
/// frozen weight matrix left untouched. `native`: the backend's own update kernels where it has
/// them (`LlamaOptimizer::with_native_update`); `parts_min_mean`: the optimiser's threshold for
/// updating a bucket parameter by parameter (`with_parts_min_mean`; 1 reaches that path).
pub fn check_torch_adamw<B: AutodiffBackend>(
    device: &B::Device,
    native: bool,
    parts_min_mean: Option<usize>,
) {
    use burn::optim::GradientsParams;
    use llama_experiments::train::config::OptimConfig;
    use llama_experiments::train::optim::{BUCKET_ELEMS, LlamaOptimizer};
    let (cw, cb, cc) = (
        [[3.0f64, -4.0], [0.0, 12.0]],
        [-5.0f64, 0.0],
        [1.0f64, -2.0, 0.5],
    );
    let cfg = OptimConfig {
        weight_decay: 0.1,
        ..OptimConfig::default()
    };
    let (lr, scale) = (0.1, 0.5);
    // Bucket sizes: every parameter alone, b and c split, b and c sharing one, the default.
    for bucket in [1, 4, 5, BUCKET_ELEMS] {
        for clip in [None, Some(100.0), Some(0.5)] {
            // Fixed values, no random initialiser: the backend's RNG is global to the process,
            // and a draw here while a training test seeds and initialises its model (in a
            // parallel test thread) would change that model.
            let fixed = |w: [[f32; 2]; 2]| {
                let mut lin = burn::nn::LinearConfig::new(2, 2)
                    .with_bias(false)
                    .with_initializer(burn::nn::Initializer::Zeros)
                    .init(device);
                lin.weight = burn::module::Param::from_tensor(Tensor::from_floats(w, device));
                lin
            };
            let mut model = Three::<B> {
                lin: fixed([[0.5, -1.0], [2.0, 0.25]]),
                b: burn::module::Param::from_tensor(Tensor::from_floats([0.25, -0.5], device)),
                c: burn::module::Param::from_tensor(Tensor::from_floats([1.0, 0.0, -1.0], device)),
                frozen: {
                    let mut lin = fixed([[-0.75, 0.125], [1.5, -2.0]]);
                    lin.weight = lin.weight.set_require_grad(false);
                    lin
                },
            };
            let frozen = model.frozen.weight.val().into_data();
            let values = |m: &Three<B>| -> Vec<f64> {
                let w = m.lin.weight.val().into_data().to_vec::<f32>().unwrap();
                let b = m.b.val().into_data().to_vec::<f32>().unwrap();
                let c = m.c.val().into_data().to_vec::<f32>().unwrap();
                w.into_iter().chain(b).chain(c).map(f64::from).collect()
            };
            // Reference in f64: torch.optim.AdamW after clip_grad_norm_.
            let mut p = values(&model);
            let grad: Vec<f64> = cw
                .iter()
                .flatten()
                .chain(&cb)
                .chain(&cc)
                .map(|x| x * scale)
                .collect();
            let norm = grad.iter().map(|x| x * x).sum::<f64>().sqrt();
            let factor = clip.map_or(1.0, |m| (m / (norm + 1e-6)).min(1.0));
            let (b1, b2, eps) = (cfg.beta1 as f64, cfg.beta2 as f64, cfg.eps as f64);
            let (mut m, mut v) = (vec![0.0; 9], vec![0.0; 9]);
            let mut optim =
                LlamaOptimizer::with_bucket_elems(&cfg, &model, bucket).with_native_update(native);
            if let Some(n) = parts_min_mean {
                optim = optim.with_parts_min_mean(n);
            }
            assert_eq!(optim.no_decay_count(), 2);
            for t in 1..=3 {
                for i in 0..9 {
                    let g = grad[i] * factor;
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                    if i < 4 {
                        p[i] *= 1.0 - lr * cfg.weight_decay as f64;
                    }
                    let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
                    p[i] -= lr * mh / (vh.sqrt() + eps);
                }
                let loss = (model.lin.weight.val() * Tensor::from_floats(cw, device)).sum()
                    + (model.b.val() * Tensor::from_floats(cb, device)).sum()
                    + (model.c.val() * Tensor::from_floats(cc, device)).sum();
                let grads = GradientsParams::from_grads::<B, _>(loss.backward(), &model);
                let (next, n) = optim.step(lr, model, grads, scale, clip, device);
                model = next;
                let n: f64 = n.into_scalar().elem();
                assert!((n - norm).abs() < 1e-5, "norm {n} vs {norm}");
                assert_eq!(model.frozen.weight.val().into_data(), frozen);
                let got = values(&model);
                for (x, y) in got.iter().zip(&p) {
                    let what = format!("bucket {bucket} clip {clip:?} step {t}");
                    assert!((x - y).abs() <= 1e-5, "{what}: {got:?} vs {p:?}");
                }
            }
        }
    }
}

/// One bucket update to check: length, step `t`, decay, whether moments exist yet (a later step),
/// whether a clipping factor applies.
pub type UpdateCase = (usize, i32, f64, bool, bool);

/// A backend's own bucket update (`update`; `None`: it declined the tensors) against
/// `AdamwStep::decomposed` on random data for each case: the parameters and both moments within
/// 10⁻⁶ relative.
pub fn check_update<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    cases: &[UpdateCase],
    update: impl Fn(
        llama_experiments::train::optim::AdamwStep<B>,
    ) -> Option<llama_experiments::train::optim::AdamwOutput<B>>,
) {
    use burn::tensor::Distribution;
    use llama_experiments::train::optim::{AdamwScalars, AdamwStep};
    let r = |n, std| Tensor::<B, 1>::random([n], Distribution::Normal(0.0, std), device);
    let factor = Tensor::<B, 1>::from_floats([0.37], device);
    for &(n, t, decay, moments, scaled) in cases {
        let (m, v) = (r(n, 0.01), r(n, 1e-4).abs());
        let a = AdamwStep {
            param: r(n, 1.0),
            grad: r(n, 0.1),
            grad_factor: scaled.then(|| factor.clone()),
            moments: moments.then(|| (m.clone(), v.clone())),
            scalars: AdamwScalars {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                lr: 3e-4,
                decay,
                c1: 1.0 - 0.9f64.powi(t),
                c2: 1.0 - 0.95f64.powi(t),
            },
        };
        let b = AdamwStep {
            param: a.param.clone() * 1.0,
            grad: a.grad.clone(),
            grad_factor: a.grad_factor.clone(),
            moments: a.moments.clone(),
            scalars: a.scalars,
        };
        let want = b.decomposed();
        let got = update(a).expect("the backend's kernels take these tensors");
        for (name, g, w) in [
            ("param", &got.0, &want.0),
            ("m", &got.1, &want.1),
            ("v", &got.2, &want.2),
        ] {
            let err = super::rel(g, w);
            assert!(
                err <= 1e-6,
                "n {n} step {t} decay {decay}: {name} relative error {err:e}"
            );
        }
    }
}
