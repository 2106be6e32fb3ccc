//! SwiGLU's gate on Flex: [`llama_model::swiglu`]'s native passes, element by element.
//!
//! Forward `silu(a) ⊙ b`; backward `db = g ⊙ silu(a)`, `da = g ⊙ b ⊙ σ(a) ⊙ (1 + a ⊙ (1 − σ(a)))`,
//! one pass each over contiguous f32 (Flex's tensor-op form is four, and nine backward). Other
//! dtypes or shapes take the model's tensor-op form.

use burn::tensor::activation::silu;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::exp::{sigmoid, vectorised};
use super::{CHUNK, buffer, dense, elems, tensor};

fn float(t: FlexTensor) -> Tensor<Flex, 3> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim(t: Tensor<Flex, 3>) -> FlexTensor {
    t.into_primitive().tensor()
}

/// Both f32, of one rank-3 shape: their dense forms.
fn pair(a: &FlexTensor, b: &FlexTensor) -> Option<(FlexTensor, FlexTensor)> {
    let same = a.layout().shape() == b.layout().shape() && a.layout().num_dims() == 3;
    same.then(|| Some((dense(a)?, dense(b)?))).flatten()
}

/// `(a, b)` → `silu(a) ⊙ b`.
pub fn forward(a: FloatTensor<Flex>, b: FloatTensor<Flex>) -> FloatTensor<Flex> {
    let Some((ad, bd)) = pair(&a, &b) else {
        return prim(silu(float(a)) * float(b));
    };
    let shape = ad.layout().shape().clone();
    let (av, bv) = (elems(&ad), elems(&bd));
    let mut y = buffer(av.len());
    y.par_chunks_mut(CHUNK)
        .zip(av.par_chunks(CHUNK).zip(bv.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            vectorised(|| {
                for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                    *y = a * sigmoid(a) * b;
                }
            })
        });
    tensor(y, shape)
}

/// `(a, b, g)` → `(da, db)`.
pub fn backward(
    a: FloatTensor<Flex>,
    b: FloatTensor<Flex>,
    g: FloatTensor<Flex>,
) -> (FloatTensor<Flex>, FloatTensor<Flex>) {
    let dense_all = pair(&a, &b).and_then(|(a, b)| {
        let g = dense(&g).filter(|g| g.layout().shape() == a.layout().shape())?;
        Some((a, b, g))
    });
    let Some((ad, bd, gd)) = dense_all else {
        let (da, db) = llama_model::swiglu::closed_form_backward(float(a), float(b), float(g));
        return (prim(da), prim(db));
    };
    let shape = ad.layout().shape().clone();
    let (av, bv, gv) = (elems(&ad), elems(&bd), elems(&gd));
    let (mut da, mut db) = (buffer(av.len()), buffer(av.len()));
    da.par_chunks_mut(CHUNK)
        .zip(db.par_chunks_mut(CHUNK))
        .zip(av.par_chunks(CHUNK).zip(bv.par_chunks(CHUNK)))
        .zip(gv.par_chunks(CHUNK))
        .for_each(|(((da, db), (a, b)), g)| {
            vectorised(|| {
                for ((((da, db), &a), &b), &g) in da.iter_mut().zip(db).zip(a).zip(b).zip(g) {
                    let s = sigmoid(a);
                    *db = g * a * s;
                    *da = g * b * s * (1.0 + a * (1.0 - s));
                }
            })
        });
    (tensor(da, shape.clone()), tensor(db, shape))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    type A = burn::backend::Autodiff<Flex>;

    /// `Σ w ⊙ silu(a) ⊙ b` in tensor ops under autodiff against the kernels.
    #[test]
    fn matches_the_tensor_op_gate_in_both_passes() {
        let dev = Default::default();
        let n = Distribution::Normal(0.0, 3.0);
        let [a, b, w] = [0; 3].map(|_| Tensor::<Flex, 3>::random([2, 7, 33], n, &dev));
        let aa = Tensor::<A, 3>::from_inner(a.clone()).require_grad();
        let ba = Tensor::<A, 3>::from_inner(b.clone()).require_grad();
        let y0 = silu(aa.clone()) * ba.clone();
        let grads = (y0.clone() * Tensor::from_inner(w.clone()))
            .sum()
            .backward();
        let y1 = forward(prim(a.clone()), prim(b.clone()));
        let (da, db) = backward(prim(a), prim(b), prim(w));
        let tol = burn::tensor::Tolerance::<f32>::rel_abs(1e-5, 1e-6);
        let check = |x: Tensor<Flex, 3>, y: FlexTensor| {
            x.into_data()
                .assert_approx_eq::<f32>(&float(y).into_data(), tol)
        };
        check(y0.inner(), y1);
        check(aa.grad(&grads).unwrap(), da);
        check(ba.grad(&grads).unwrap(), db);
    }
}
