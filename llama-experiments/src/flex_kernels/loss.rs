//! The mean next-token cross-entropy on Flex: [`llama_model::loss`]'s native passes.
//!
//! Forward, per row: its maximum, then one pass for the exponentials (kept) and their sum, then
//! the gradient `(softmax − onehot) / n` from them; backward multiplies it by the loss's gradient.
//! Flex's tensor-op form takes a max, a subtraction, an exponential, a sum, a logarithm, a
//! gather and a mean forward, and a scatter among five passes backward.

use burn::tensor::DType;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::exp::{exp, vectorised};
use super::{CHUNK, buffer, dense, elems, max_of, sum_of, tensor};

/// The targets as indices below `vocab`, or `None` if any is not.
fn indices(targets: &FlexTensor, vocab: usize) -> Option<Vec<usize>> {
    let t = targets.to_contiguous();
    let idx: Vec<i64> = match t.dtype() {
        DType::I32 => t.as_slice::<i32>()?.iter().map(|&v| v as i64).collect(),
        DType::I64 => t.as_slice::<i64>()?.to_vec(),
        _ => return None,
    };
    idx.into_iter()
        .map(|v| usize::try_from(v).ok().filter(|&v| v < vocab))
        .collect()
}

/// `(logits [n, vocab], targets [n])` → the mean loss (`[1]`) and `[d]`, the logits' gradient
/// for a loss gradient of 1; `None` for non-f32 logits or a target outside the vocabulary.
///
/// The gradient is written here, in the same pass that sums the row's exponentials (each is
/// stored, then scaled by the row's `1/Σ`): one exponential per logit instead of one forward and
/// one backward, and the backward is a scaling at most. It costs no memory: it replaces the
/// logits, which the closed-form backward would have kept.
pub fn forward(
    logits: FloatTensor<Flex>,
    targets: IntTensor<Flex>,
) -> Option<(FloatTensor<Flex>, Vec<FloatTensor<Flex>>)> {
    let [n, vocab]: [usize; 2] = logits.layout().shape().to_vec().try_into().ok()?;
    let idx = indices(&targets, vocab)?;
    if idx.len() != n || n == 0 || vocab == 0 {
        return None;
    }
    let logits = dense(&logits)?;
    let x = elems(&logits);
    let mut d = buffer(n * vocab);
    let mut per_row = buffer(n);
    let inv_n = 1.0 / n as f32;
    per_row
        .par_iter_mut()
        .zip(d.par_chunks_mut(vocab))
        .zip(x.par_chunks(vocab).zip(&idx))
        .for_each(|((loss, d), (row, &t))| {
            let m = max_of(row);
            let sum = vectorised(|| {
                for (d, &v) in d.iter_mut().zip(row) {
                    *d = exp(v - m);
                }
                sum_of(d, |e| e)
            });
            // lse − x_t; softmax / n − onehot / n.
            *loss = sum.ln() + m - row[t];
            let k = inv_n / sum;
            d.iter_mut().for_each(|d| *d *= k);
            d[t] -= inv_n;
        });
    // Summed in row order in f64: the same value however the rows were scheduled.
    let total: f64 = per_row.iter().map(|&l| l as f64).sum();
    let loss = tensor(vec![(total / n as f64) as f32], [1]);
    Some((loss, vec![tensor(d, [n, vocab])]))
}

/// `[d]` and the loss's gradient (`[1]`) → the logits' gradient `d · g`.
pub fn backward(saved: Vec<FloatTensor<Flex>>, g: FloatTensor<Flex>) -> FloatTensor<Flex> {
    let [d]: [FlexTensor; 1] = saved.try_into().expect("forward saves the gradient");
    let g = dense(&g).expect("the loss's gradient is f32 like the loss");
    let g = elems(&g)[0];
    if g == 1.0 {
        return d;
    }
    let shape = d.layout().shape().clone();
    let mut out = elems(&d).to_vec();
    out.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|x| *x *= g));
    tensor(out, shape)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Int, Tensor, TensorData, TensorPrimitive};

    use super::*;

    type A = burn::backend::Autodiff<Flex>;

    /// `log_softmax(x).gather(t).mean().neg()` under autodiff, scaled by 3, against the kernels.
    #[test]
    fn matches_the_tensor_op_loss_and_its_gradient() {
        let dev = Default::default();
        let x = Tensor::<Flex, 2>::random([9, 50], Distribution::Normal(0.0, 4.0), &dev);
        let t: Vec<i32> = (0..9).map(|i| (i * 17 + 3) % 50).collect();
        let t = Tensor::<Flex, 1, Int>::from_data(TensorData::new(t, [9]), &dev);
        let xa = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
        let ta = Tensor::<A, 1, Int>::from_inner(t.clone());
        let logp = burn::tensor::activation::log_softmax(xa.clone(), 1);
        let l0 = logp.gather(1, ta.unsqueeze_dim(1)).mean().neg();
        let grads = (l0.clone() * 3.0).backward();
        let (l1, saved) = forward(x.into_primitive().tensor(), t.into_primitive()).unwrap();
        let d1 = backward(saved, tensor(vec![3.0], [1]));
        let tol = burn::tensor::Tolerance::<f32>::rel_abs(1e-5, 1e-6);
        let l1 = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(l1));
        let d1 = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(d1));
        l0.inner()
            .into_data()
            .assert_approx_eq::<f32>(&l1.into_data(), tol);
        let d0 = xa.grad(&grads).unwrap();
        d0.into_data().assert_approx_eq::<f32>(&d1.into_data(), tol);
    }

    /// A diverged run's NaN logits give a NaN loss (the training loop stops on it).
    #[test]
    fn a_nan_logit_makes_the_loss_nan() {
        let dev = Default::default();
        let x = tensor(vec![0.0, f32::NAN, 1.0, 2.0], [2, 2]);
        let t = Tensor::<Flex, 1, Int>::from_data(TensorData::new(vec![0, 1], [2]), &dev);
        let (loss, _) = forward(x, t.into_primitive()).unwrap();
        assert!(elems(&loss)[0].is_nan());
    }

    #[test]
    fn declines_targets_outside_the_vocabulary() {
        let dev = Default::default();
        let x = tensor(vec![0.0; 6], [2, 3]);
        for bad in [[0, 3], [-1, 0]] {
            let t = Tensor::<Flex, 1, Int>::from_data(TensorData::new(bad.to_vec(), [2]), &dev);
            assert!(forward(x.clone(), t.into_primitive()).is_none());
        }
    }
}
