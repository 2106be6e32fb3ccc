//! Matrix products through a backend's own library routine.
//!
//! CubeCL 0.10's matmul (cubek-matmul 0.2) spent 322 of a `125m` training step's 466 ms of GPU
//! time on products cuBLAS runs in ~16 ms (docs/performance.md, "Where a CubeCL step goes"). A
//! backend with a faster routine registers it with [`register_native`]; [`matmul`] then runs it
//! for products whose batch dimensions agree (no broadcast): in inference directly, and in
//! training as one autodiff operation whose backward is the same routine's two products
//! (`dx = dy·wᵀ`, `dw = xᵀ·dy`, the transposes as views). Where nothing is registered, or the
//! routine declines its inputs, it is the backend's `matmul`.
//!
//! Products that share their input (attention's q, k and v; the gate and up projections) each
//! hand back a `dx`, which Burn's autodiff sums in a separate kernel per extra product. A backend
//! that can add a product into an existing matrix (cuBLAS's `β = 1`) registers that with
//! [`register_accumulate`]: the backward then takes the input's gradient so far out of the
//! gradients and has the routine add `dy·wᵀ` into it.

use std::any::{Any, TypeId};
use std::sync::Arc;

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

/// `(c [.., m, n], x [.., m, k], w [.., k, n])` → `c + x · w` in their (shared) dtype. `c` is
/// consumed, so the routine may write the sum into its memory; it is only called with a `c` of
/// the product's shape and dtype.
pub type NativeAccumulate<B> = fn(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>;

static ACCUMULATE: Registry<ErasedNative> = Registry::new();

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

/// Makes the backward of [`matmul`] on `Autodiff<I>` add its input gradient into the one that
/// other products of the same input registered before it, with `native`, instead of Burn's
/// separate sum. Only where [`register_native`] registered a product for `I` too.
pub fn register_accumulate<I: Backend>(native: NativeAccumulate<I>) {
    ACCUMULATE.insert(TypeId::of::<I>(), ErasedNative::new(native));
}

fn accumulates<I: Backend>() -> bool {
    ACCUMULATE
        .native::<NativeAccumulate<I>>(TypeId::of::<I>())
        .is_some()
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

/// `c + x · w`: in one routine where `I` registered one and `c` has the product's shape and
/// dtype; otherwise the product, then the sum Burn's gradients would have made.
fn accumulate<I: Backend>(
    c: FloatTensor<I>,
    x: FloatTensor<I>,
    w: FloatTensor<I>,
) -> FloatTensor<I> {
    let mut dims = x.shape().to_vec();
    let (rank, ws) = (dims.len(), w.shape());
    dims[rank - 1] = ws[ws.num_dims() - 1];
    if c.shape().to_vec() == dims
        && c.dtype() == x.dtype()
        && let Some(f) = ACCUMULATE.native::<NativeAccumulate<I>>(TypeId::of::<I>())
    {
        return f(c, x, w);
    }
    I::float_add(product::<I>(x, w), c)
}

/// The last two dimensions swapped (a view on backends with strides).
fn transpose<I: Backend>(t: FloatTensor<I>) -> FloatTensor<I> {
    let rank = t.shape().num_dims();
    I::float_swap_dims(t, rank - 2, rank - 1)
}

#[derive(Debug)]
struct ProductBackward;

impl<B: Backend> Backward<B, 2> for ProductBackward {
    /// The forward's `x` and `w`, and where `B` accumulates, `x` as the key of its gradient.
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        Option<FloatTensor<Autodiff<B>>>,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, w, key) = ops.state;
        // x's gradient from the products of the same input that ran their backward first, taken
        // out (and the key dropped) before anything else holds it, so that only this operation
        // does and the routine may add into its memory.
        let prev = key.and_then(|key| grads.remove::<B>(&key));
        if let Some(node) = node_w {
            grads.register::<B>(node.id, product::<B>(transpose::<B>(x), dy.clone()));
        }
        if let Some(node) = node_x {
            let wt = transpose::<B>(w);
            let dx = match prev {
                Some(c) => accumulate::<B>(c, dy, wt),
                None => product::<B>(dy, wt),
            };
            grads.register::<B>(node.id, dx);
        }
    }
}

fn autodiff_product<I: Backend>(
    x: FloatTensor<Autodiff<I>>,
    w: FloatTensor<Autodiff<I>>,
) -> FloatTensor<Autodiff<I>> {
    let (xp, wp) = (x.primitive.clone(), w.primitive.clone());
    // Only x's node id is read from the key; a fresh count keeps Burn's graph clean-up from
    // taking the key for a live reference to x.
    let key = accumulates::<I>().then(|| {
        let mut key = x.clone();
        key.rc = Arc::new(key.node.id);
        key
    });
    match ProductBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = product::<I>(xp.clone(), wp.clone());
            prep.finish((xp, wp, key), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(product::<I>(xp, wp)),
    }
}
