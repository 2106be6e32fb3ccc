//! Matrix products through a backend's own library routine.
//!
//! CubeCL 0.10's matmul (cubek-matmul 0.2) spent 322 of a `125m` training step's 466 ms of GPU
//! time on products cuBLAS runs in ~16 ms (docs/performance.md, "Where a CubeCL step goes"). A
//! backend with a faster routine registers it with [`register_native`]; [`matmul`] then runs it
//! for products whose batch dimensions agree (no broadcast): in inference directly, and in
//! training as one autodiff operation whose backward is the same routine's two products
//! (`dx = dy·wᵀ`, `dw = xᵀ·dy`, the transposes as views). Where nothing is registered, or the
//! routine declines its inputs, it is the backend's `matmul`.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};

use crate::dispatch::{ErasedNative, Registry};

/// `(x [.., m, k], w [.., k, n])` with equal batch dimensions → `x · w` `[.., m, n]` in their
/// (shared) dtype, or `None` to use `matmul` for these inputs.
pub type NativeProduct<B> = fn(FloatTensor<B>, FloatTensor<B>) -> Option<FloatTensor<B>>;

static REGISTRY: Registry<ErasedNative> = Registry::new();

/// `(x, w)` primitives of an `Autodiff<I>` → `x · w`, boxed (keyed by `Autodiff<I>`).
type ErasedAutodiff = fn(Box<dyn Any>) -> Box<dyn Any>;

static AUTODIFF: Registry<ErasedAutodiff> = Registry::new();

/// Makes [`matmul`] run `native` on backend `I` and, as one autodiff operation (no
/// checkpointing), on `Autodiff<I>`.
pub fn register_native<I: Backend>(native: NativeProduct<I>) {
    fn erased<I: Backend>(args: Box<dyn Any>) -> Box<dyn Any> {
        let (x, w) = *args
            .downcast::<(FloatTensor<Autodiff<I>>, FloatTensor<Autodiff<I>>)>()
            .expect("registered under this type's TypeId");
        Box::new(autodiff_product::<I>(x, w))
    }
    REGISTRY.insert(TypeId::of::<I>(), ErasedNative::new(native));
    AUTODIFF.insert(TypeId::of::<Autodiff<I>>(), erased::<I>);
}

/// Whether `B` (or the backend under `Autodiff`) has a registered product.
pub fn registered<B: Backend>() -> bool {
    AUTODIFF.get(TypeId::of::<B>()).is_some()
        || REGISTRY
            .native::<NativeProduct<B>>(TypeId::of::<B>())
            .is_some()
}

/// `x [.., m, k] · w [.., k, n]`.
pub fn matmul<B: Backend, const D: usize>(x: Tensor<B, D>, w: Tensor<B, D>) -> Tensor<B, D> {
    let (xd, wd) = (x.dims(), w.dims());
    if xd[..D - 2] != wd[..D - 2] || x.dtype() != w.dtype() {
        return x.matmul(w);
    }
    let prim = |t: Tensor<B, D>| t.into_primitive().tensor();
    if let Some(f) = AUTODIFF.get(TypeId::of::<B>()) {
        let y = *f(Box::new((prim(x), prim(w))))
            .downcast::<FloatTensor<B>>()
            .expect("the registered function returns the same backend's primitive");
        return Tensor::from_primitive(TensorPrimitive::Float(y));
    }
    match REGISTRY.native::<NativeProduct<B>>(TypeId::of::<B>()) {
        Some(f) => match f(prim(x.clone()), prim(w.clone())) {
            Some(y) => Tensor::from_primitive(TensorPrimitive::Float(y)),
            None => x.matmul(w),
        },
        None => x.matmul(w),
    }
}

/// `I`'s registered product of two primitives, or its `matmul` where it declines.
fn product<I: Backend>(x: FloatTensor<I>, w: FloatTensor<I>) -> FloatTensor<I> {
    match REGISTRY.native::<NativeProduct<I>>(TypeId::of::<I>()) {
        Some(f) => f(x.clone(), w.clone()).unwrap_or_else(|| I::float_matmul(x, w)),
        None => I::float_matmul(x, w),
    }
}

/// The last two dimensions swapped (a view on backends with strides).
fn transpose<I: Backend>(t: FloatTensor<I>) -> FloatTensor<I> {
    let rank = t.shape().num_dims();
    I::float_swap_dims(t, rank - 2, rank - 1)
}

#[derive(Debug)]
struct ProductBackward;

impl<B: Backend> Backward<B, 2> for ProductBackward {
    /// The forward's `x` and `w`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, w) = ops.state;
        if let Some(node) = node_w {
            grads.register::<B>(node.id, product::<B>(transpose::<B>(x), dy.clone()));
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, product::<B>(dy, transpose::<B>(w)));
        }
    }
}

fn autodiff_product<I: Backend>(
    x: FloatTensor<Autodiff<I>>,
    w: FloatTensor<Autodiff<I>>,
) -> FloatTensor<Autodiff<I>> {
    let (xp, wp) = (x.primitive.clone(), w.primitive.clone());
    match ProductBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = product::<I>(xp.clone(), wp.clone());
            prep.finish((xp, wp), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(product::<I>(xp, wp)),
    }
}
