//! The AdamW update on Flex: one pass over each parameter, the moments updated in place.
//!
//! The tensor-op form (`train::adamw::AdamwStep::decomposed`) makes about a dozen passes over a
//! bucket after concatenating its parameters and gradients; on Flex that was ~11 % of a `tiny`
//! step. Here the bucket is updated part by part where its parameters lie (no concatenation),
//! the new moments are written beside the old ones in the same pass, and the arithmetic is the
//! tensor-op form's, operation for operation.

use std::any::{Any, TypeId};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{CHUNK, buffer, dense, elems, tensor};
use crate::train::optim::{AdamwOutput, AdamwParts, AdamwPartsOutput, AdamwScalars, AdamwStep};

/// Whether `I` is Flex, whose buckets this module updates by parts.
pub fn updates_parts<I: Backend>() -> bool {
    TypeId::of::<I>() == TypeId::of::<Flex>()
}

/// A bucket's update by parts, or the step back (another backend, or a dtype other than f32).
pub fn try_update_parts<I: Backend>(
    step: AdamwParts<I>,
) -> Result<AdamwPartsOutput<I>, AdamwParts<I>> {
    let boxed: Box<dyn Any> = Box::new(step);
    let step = match boxed.downcast::<AdamwParts<Flex>>() {
        Ok(step) => *step,
        Err(boxed) => return Err(*boxed.downcast::<AdamwParts<I>>().expect("its own type")),
    };
    let out: Box<dyn Any> = match update(&step) {
        Some(out) => Box::new((out, None::<Tensor<Flex, 1>>)),
        None => Box::new(step),
    };
    match out.downcast::<AdamwPartsOutput<I>>() {
        Ok(out) => Ok(*out),
        Err(step) => Err(*step.downcast::<AdamwParts<I>>().expect("I is Flex here")),
    }
}

/// A concatenated bucket's update (one part), or the step back.
pub fn try_update<I: Backend>(step: AdamwStep<I>) -> Result<AdamwOutput<I>, AdamwStep<I>> {
    try_update_parts(step.into_one_part())
        .map(|(out, _)| out)
        .map_err(AdamwParts::into_one_step)
}

fn prim(t: &Tensor<Flex, 1>) -> FlexTensor {
    t.clone().into_primitive().tensor()
}

fn float(t: FlexTensor) -> Tensor<Flex, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// A moment's elements to rewrite (a copy: the step still holds the old tensor), zeros before the
/// first step.
fn moment(t: Option<&Tensor<Flex, 1>>, len: usize) -> Option<Vec<f32>> {
    match t {
        None => Some(buffer(len)),
        Some(t) => {
            let t = dense(&prim(t))?;
            (t.layout().num_elements() == len).then(|| elems(&t).to_vec())
        }
    }
}

/// New parameters and moments, or `None` if a tensor is not f32 or the parts do not tile the
/// bucket.
fn update(step: &AdamwParts<Flex>) -> Option<AdamwOutput<Flex>> {
    let mut parts: Vec<(usize, FlexTensor, FlexTensor)> = Vec::new();
    for (offset, p, g) in &step.parts {
        let (p, g) = (dense(&prim(p))?, dense(&prim(g))?);
        if p.layout().num_elements() != g.layout().num_elements() {
            return None;
        }
        parts.push((*offset, p, g));
    }
    parts.sort_by_key(|(offset, _, _)| *offset);
    let mut next = 0;
    for (offset, p, _) in &parts {
        if *offset != next {
            return None;
        }
        next += p.layout().num_elements();
    }
    if next != step.len {
        return None;
    }
    let factor = match &step.grad_factor {
        Some(f) => *elems(&dense(&prim(f))?).first()?,
        None => 1.0,
    };
    let (mut m, mut v) = (
        moment(step.moments.as_ref().map(|(m, _)| m), step.len)?,
        moment(step.moments.as_ref().map(|(_, v)| v), step.len)?,
    );
    let mut out = buffer(step.len);
    let (mut o, mut mr, mut vr) = (&mut out[..], &mut m[..], &mut v[..]);
    for (_, p, g) in &parts {
        let n = p.layout().num_elements();
        let (o1, o2) = std::mem::take(&mut o).split_at_mut(n);
        let (m1, m2) = std::mem::take(&mut mr).split_at_mut(n);
        let (v1, v2) = std::mem::take(&mut vr).split_at_mut(n);
        (o, mr, vr) = (o2, m2, v2);
        o1.par_chunks_mut(CHUNK)
            .zip(m1.par_chunks_mut(CHUNK).zip(v1.par_chunks_mut(CHUNK)))
            .zip(elems(p).par_chunks(CHUNK).zip(elems(g).par_chunks(CHUNK)))
            .for_each(|((o, (m, v)), (p, g))| step_chunk(o, m, v, p, g, factor, &step.scalars));
    }
    let t = |x: Vec<f32>| float(tensor(x, [step.len]));
    Some((t(out), t(m), t(v)))
}

/// AdamW on one chunk, as `AdamwStep::decomposed` computes it. Before the first step the
/// moments are zeros, for which `0·β + x` is `x` exactly: the same bits as its first-step form.
#[allow(clippy::too_many_arguments)]
fn step_chunk(
    out: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    p: &[f32],
    g: &[f32],
    factor: f32,
    s: &AdamwScalars,
) {
    let (b1, b2) = (s.beta1 as f32, s.beta2 as f32);
    let (inv_c2, eps, step, keep) = (
        (1.0 / s.c2.sqrt()) as f32,
        s.eps as f32,
        (s.lr / s.c1) as f32,
        (1.0 - s.decay) as f32,
    );
    for ((((o, m), v), &p), &g) in out.iter_mut().zip(m).zip(v).zip(p).zip(g) {
        let g = g * factor;
        (*m, *v) = (*m * b1 + g * (1.0 - b1), *v * b2 + g * g * (1.0 - b2));
        let delta = *m / (v.sqrt() * inv_c2 + eps) * step;
        *o = match s.decay != 0.0 {
            true => p * keep - delta,
            false => p - delta,
        };
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Distribution};

    use super::*;

    fn rand(n: usize) -> Tensor<Flex, 1> {
        Tensor::random([n], Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// Two steps of a three-part bucket (given out of order), with decay and a clipping factor,
    /// against the tensor-op form on the concatenated bucket.
    #[test]
    fn matches_the_tensor_op_update_by_parts() {
        let scalars = |t: i32| AdamwScalars {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            lr: 3e-3,
            decay: 3e-4,
            c1: 1.0 - 0.9f64.powi(t),
            c2: 1.0 - 0.95f64.powi(t),
        };
        let sizes = [5usize, 40_000, 3];
        let params: Vec<_> = sizes.iter().map(|&n| rand(n)).collect();
        let mut moments = None;
        let mut want_moments = None;
        let mut flat = Tensor::cat(params.clone(), 0);
        let mut current = params;
        for t in 1..=2 {
            let grads: Vec<_> = sizes.iter().map(|&n| rand(n)).collect();
            let factor = Tensor::<Flex, 1>::from_floats([0.5], &Default::default());
            let want = AdamwStep {
                param: flat.clone(),
                grad: Tensor::cat(grads.clone(), 0),
                grad_factor: Some(factor.clone()),
                moments: want_moments.take(),
                scalars: scalars(t),
            }
            .decomposed();
            let mut offsets = vec![0, 5, 40_005];
            let mut parts: Vec<_> = current.into_iter().zip(grads).collect();
            parts.reverse();
            offsets.reverse();
            let step = AdamwParts {
                len: 40_008,
                parts: offsets
                    .into_iter()
                    .zip(parts)
                    .map(|(o, (p, g))| (o, p, g))
                    .collect(),
                grad_factor: Some(factor),
                moments: moments.take(),
                scalars: scalars(t),
            };
            let ((p, m, v), copy) = try_update_parts(step).ok().expect("Flex, f32");
            assert!(copy.is_none());
            let tol = burn::tensor::Tolerance::<f32>::rel_abs(1e-5, 1e-7);
            for (a, b) in [(&want.0, &p), (&want.1, &m), (&want.2, &v)] {
                a.clone()
                    .into_data()
                    .assert_approx_eq::<f32>(&b.clone().into_data(), tol);
            }
            flat = p.clone();
            current = vec![
                p.clone().narrow(0, 0, 5),
                p.clone().narrow(0, 5, 40_000),
                p.narrow(0, 40_005, 3),
            ];
            moments = Some((m, v));
            want_moments = Some((want.1, want.2));
        }
    }

    #[test]
    fn hands_back_other_dtypes() {
        let p = rand(4);
        let step = AdamwStep {
            param: p.clone(),
            grad: p.cast(DType::BF16),
            grad_factor: None,
            moments: None,
            scalars: AdamwScalars {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                lr: 1e-3,
                decay: 0.0,
                c1: 0.1,
                c2: 0.05,
            },
        };
        assert!(try_update(step).is_err());
    }
}
