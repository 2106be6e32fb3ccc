//! The rotary embedding on Flex: [`llama_model::rotary`]'s native rotation, both ways.
//!
//! `y = x ⊙ C + swap(x) ⊙ S` forward and `dx = g ⊙ C + swap(g ⊙ S)` backward, where `swap`
//! exchanges the halves of each head's row; `x` is read through its strides (the heads' view of
//! the projections is a transpose, so no copy first) and the result is written contiguous.

use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{CHUNK, buffer, dense, elems, tensor};

/// `x ⊙ C + swap(x) ⊙ S` ([`llama_model::rotary::NativeRotary::forward`]).
pub fn forward(
    x: FloatTensor<Flex>,
    c: FloatTensor<Flex>,
    s: FloatTensor<Flex>,
) -> Option<FloatTensor<Flex>> {
    rotate(&x, &c, &s, false)
}

/// `g ⊙ C + swap(g ⊙ S)` ([`llama_model::rotary::NativeRotary::backward`]).
pub fn backward(
    g: FloatTensor<Flex>,
    c: FloatTensor<Flex>,
    s: FloatTensor<Flex>,
) -> Option<FloatTensor<Flex>> {
    rotate(&g, &c, &s, true)
}

/// `x [batch, heads, time, dim]` (f32, any non-negative strides with unit stride along `dim`)
/// and the tables `[batch or 1, 1, time, dim]`; `None` for other shapes or dtypes.
fn rotate(x: &FlexTensor, c: &FlexTensor, s: &FlexTensor, inverse: bool) -> Option<FlexTensor> {
    let [batch, heads, time, dim]: [usize; 4] = x.layout().shape().to_vec().try_into().ok()?;
    let table = c.layout().shape().to_vec();
    let fits = x.dtype() == DType::F32
        && table.len() == 4
        && (table[0] == batch || table[0] == 1)
        && table[1..] == [1, time, dim]
        && s.layout().shape().to_vec() == table
        && dim % 2 == 0
        && dim > 0;
    if !fits {
        return None;
    }
    let x = match x.layout().strides()[3] == 1 && x.layout().has_positive_strides() {
        true => x.clone(),
        false => x.to_contiguous(),
    };
    let st = x.layout().strides().to_vec();
    let (sb, sh, stt) = (st[0] as usize, st[1] as usize, st[2] as usize);
    let start = x.layout().start_offset();
    let xs = x.storage::<f32>();
    let (c, s) = (dense(c)?, dense(s)?);
    let (cs, ss) = (elems(&c), elems(&s));
    let shared = table[0] == 1;
    let half = dim / 2;
    let mut y = buffer(batch * heads * time * dim);
    let rows = (CHUNK / dim).max(1);
    y.par_chunks_mut(rows * dim)
        .enumerate()
        .for_each(|(task, y)| {
            for (k, y) in y.chunks_mut(dim).enumerate() {
                let row = task * rows + k;
                let (t, bh) = (row % time, row / time);
                let (h, b) = (bh % heads, bh / heads);
                let xr = &xs[start + b * sb + h * sh + t * stt..][..dim];
                let tr = ((if shared { 0 } else { b }) * time + t) * dim;
                let (cr, sr) = (&cs[tr..tr + dim], &ss[tr..tr + dim]);
                for i in 0..dim {
                    let j = if i < half { i + half } else { i - half };
                    // Forward: swap(x)ᵢ · Sᵢ; backward: swap(g ⊙ S)ᵢ = gⱼ · Sⱼ.
                    let other = if inverse {
                        xr[j] * sr[j]
                    } else {
                        xr[j] * sr[i]
                    };
                    y[i] = xr[i] * cr[i] + other;
                }
            }
        });
    Some(tensor(y, [batch, heads, time, dim]))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, TensorPrimitive};

    use super::*;

    fn float(t: FlexTensor) -> Tensor<Flex, 4> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    fn swap(x: Tensor<Flex, 4>) -> Tensor<Flex, 4> {
        let half = x.dims()[3] / 2;
        Tensor::cat(
            vec![x.clone().narrow(3, half, half), x.narrow(3, 0, half)],
            3,
        )
    }

    /// Both directions against the formulas in tensor ops, on a transposed (time-major) input and
    /// on tables shared by the batch and per row.
    #[test]
    fn matches_the_tensor_op_rotation_both_ways() {
        let dev = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        // [batch, time, heads, dim] in memory, viewed as [batch, heads, time, dim].
        let x = Tensor::<Flex, 4>::random([2, 5, 3, 8], n, &dev).swap_dims(1, 2);
        for tb in [1, 2] {
            let c = Tensor::<Flex, 4>::random([tb, 1, 5, 8], n, &dev);
            let s = Tensor::<Flex, 4>::random([tb, 1, 5, 8], n, &dev);
            let p = |t: &Tensor<Flex, 4>| t.clone().into_primitive().tensor();
            let y = forward(p(&x), p(&c), p(&s)).unwrap();
            let want = x.clone() * c.clone() + swap(x.clone()) * s.clone();
            let tol = burn::tensor::Tolerance::<f32>::rel_abs(1e-6, 1e-6);
            want.into_data()
                .assert_approx_eq::<f32>(&float(y).into_data(), tol);
            let dx = backward(p(&x), p(&c), p(&s)).unwrap();
            let want = x.clone() * c.clone() + swap(x.clone() * s.clone());
            want.into_data()
                .assert_approx_eq::<f32>(&float(dx).into_data(), tol);
        }
    }
}
