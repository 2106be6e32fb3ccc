//! The token embedding's lookup as one autodiff operation whose weight gradient a backend can
//! compute with its own kernel.
//!
//! Burn's backward of `embedding` scatters the output's gradient into a zero `[vocab, dim]` tensor
//! with `select_assign`. CubeCL's kernel for it runs one thread per column, each walking every
//! token in turn: `dim` threads for `batch·time` serial steps, 6.4 ms of a `125m` step on an H200
//! (docs/performance.md, attempt 52) for what is one pass over the gradient. A backend with a
//! scatter-add kernel registers it with [`register_native`]; the forward pass is Burn's lookup
//! either way. Unregistered (every backend but CubeCL's CUDA), [`embedding`] is Burn's
//! `embedding`, backward included.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Shape, Tensor, TensorMetadata, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// A backend's own kernel for the weight gradient, for [`register_native`].
pub struct NativeEmbedding<I: Backend> {
    /// `(dy [n, dim], token ids [n], vocab)` → the weight's gradient `[vocab, dim]` (rows of `dy`
    /// summed at their ids), or `None` to use Burn's `embedding_backward` for these inputs.
    pub backward: NativeEmbeddingBackward<I>,
}

/// See [`NativeEmbedding::backward`].
pub type NativeEmbeddingBackward<I> =
    fn(FloatTensor<I>, IntTensor<I>, usize) -> Option<FloatTensor<I>>;

crate::dispatch::copy_native!(NativeEmbedding);

type Erased = fn(Box<dyn Any>, &ErasedNative) -> Box<dyn Any>;

/// The operation and the registering backend's `NativeEmbedding<I>`.
static REGISTRY: Registry<(Erased, ErasedNative)> = Registry::new();

/// Makes `Autodiff<I>` (no checkpointing) compute [`embedding`]'s weight gradient with `native`.
pub fn register_native<I: Backend>(native: NativeEmbedding<I>) {
    fn erased<I: Backend>(args: Box<dyn Any>, native: &ErasedNative) -> Box<dyn Any> {
        let (w, tokens) = *args
            .downcast::<(Tensor<Autodiff<I>, 2>, Tensor<Autodiff<I>, 2, Int>)>()
            .expect("registered under this type's TypeId");
        let native = native.get().expect("registered with its native form");
        Box::new(autodiff_embedding::<I>(w, tokens, native))
    }
    REGISTRY.insert(
        TypeId::of::<Autodiff<I>>(),
        (erased::<I>, ErasedNative::new(native)),
    );
}

/// Whether `B` computes [`embedding`]'s weight gradient with a backend's own kernel.
pub fn is_registered<B: Backend>() -> bool {
    REGISTRY.get(TypeId::of::<B>()).is_some()
}

/// Rows of `weight [vocab, dim]` at `tokens [batch, time]`: `[batch, time, dim]`, as
/// `burn::tensor::module::embedding` (and `burn::nn::Embedding`) computes them.
pub fn embedding<B: Backend>(weight: Tensor<B, 2>, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    match REGISTRY.get(TypeId::of::<B>()) {
        Some((f, native)) => *f(Box::new((weight, tokens)), &native)
            .downcast::<Tensor<B, 3>>()
            .expect("the registered function returns the same backend's tensor"),
        None => burn::tensor::module::embedding(weight, tokens),
    }
}

#[derive(Debug)]
struct EmbeddingBackward;

/// The weight (for Burn's backward, which takes its shape, device and dtype from it), the token
/// ids and the native backward.
type Saved<B> = (FloatTensor<B>, IntTensor<B>, NativeEmbeddingBackward<B>);

impl<B: Backend> Backward<B, 1> for EmbeddingBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let Some(node) = node else { return };
        let (w, tokens, native) = ops.state;
        let [vocab, dim] = w.shape().dims();
        let [batch, time] = tokens.shape().dims();
        let n = batch * time;
        let flat_dy = B::float_reshape(dy.clone(), Shape::new([n, dim]));
        let flat_ids = B::int_reshape(tokens.clone(), Shape::new([n]));
        let dw = native(flat_dy, flat_ids, vocab)
            .unwrap_or_else(|| B::embedding_backward(w, dy, tokens));
        grads.register::<B>(node.id, dw);
    }
}

fn autodiff_embedding<I: Backend>(
    w: Tensor<Autodiff<I>, 2>,
    tokens: Tensor<Autodiff<I>, 2, Int>,
    native: NativeEmbedding<I>,
) -> Tensor<Autodiff<I>, 3> {
    let w = w.into_primitive().tensor();
    let ids: IntTensor<I> = tokens.into_primitive();
    let y = I::embedding(w.primitive.clone(), ids.clone());
    let prep = EmbeddingBackward
        .prepare::<NoCheckpointing>([w.node.clone()])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish((w.primitive.clone(), ids, native.backward), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, IndexingUpdateOp, TensorData, Tolerance};

    type I = NdArray;
    type B = Autodiff<I>;

    /// A "native" scatter-add in tensor ops: per token, its row of `dy` added into row `id`.
    fn by_rows(dy: FloatTensor<I>, ids: IntTensor<I>, vocab: usize) -> Option<FloatTensor<I>> {
        let dy: Tensor<I, 2> = Tensor::from_primitive(TensorPrimitive::Float(dy));
        let ids: Tensor<I, 1, Int> = Tensor::from_primitive(ids);
        let [_, dim] = dy.dims();
        let zeros = Tensor::<I, 2>::zeros([vocab, dim], &dy.device());
        Some(
            zeros
                .select_assign(0, ids, dy, IndexingUpdateOp::Add)
                .into_primitive()
                .tensor(),
        )
    }

    #[test]
    fn the_native_weight_gradient_matches_burns() {
        let device = Default::default();
        let weight = Tensor::<I, 2>::random([11, 6], Distribution::Normal(0.0, 1.0), &device);
        // Repeated ids (3 and 7 twice) must sum their rows.
        let ids = TensorData::new(vec![3i64, 7, 0, 3, 10, 7], [2, 3]);
        let dy = Tensor::<I, 3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device);
        let run = |native: bool| {
            let w = Tensor::<B, 2>::from_inner(weight.clone()).require_grad();
            let tokens = Tensor::<B, 2, Int>::from_data(ids.clone(), &device);
            let y = if native {
                autodiff_embedding::<I>(w.clone(), tokens, NativeEmbedding { backward: by_rows })
            } else {
                burn::tensor::module::embedding(w.clone(), tokens)
            };
            let grads = (y.clone() * Tensor::<B, 3>::from_inner(dy.clone()))
                .sum()
                .backward();
            (y.inner(), w.grad(&grads).expect("the weight's gradient"))
        };
        let (y0, g0) = run(false);
        let (y1, g1) = run(true);
        y1.into_data().assert_eq(&y0.into_data(), true);
        g1.into_data()
            .assert_approx_eq::<f32>(&g0.into_data(), Tolerance::default());
    }

    #[test]
    fn unregistered_it_is_burns_embedding() {
        let device = Default::default();
        let weight = Tensor::<I, 2>::random([5, 4], Distribution::Default, &device);
        let tokens =
            Tensor::<I, 2, Int>::from_data(TensorData::new(vec![4i64, 1], [1, 2]), &device);
        let y = embedding(weight.clone(), tokens.clone());
        y.into_data().assert_eq(
            &burn::tensor::module::embedding(weight, tokens).into_data(),
            true,
        );
    }
}
