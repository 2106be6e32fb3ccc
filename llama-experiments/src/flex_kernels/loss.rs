//! The mean next-token cross-entropy on Flex: [`llama_model::loss`]'s native passes.
//!
//! Forward one pass per row for its log-sum-exp (maximum, then the exponentials' sum) and the
//! picked logit; backward `(softmax − onehot) · g / n` in one pass from the saved log-sum-exps.
//! Flex's tensor-op form takes a max, a subtraction, an exponential, a sum, a logarithm, a
//! gather and a mean forward, and a scatter among five passes backward.

use burn::tensor::DType;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{buffer, dense, elems, tensor};

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

/// `(logits [n, vocab], targets [n])` → the mean loss (`[1]`) and `[logits, lse, targets as
/// f32]`; `None` for non-f32 logits or a target outside the vocabulary.
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
    let mut lse = buffer(n);
    let mut picked = buffer(n);
    lse.par_iter_mut()
        .zip(picked.par_iter_mut())
        .zip(x.par_chunks(vocab).zip(&idx))
        .for_each(|((lse, picked), (row, &t))| {
            let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = row.iter().map(|&v| (v - m).exp()).sum();
            *lse = sum.ln() + m;
            *picked = row[t];
        });
    // Summed in row order in f64: the same value however the rows were scheduled.
    let total: f64 = lse.iter().zip(&picked).map(|(l, p)| (l - p) as f64).sum();
    let loss = tensor(vec![(total / n as f64) as f32], [1]);
    let targets = tensor(idx.iter().map(|&t| t as f32).collect(), [n]);
    Some((loss, vec![logits, tensor(lse, [n]), targets]))
}

/// `[logits, lse, targets]` and the loss's gradient (`[1]`) → the logits' gradient.
pub fn backward(saved: Vec<FloatTensor<Flex>>, g: FloatTensor<Flex>) -> FloatTensor<Flex> {
    let [logits, lse, targets]: [FlexTensor; 3] = saved
        .try_into()
        .expect("forward saves logits, lse and targets");
    let [n, vocab]: [usize; 2] = (logits.layout().shape().to_vec().try_into()).expect("rank 2");
    let g = dense(&g).expect("the loss's gradient is f32 like the loss");
    let scale = elems(&g)[0] / n as f32;
    let (x, lse, targets) = (elems(&logits), elems(&lse), elems(&targets));
    let mut d = buffer(n * vocab);
    d.par_chunks_mut(vocab)
        .zip(x.par_chunks(vocab))
        .zip(lse.par_iter().zip(targets))
        .for_each(|((d, x), (&lse, &t))| {
            for (d, &x) in d.iter_mut().zip(x) {
                *d = (x - lse).exp() * scale;
            }
            d[t as usize] -= scale;
        });
    tensor(d, [n, vocab])
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
