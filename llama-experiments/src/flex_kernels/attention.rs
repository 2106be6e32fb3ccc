//! Attention on Flex: [`llama_model::sdpa`]'s native passes, one (batch, head) at a time.
//!
//! Forward `S = QKᵀ/√d` (the `gemm` crate's kernels, which Flex's own products call), the
//! causal softmax per row with its log-sum-exp kept, `O = PV`; backward recomputes `P` from the
//! log-sum-exps and takes `dV = PᵀdO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))/√d`,
//! `dQ = dS K`, `dK = dSᵀQ`, accumulating a grouped key/value head's gradients over its query
//! heads in one task. Every operand is read through its strides and the outputs are written
//! time-major (`[batch, time, heads, dim]` in memory, viewed as `[batch, heads, time, dim]`), the
//! layout the projections on either side use, so no pass copies a tensor. The model's blocked
//! backward did the same products through Flex's batched matmul, with its row terms, mask and
//! sums as broadcast element-wise operations, which Flex runs through its strided iterator.

use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_flex::{Flex, FlexTensor};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::exp::{exp, exp_shifted, vectorised};
use super::{buffer, max_of, sum_of, tensor};

/// A 4-D f32 operand: its storage from the first element and its strides (elements).
struct View {
    t: FlexTensor,
    shape: [usize; 4],
    st: [isize; 4],
}

impl View {
    /// `t` as it is where its strides are non-negative (else a contiguous copy); `None` unless
    /// f32 of rank 4.
    fn of(t: &FlexTensor) -> Option<View> {
        let shape: [usize; 4] = t.layout().shape().to_vec().try_into().ok()?;
        if t.dtype() != DType::F32 {
            return None;
        }
        let t = match t.layout().has_positive_strides() {
            true => t.clone(),
            false => t.to_contiguous(),
        };
        let st: [isize; 4] = t.layout().strides().try_into().ok()?;
        Some(View { t, shape, st })
    }

    /// The matrix of `(batch, head)`: its first element, then (row, column) strides.
    fn at(&self, b: usize, h: usize) -> (*const f32, isize, isize) {
        let data = self.t.storage::<f32>();
        let off = self.t.layout().start_offset() as isize
            + b as isize * self.st[0]
            + h as isize * self.st[1];
        (data[off as usize..].as_ptr(), self.st[2], self.st[3])
    }
}

/// An output buffer written by several tasks at disjoint places.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each task writes only the rows of its own (batch, head) or key/value head.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `[batch, heads, time, dim]` in a time-major buffer: `(batch, head)`'s first element and row
/// stride.
fn time_major(out: Out, heads: usize, time: usize, dim: usize, b: usize, h: usize) -> (Out, isize) {
    // SAFETY: inside the buffer of batch · time · heads · dim elements.
    let p = unsafe { out.0.add((b * time * heads + h) * dim) };
    (Out(p), (heads * dim) as isize)
}

/// A time-major buffer as its `[batch, heads, time, dim]` view.
fn viewed(v: Vec<f32>, [b, h, t, d]: [usize; 4]) -> FlexTensor {
    tensor(v, [b, t, h, d]).transpose(1, 2)
}

/// `dst (m × n) = β · lhs (m × k) · rhs (k × n) [+ dst]`, strides (row, column) each, one thread.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    // SAFETY: the callers' pointers and strides address matrices inside their tensors.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Row `i`'s visible keys: all, or (causal) those up to its position.
fn visible(i: usize, tk: usize, causal: bool) -> usize {
    if causal { i + 1 } else { tk }
}

/// `(q [b, h, tq, d], k, v [b, h_kv, tk, d], causal)` → the output and `[q, k, v, o, lse,
/// causal]`; `None` for other dtypes or shapes (causal needs `tq = tk`).
pub fn forward(
    q: FloatTensor<Flex>,
    k: FloatTensor<Flex>,
    v: FloatTensor<Flex>,
    causal: bool,
) -> Option<(FloatTensor<Flex>, Vec<FloatTensor<Flex>>)> {
    let (q, k, v) = (View::of(&q)?, View::of(&k)?, View::of(&v)?);
    let [b, h, tq, d] = q.shape;
    let [_, hkv, tk, _] = k.shape;
    let fits = k.shape == v.shape
        && k.shape[0] == b
        && k.shape[3] == d
        && hkv > 0
        && h % hkv == 0
        && (!causal || tq == tk)
        && b * h * tq * tk * d > 0;
    if !fits {
        return None;
    }
    let rep = h / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let mut o = buffer(b * h * tq * d);
    let mut lse = buffer(b * h * tq);
    let out = Out(o.as_mut_ptr());
    lse.par_chunks_mut(tq).enumerate().for_each(|(bh, lse)| {
        let (bi, hi) = (bh / h, bh % h);
        let mut s = buffer(tq * tk);
        let (sp, ld) = (s.as_mut_ptr(), tk as isize);
        let kv = hi / rep;
        product(
            (tq, tk, d),
            (sp, ld, 1),
            false,
            q.at(bi, hi),
            transposed(k.at(bi, kv)),
            scale,
        );
        for (i, (row, lse)) in s.chunks_mut(tk).zip(lse).enumerate() {
            let n = visible(i, tk, causal);
            let (m, sum) = vectorised(|| {
                let m = max_of(&row[..n]);
                row[..n].iter_mut().for_each(|x| *x = exp(*x - m));
                let sum = sum_of(&row[..n], |e| e);
                row[..n].iter_mut().for_each(|x| *x /= sum);
                (m, sum)
            });
            row[n..].fill(0.0);
            *lse = m + sum.ln();
        }
        let (op, ld_o) = time_major(out, h, tq, d, bi, hi);
        let p = (s.as_ptr(), tk as isize, 1);
        product((tq, d, tk), (op.0, ld_o, 1), false, p, v.at(bi, kv), 1.0);
    });
    let o = viewed(o, [b, h, tq, d]);
    let flag = tensor(vec![if causal { 1.0 } else { 0.0 }], [1]);
    let saved = vec![q.t, k.t, v.t, o.clone(), tensor(lse, [b, h, tq]), flag];
    Some((o, saved))
}

/// A matrix's transpose: the same elements, strides exchanged.
fn transposed((p, rs, cs): (*const f32, isize, isize)) -> (*const f32, isize, isize) {
    (p, cs, rs)
}

/// What [`forward`] saved and `dO` → `[dq, dk, dv]` (dk and dv with the key/value heads).
pub fn backward(saved: Vec<FloatTensor<Flex>>, dout: FloatTensor<Flex>) -> [FloatTensor<Flex>; 3] {
    let [q, k, v, o, lse, flag]: [FlexTensor; 6] =
        saved.try_into().expect("forward saves six tensors");
    let view = |t: &FlexTensor| View::of(t).expect("forward checked f32 of rank 4");
    let (q, k, v, o) = (view(&q), view(&k), view(&v), view(&o));
    let dout = View::of(&dout).expect("the output's gradient is f32 like the output");
    let causal = flag.to_contiguous().as_slice::<f32>().expect("f32")[0] != 0.0;
    let lse = lse.to_contiguous();
    let lse = lse.as_slice::<f32>().expect("f32");
    let [b, h, tq, d] = q.shape;
    let [_, hkv, tk, _] = k.shape;
    let rep = h / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (
        buffer(b * h * tq * d),
        buffer(b * hkv * tk * d),
        buffer(b * hkv * tk * d),
    );
    let (dq_out, dk_out, dv_out) = (
        Out(dq.as_mut_ptr()),
        Out(dk.as_mut_ptr()),
        Out(dv.as_mut_ptr()),
    );
    (0..b * hkv).into_par_iter().for_each(|bg| {
        let (bi, g) = (bg / hkv, bg % hkv);
        let (mut p, mut ds) = (buffer(tq * tk), buffer(tq * tk));
        let mut rows = buffer(tq);
        let (dkp, ld_kv) = time_major(dk_out, hkv, tk, d, bi, g);
        let (dvp, _) = time_major(dv_out, hkv, tk, d, bi, g);
        for r in 0..rep {
            let hi = g * rep + r;
            let (qm, km, vm, dom) = (q.at(bi, hi), k.at(bi, g), v.at(bi, g), dout.at(bi, hi));
            let lse = &lse[(bi * h + hi) * tq..][..tq];
            // P from the saved log-sum-exps; D_i = Σ dO_i ⊙ O_i.
            let ld = tk as isize;
            product(
                (tq, tk, d),
                (p.as_mut_ptr(), ld, 1),
                false,
                qm,
                transposed(km),
                scale,
            );
            for (i, (row, &l)) in p.chunks_mut(tk).zip(lse).enumerate() {
                let n = visible(i, tk, causal);
                exp_shifted(&mut row[..n], l);
                row[n..].fill(0.0);
            }
            let (op, ors, ocs) = o.at(bi, hi);
            for (i, d_i) in rows.iter_mut().enumerate() {
                // SAFETY: row i of two [tq, d] matrices inside their tensors.
                *d_i = (0..d as isize)
                    .map(|c| unsafe {
                        *dom.0.offset(i as isize * dom.1 + c * dom.2)
                            * *op.offset(i as isize * ors + c * ocs)
                    })
                    .sum();
            }
            let pm = (p.as_ptr(), ld, 1);
            product(
                (tk, d, tq),
                (dvp.0, ld_kv, 1),
                r > 0,
                transposed(pm),
                dom,
                1.0,
            );
            product(
                (tq, tk, d),
                (ds.as_mut_ptr(), ld, 1),
                false,
                dom,
                transposed(vm),
                1.0,
            );
            for ((ds, p), &d_i) in ds.chunks_mut(tk).zip(p.chunks(tk)).zip(rows.iter()) {
                for (x, &p) in ds.iter_mut().zip(p) {
                    *x = p * (*x - d_i) * scale;
                }
            }
            let dsm = (ds.as_ptr(), ld, 1);
            let (dqp, ld_q) = time_major(dq_out, h, tq, d, bi, hi);
            product((tq, d, tk), (dqp.0, ld_q, 1), false, dsm, km, 1.0);
            product(
                (tk, d, tq),
                (dkp.0, ld_kv, 1),
                r > 0,
                transposed(dsm),
                qm,
                1.0,
            );
        }
    });
    [
        viewed(dq, [b, h, tq, d]),
        viewed(dk, [b, hkv, tk, d]),
        viewed(dv, [b, hkv, tk, d]),
    ]
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::softmax;
    use burn::tensor::{Bool, Distribution, Tensor, TensorPrimitive};

    use super::*;

    type A = burn::backend::Autodiff<Flex>;

    fn float(t: FlexTensor) -> Tensor<Flex, 4> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    /// Softmax attention in tensor ops under autodiff (key/value heads repeated for their query
    /// heads), with the loss `Σ O ⊙ W`, against the kernels: causal or not, grouped heads,
    /// inputs viewed time-major as the projections give them.
    #[test]
    fn matches_tensor_op_attention_in_both_passes() {
        let dev = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let (b, h, hkv, t, d) = (2, 4, 2, 7, 8);
        let tm = |heads| Tensor::<Flex, 4>::random([b, t, heads, d], n, &dev).swap_dims(1, 2);
        for causal in [true, false] {
            let (q, k, v, w) = (tm(h), tm(hkv), tm(hkv), tm(h));
            let [qa, ka, va] =
                [&q, &k, &v].map(|x| Tensor::<A, 4>::from_inner(x.clone()).require_grad());
            let rep = |x: Tensor<A, 4>| {
                let [b, g, t, d] = x.dims();
                x.unsqueeze_dim::<5>(2)
                    .repeat_dim(2, h / g)
                    .reshape([b, h, t, d])
            };
            let s = qa.clone().matmul(rep(ka.clone()).swap_dims(2, 3)) / (d as f64).sqrt();
            let s = match causal {
                true => {
                    let mask = Tensor::<A, 2, Bool>::tril_mask([t, t], 0, &dev);
                    s.mask_fill(mask.unsqueeze::<4>(), f32::NEG_INFINITY)
                }
                false => s,
            };
            let o0 = softmax(s, 3).matmul(rep(va.clone()));
            let grads = (o0.clone() * Tensor::from_inner(w.clone()))
                .sum()
                .backward();

            let p = |x: &Tensor<Flex, 4>| x.clone().into_primitive().tensor();
            let (o1, saved) = forward(p(&q), p(&k), p(&v), causal).unwrap();
            let [dq, dk, dv] = backward(saved, p(&w));
            let tol = burn::tensor::Tolerance::<f32>::rel_abs(1e-4, 1e-5);
            let check = |a: Tensor<Flex, 4>, b: FlexTensor| {
                a.into_data()
                    .assert_approx_eq::<f32>(&float(b).into_data(), tol)
            };
            check(o0.inner(), o1);
            check(qa.grad(&grads).unwrap(), dq);
            check(ka.grad(&grads).unwrap(), dk);
            check(va.grad(&grads).unwrap(), dv);
        }
    }

    #[test]
    fn declines_what_it_does_not_compute() {
        let z = |s: [usize; 4]| tensor(vec![0.0; s.iter().product()], s);
        // Causal with fewer queries than keys; heads not a multiple of the key/value heads.
        assert!(forward(z([1, 2, 3, 4]), z([1, 2, 5, 4]), z([1, 2, 5, 4]), true).is_none());
        assert!(forward(z([1, 3, 3, 4]), z([1, 2, 3, 4]), z([1, 2, 3, 4]), false).is_none());
    }
}
