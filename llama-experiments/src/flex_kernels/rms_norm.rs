//! RMSNorm on Flex: [`llama_model::rms_norm`]'s native passes, one row at a time.
//!
//! Forward `y = x · r · γ` with `r = 1/√(mean(x²) + ε)` per row, keeping `x` and `r`; backward
//! the closed form `t = dy ⊙ γ`, `dx = r ⊙ (t − x̂ ⊙ mean(t ⊙ x̂))`, `dγ = Σ_rows dy ⊙ x̂` with
//! `x̂ = x · r` recomputed. `dγ`'s rows are summed per task, then the tasks' sums in task order,
//! so the result does not depend on how rayon schedules them.

use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{CHUNK, buffer, dense, elems, sum_of, tensor};

/// `(x [n, d], γ [d], ε, y's dtype)` → `y` and `[x, γ, r]`; `None` unless all are f32.
pub fn forward(
    x: FloatTensor<Flex>,
    gamma: FloatTensor<Flex>,
    eps: f64,
    out: DType,
) -> Option<(FloatTensor<Flex>, Vec<FloatTensor<Flex>>)> {
    let [n, d]: [usize; 2] = x.layout().shape().to_vec().try_into().ok()?;
    if out != DType::F32 || gamma.layout().shape().to_vec() != [d] || d == 0 {
        return None;
    }
    let (x, gamma) = (dense(&x)?, dense(&gamma)?);
    let (xs, g) = (elems(&x), elems(&gamma));
    let mut y = buffer(n * d);
    let mut r = buffer(n);
    let rows = (CHUNK / d).max(1);
    y.par_chunks_mut(rows * d)
        .zip(r.par_chunks_mut(rows))
        .zip(xs.par_chunks(rows * d))
        .for_each(|((y, r), x)| {
            for ((y, r), x) in y.chunks_mut(d).zip(r.iter_mut()).zip(x.chunks(d)) {
                let ms = sum_of(x, |v| v * v) / d as f32;
                *r = 1.0 / (ms + eps as f32).sqrt();
                for ((y, x), g) in y.iter_mut().zip(x).zip(g) {
                    *y = x * *r * g;
                }
            }
        });
    let r = tensor(r, [n]);
    Some((tensor(y, [n, d]), vec![x, gamma, r]))
}

/// `[x, γ, r]` and `dy` → `(dx, dγ)`, both f32.
pub fn backward(
    saved: Vec<FloatTensor<Flex>>,
    dy: FloatTensor<Flex>,
) -> (FloatTensor<Flex>, FloatTensor<Flex>) {
    let [x, gamma, r]: [FlexTensor; 3] = saved.try_into().expect("forward saves x, gamma and r");
    let dy = dense(&dy).expect("the output's gradient is f32 like the output");
    let [n, d]: [usize; 2] = x.layout().shape().to_vec().try_into().expect("rank 2");
    let (xs, g, rs, dys) = (elems(&x), elems(&gamma), elems(&r), elems(&dy));
    let mut dx = buffer(n * d);
    let rows = (CHUNK / d).max(1);
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows * d)
        .zip(xs.par_chunks(rows * d))
        .zip(dys.par_chunks(rows * d))
        .zip(rs.par_chunks(rows))
        .map(|(((dx, x), dy), r)| {
            let mut dg = vec![0.0f32; d];
            for (((dx, x), dy), &r) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)).zip(r) {
                // mean(t ⊙ x̂) with t = dy ⊙ γ, x̂ = x · r.
                let dot = (dy.iter().zip(g).zip(x))
                    .map(|((dy, g), x)| dy * g * x * r)
                    .sum::<f32>()
                    / d as f32;
                for ((((dx, x), dy), g), dg) in dx.iter_mut().zip(x).zip(dy).zip(g).zip(&mut dg) {
                    let xh = x * r;
                    *dx = r * (dy * g - xh * dot);
                    *dg += dy * xh;
                }
            }
            dg
        })
        .collect();
    let mut dgamma = vec![0.0f32; d];
    for p in &partials {
        for (a, b) in dgamma.iter_mut().zip(p) {
            *a += b;
        }
    }
    (tensor(dx, [n, d]), tensor(dgamma, [d]))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, TensorData, TensorPrimitive};

    use super::*;

    type A = burn::backend::Autodiff<Flex>;

    fn float<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    /// The norm written out in tensor ops under autodiff, with the loss `Σ y ⊙ w`: the kernels
    /// give the same `y` and the same gradients for `x` and `γ`.
    #[test]
    fn matches_the_tensor_op_norm_in_both_passes() {
        let dev = Default::default();
        let x = Tensor::<Flex, 2>::random([37, 48], Distribution::Normal(0.0, 2.0), &dev);
        let g = Tensor::<Flex, 1>::random([48], Distribution::Normal(1.0, 0.3), &dev);
        let w = Tensor::<Flex, 2>::random([37, 48], Distribution::Normal(0.0, 1.0), &dev);

        let xa = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
        let ga = Tensor::<A, 1>::from_inner(g.clone()).require_grad();
        let r = (xa.clone().square().mean_dim(1) + 1e-5).sqrt().recip();
        let y0 = xa.clone() * r * ga.clone().unsqueeze::<2>();
        let grads = (y0.clone() * Tensor::from_inner(w.clone()))
            .sum()
            .backward();

        let (y1, saved) = forward(
            x.into_primitive().tensor(),
            g.into_primitive().tensor(),
            1e-5,
            DType::F32,
        )
        .unwrap();
        let (dx1, dg1) = backward(saved, w.into_primitive().tensor());
        let tol = burn::tensor::Tolerance::<f32>::rel_abs(1e-4, 1e-5);
        let check = |a: TensorData, b: TensorData| a.assert_approx_eq::<f32>(&b, tol);
        check(y0.inner().into_data(), float::<2>(y1).into_data());
        check(
            xa.grad(&grads).unwrap().into_data(),
            float::<2>(dx1).into_data(),
        );
        check(
            ga.grad(&grads).unwrap().into_data(),
            float::<1>(dg1).into_data(),
        );
    }

    #[test]
    fn declines_other_dtypes_and_mismatched_gains() {
        let x = tensor(vec![1.0; 6], [2, 3]);
        assert!(forward(x.clone(), tensor(vec![1.0; 3], [3]), 1e-5, DType::BF16).is_none());
        assert!(forward(x, tensor(vec![1.0; 2], [2]), 1e-5, DType::F32).is_none());
    }
}
