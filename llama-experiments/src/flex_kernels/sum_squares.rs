//! The clipping's squared gradient norm on Flex: `Σ Σ t²` over a bucket's gradients where they
//! lie, one pass each, in place of a square and a sum per tensor (two of Flex's passes and a
//! temporary the size of the gradient).
//!
//! Chunks are summed in eight running sums each (vectorised), and the chunks' sums in order, so
//! the value does not depend on how rayon schedules the chunks.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::Flex;
use rayon::prelude::*;

use super::{CHUNK, dense, elems, sum_of, tensor};

/// `Σ Σ t²` over `ts` (`[1]`, f32), or `ts` back (another backend, or a dtype other than f32).
pub fn try_sum_squares_all<I: Backend>(
    ts: Vec<Tensor<I, 1>>,
) -> Result<Tensor<I, 1>, Vec<Tensor<I, 1>>> {
    let boxed: Box<dyn Any> = Box::new(ts);
    let ts = match boxed.downcast::<Vec<Tensor<Flex, 1>>>() {
        Ok(ts) => *ts,
        Err(boxed) => return Err(*boxed.downcast::<Vec<Tensor<I, 1>>>().expect("its own type")),
    };
    let dense: Option<Vec<_>> = (ts.iter())
        .map(|t| dense(&t.clone().into_primitive().tensor()))
        .collect();
    let Some(dense) = dense else {
        let boxed: Box<dyn Any> = Box::new(ts);
        return Err(*boxed
            .downcast::<Vec<Tensor<I, 1>>>()
            .expect("I is Flex here"));
    };
    let total: f64 = (dense.iter())
        .map(|t| {
            let parts: Vec<f32> = (elems(t).par_chunks(CHUNK))
                .map(|c| sum_of(c, |x| x * x))
                .collect();
            parts.iter().map(|&p| p as f64).sum::<f64>()
        })
        .sum();
    let s =
        Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(tensor(vec![total as f32], [1])));
    let boxed: Box<dyn Any> = Box::new(s);
    Ok(*boxed.downcast::<Tensor<I, 1>>().expect("I is Flex here"))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Distribution};

    use super::*;

    #[test]
    fn sums_the_squares_of_every_tensor() {
        let dev = Default::default();
        let ts: Vec<Tensor<Flex, 1>> = [3usize, 40_000, 17]
            .iter()
            .map(|&n| Tensor::random([n], Distribution::Normal(0.0, 1.0), &dev))
            .collect();
        let want: f32 = ts
            .iter()
            .map(|t| t.clone().square().sum().into_scalar())
            .sum();
        let got = try_sum_squares_all(ts.clone()).ok().unwrap().into_scalar();
        assert!((got - want).abs() <= 1e-5 * want, "{got} against {want}");
        let bf16 = vec![ts[0].clone().cast(DType::BF16)];
        assert!(try_sum_squares_all(bf16).is_err());
    }
}
