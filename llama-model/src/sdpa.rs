//! Scaled dot-product attention for training, with a memory-efficient backward pass.
//!
//! Burn 0.21's `Autodiff` runs `attention` as its decomposition (matmul, softmax, matmul), so the
//! graph keeps `[batch, heads, T, T]` scores and probabilities (and, in bf16, their casts) of every
//! layer until the backward pass: O(T²) memory and many full passes over it. This module adds one
//! autodiff operation instead:
//!
//! - forward on the inner backend: its fused kernel where it has a good one (CubeCL's flash
//!   kernel, torch's SDPA), else the same decomposition one block of queries at a time; either way
//!   nothing of size T² outlives the call;
//! - saved for the backward pass: q, k, v and the output;
//! - backward (FlashAttention-2's, written with tensor ops): one block of queries at a time the
//!   probabilities are recomputed and dq, dk, dv accumulated, so the extra memory is
//!   `block × T` per head. Causal blocks only touch the keys they can see.
//!
//! Products run in the inputs' dtype (bf16 on tensor cores when the model computes in bf16);
//! scaling, masking, softmax and the dk/dv accumulators in f32, as in flash kernels.
//!
//! A backend whose library has its own differentiable attention (torch's SDPA with its flash
//! backward) can hand both passes over with [`register_native`]: the operation then saves what that
//! forward returns and calls its backward instead of the blocked one.
//!
//! Generic code only knows `B: Backend`, so backends opt in at run time (`crate::dispatch`):
//! [`register`]`::<Inner>()` records the operation for `Autodiff<Inner>` (and the forward pass for
//! `Inner`, inference) under their `TypeId`s, and [`try_attention`] hands back its inputs for any
//! backend that did not register.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, FloatTensor};
use burn::tensor::{Bool, DType, Tensor};

use crate::dispatch::{ErasedNative, Registry, float};
use crate::product;

/// How the forward pass runs on the inner backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionForward {
    /// The backend's own `attention` op in every dtype: for backends whose fused kernel keeps the
    /// softmax in f32 for bf16 inputs (torch SDPA).
    Fused,
    /// The backend's own op for f32 inputs, [`Blocked`](Self::Blocked) for lower precisions: for
    /// backends that may run Burn's decomposition, whose softmax is in the input dtype (CubeCL's
    /// attention autotune picks between its flash kernel and that decomposition).
    FusedF32,
    /// Matmul, f32 softmax, matmul, one block of queries at a time (any backend).
    Blocked,
}

/// The f32 probabilities of one block of queries (`batch × heads × block × t_k × 4` bytes) are
/// kept under this many bytes (blocks are still at least 64 queries: the matmul tiles' size).
pub const DEFAULT_BLOCK_BYTES: usize = 256 << 20;

/// A backend's own attention with its own backward pass, for [`register_native`].
pub struct NativeAttention<I: Backend> {
    /// `(q, k, v, causal)` → the output and what the backward pass needs, or `None` to use this
    /// module's forward and blocked backward for these inputs.
    pub forward: NativeForward<I>,
    /// What `forward` saved and the output's gradient → dq, dk, dv.
    pub backward: NativeBackward<I>,
    /// Whether `forward` takes k and v with fewer heads than q (grouped-query attention: query
    /// head `i` reads key/value head `i / (h / h_kv)`) and `backward` returns dk and dv in their
    /// shape. Otherwise they are expanded to q's heads before `forward` sees them.
    pub grouped: bool,
}

/// See [`NativeAttention::forward`].
pub type NativeForward<I> = fn(
    FloatTensor<I>,
    FloatTensor<I>,
    FloatTensor<I>,
    bool,
) -> Option<(FloatTensor<I>, Vec<FloatTensor<I>>)>;

/// See [`NativeAttention::backward`].
pub type NativeBackward<I> = fn(Vec<FloatTensor<I>>, FloatTensor<I>) -> [FloatTensor<I>; 3];

crate::dispatch::copy_native!(NativeAttention);

#[derive(Clone)]
struct Options {
    forward: AttentionForward,
    block_bytes: usize,
    /// The registering backend's `NativeAttention<I>`, if any.
    native: ErasedNative,
}

type Erased = fn(Box<dyn Any>, bool, Options) -> Box<dyn Any>;

static REGISTRY: Registry<(Erased, Options)> = Registry::new();

/// Makes `Autodiff<I>` (the default, no-checkpointing form) use this module's operation, and `I`
/// itself (inference) the same forward pass. Idempotent; the last registration wins.
pub fn register<I: Backend>(forward: AttentionForward) {
    register_with_block_bytes::<I>(forward, DEFAULT_BLOCK_BYTES);
}

/// [`register`] with another block budget (tests use a tiny one to get many blocks).
pub fn register_with_block_bytes<I: Backend>(forward: AttentionForward, block_bytes: usize) {
    register_all::<I>(forward, block_bytes, ErasedNative::default());
}

/// [`register`], with training going through the backend's own differentiable attention wherever
/// its `forward` accepts the inputs (`forward` still serves inference and the rest).
pub fn register_native<I: Backend>(forward: AttentionForward, native: NativeAttention<I>) {
    register_all::<I>(forward, DEFAULT_BLOCK_BYTES, ErasedNative::new(native));
}

fn register_all<I: Backend>(forward: AttentionForward, block_bytes: usize, native: ErasedNative) {
    fn train<I: Backend>(args: Box<dyn Any>, causal: bool, opts: Options) -> Box<dyn Any> {
        type T<I> = Tensor<Autodiff<I>, 4>;
        let (q, k, v) = *args
            .downcast::<(T<I>, T<I>, T<I>)>()
            .expect("registered under this type's TypeId");
        // Grouped heads stay as they are only for a native attention that reads them so; the
        // expansion is then part of the graph (its backward sums the copies' gradients).
        let grouped = (opts.native.get::<NativeAttention<I>>()).is_some_and(|n| n.grouped);
        let (k, v) = match grouped {
            true => (k, v),
            false => (expand_heads(k, &q), expand_heads(v, &q)),
        };
        Box::new(autodiff_attention::<I>(q, k, v, causal, opts))
    }
    fn infer<I: Backend>(args: Box<dyn Any>, causal: bool, opts: Options) -> Box<dyn Any> {
        type T<I> = Tensor<I, 4>;
        let (q, k, v) = *args
            .downcast::<(T<I>, T<I>, T<I>)>()
            .expect("registered under this type's TypeId");
        Box::new(self::forward(q, k, v, causal, &opts))
    }
    let opts = Options {
        forward,
        block_bytes,
        native,
    };
    REGISTRY.insert(TypeId::of::<Autodiff<I>>(), (train::<I>, opts.clone()));
    REGISTRY.insert(TypeId::of::<I>(), (infer::<I>, opts));
}

/// Attention over `[batch, heads, T, head_dim]` tensors through the registered operation, or the
/// inputs back when `B` has none. `causal` needs `t_q == t_k` (training). k and v may have fewer
/// heads than q, a divisor of them (grouped-query attention; [`expand_heads`] is the meaning).
#[allow(clippy::type_complexity)]
pub fn try_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    match REGISTRY.get(TypeId::of::<B>()) {
        Some((f, fwd)) => Ok(*f(Box::new((q, k, v)), causal, fwd)
            .downcast::<Tensor<B, 4>>()
            .expect("the registered function returns the same backend's tensor")),
        None => Err((q, k, v)),
    }
}

/// `x` `[b, h_kv, T, d]` with each head repeated to q's `h` heads, consecutively (head `i` of the
/// result is head `i / (h / h_kv)` of `x`): grouped-query attention as multi-head attention.
pub fn expand_heads<B: Backend>(x: Tensor<B, 4>, q: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, hkv, t, d] = x.dims();
    let h = q.dims()[1];
    if h == hkv {
        return x;
    }
    x.unsqueeze_dim::<5>(2)
        .expand([b, hkv, h / hkv, t, d])
        .reshape([b, h, t, d])
}

/// The gradient of [`expand_heads`]: `dx` `[b, h, T, d]` summed over each group of `h / h_kv`
/// heads to `[b, h_kv, T, d]`.
pub fn sum_heads<B: Backend>(dx: Tensor<B, 4>, hkv: usize) -> Tensor<B, 4> {
    let [b, h, t, d] = dx.dims();
    if h == hkv {
        return dx;
    }
    dx.reshape([b, hkv, h / hkv, t, d])
        .sum_dim(2)
        .reshape([b, hkv, t, d])
}

/// Queries per block: the f32 probabilities of one block (`batch × heads × block × t_k`) stay
/// under `budget` bytes, and a block is at least 64 queries (the matmul tiles' size) when T allows.
fn block_len(b: usize, h: usize, tq: usize, tk: usize, budget: usize) -> usize {
    let per_query = (b * h * tk * 4).max(1);
    let n = (budget / per_query).max(64) / 64 * 64;
    n.clamp(1, tq.max(1))
}

/// `softmax(q kᵀ / √d)` in f32 with the `hidden` scores filled with a large finite negative value
/// (so a fully hidden row, a left-pad query, stays finite). Shared with the model's bf16 inference
/// path (`attention::mixed_attention`).
pub(crate) fn masked_probabilities<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    hidden: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let hd = q.dims()[3];
    let scores =
        product::matmul(q, k.swap_dims(2, 3)).cast(DType::F32) * (1.0 / (hd as f64).sqrt());
    let scores = match hidden {
        Some(m) => scores.mask_fill(m, -1e30),
        None => scores,
    };
    softmax(scores, 3)
}

/// `[b, h, tq, tk]`, `true` for the keys after each query, query `r` sitting at key position
/// `offset + r` (`tk − tq` aligns bottom-right as Burn's reference; a block of queries starting at
/// `s` of a square matrix uses `s`).
pub(crate) fn future_keys<B: Backend>(
    [b, h, tq, tk]: [usize; 4],
    offset: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    Tensor::<B, 2, Bool>::tril_mask([tq, tk], offset as i64, device)
        .unsqueeze::<4>()
        .expand([b, h, tq, tk])
}

/// The f32 probabilities of queries `start..start + q.dims()[2]` against keys `0..k.dims()[2]`,
/// with future keys hidden when `causal` (query i sees keys `0..=i`).
fn probabilities<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    start: usize,
    causal: bool,
) -> Tensor<B, 4> {
    let [b, h, bq, _] = q.dims();
    let tk = k.dims()[2];
    let hidden = causal.then(|| future_keys([b, h, bq, tk], start, &q.device()));
    masked_probabilities(q, k, hidden)
}

/// The forward pass on any backend, one block of queries at a time.
fn blocked_forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
    block_bytes: usize,
) -> Tensor<B, 4> {
    let [b, h, tq, hd] = q.dims();
    let tk = k.dims()[2];
    let dtype = v.dtype();
    let (k, v) = (expand_heads(k, &q), expand_heads(v, &q));
    let n = block_len(b, h, tq, tk, block_bytes);
    let mut out = Vec::with_capacity(tq.div_ceil(n));
    for s in (0..tq).step_by(n) {
        let e = (s + n).min(tq);
        let ke = if causal { e } else { tk };
        let qb = q.clone().slice([0..b, 0..h, s..e, 0..hd]);
        let p = probabilities(qb, k.clone().slice([0..b, 0..h, 0..ke, 0..hd]), s, causal);
        out.push(product::matmul(
            p.cast(dtype),
            v.clone().slice([0..b, 0..h, 0..ke, 0..hd]),
        ));
    }
    Tensor::cat(out, 2)
}

fn forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
    opts: &Options,
) -> Tensor<B, 4> {
    let fused = match opts.forward {
        AttentionForward::Fused => true,
        AttentionForward::FusedF32 => q.dtype() == DType::F32,
        AttentionForward::Blocked => false,
    };
    match fused {
        true => {
            let options = AttentionModuleOptions {
                is_causal: causal,
                ..Default::default()
            };
            let (k, v) = (expand_heads(k, &q), expand_heads(v, &q));
            attention(q, k, v, None, None, options)
        }
        false => blocked_forward(q, k, v, causal, opts.block_bytes),
    }
}

/// dq, dk, dv of `o = softmax(q kᵀ/√d) v` given `dout`, recomputing the probabilities blockwise.
fn backward_blocks<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    o: Tensor<B, 4>,
    dout: Tensor<B, 4>,
    causal: bool,
    block_bytes: usize,
) -> [Tensor<B, 4>; 3] {
    let [b, h, tq, hd] = q.dims();
    let [_, hkv, tk, _] = k.dims();
    let dtype = q.dtype();
    let scale = 1.0 / (hd as f64).sqrt();
    let (k, v) = (expand_heads(k, &q), expand_heads(v, &q));
    let dout = dout.cast(dtype);
    // D_i = Σ_j dO_ij O_ij = Σ_j P_ij dP_ij: the softmax backward's row term, from the output.
    let rows = (dout.clone().cast(DType::F32) * o.cast(DType::F32)).sum_dim(3);
    let device = q.device();
    let mut dk = Tensor::<B, 4>::zeros([b, h, tk, hd], &device);
    let mut dv = Tensor::<B, 4>::zeros([b, h, tk, hd], &device);
    let n = block_len(b, h, tq, tk, block_bytes);
    let mut dq = Vec::with_capacity(tq.div_ceil(n));
    for s in (0..tq).step_by(n) {
        let e = (s + n).min(tq);
        let ke = if causal { e } else { tk };
        let keys = [0..b, 0..h, 0..ke, 0..hd];
        let qb = q.clone().slice([0..b, 0..h, s..e, 0..hd]);
        let (kb, vb) = (k.clone().slice(keys.clone()), v.clone().slice(keys.clone()));
        let dob = dout.clone().slice([0..b, 0..h, s..e, 0..hd]);
        let p = probabilities(qb.clone(), kb.clone(), s, causal);
        let dvb = product::matmul(p.clone().cast(dtype).swap_dims(2, 3), dob.clone());
        let dp = product::matmul(dob, vb.swap_dims(2, 3)).cast(DType::F32);
        let drow = rows.clone().slice([0..b, 0..h, s..e, 0..1]);
        let ds = (p * (dp - drow) * scale).cast(dtype);
        dq.push(product::matmul(ds.clone(), kb));
        let dkb = product::matmul(ds.swap_dims(2, 3), qb);
        if ke == tk {
            dk = dk + dkb.cast(DType::F32);
            dv = dv + dvb.cast(DType::F32);
        } else {
            let add = |acc: Tensor<B, 4>, x: Tensor<B, 4>| {
                let part = acc.clone().slice(keys.clone()) + x.cast(DType::F32);
                acc.slice_assign(keys.clone(), part)
            };
            dk = add(dk, dkb);
            dv = add(dv, dvb);
        }
    }
    let sum = |x: Tensor<B, 4>| sum_heads(x, hkv).cast(dtype);
    [Tensor::cat(dq, 2), sum(dk), sum(dv)]
}

#[derive(Debug)]
struct AttentionBackward;

/// What the forward pass keeps for the backward pass.
#[derive(Debug, Clone)]
enum Saved<B: Backend> {
    /// q, k, v, the output, causal and the block budget: for [`backward_blocks`].
    Blocked([FloatTensor<B>; 4], bool, usize),
    /// What a native forward returned, and its backward.
    Native(Vec<FloatTensor<B>>, NativeBackward<B>),
}

impl<B: Backend> Backward<B, 3> for AttentionBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let dout = grads.consume::<B>(&ops.node);
        let [dq, dk, dv] = match ops.state {
            Saved::Blocked([q, k, v, o], causal, block_bytes) => {
                let (q, k, v, o) = (float(q), float(k), float(v), float(o));
                backward_blocks::<B>(q, k, v, o, float(dout), causal, block_bytes)
                    .map(|t| t.into_primitive().tensor())
            }
            Saved::Native(saved, backward) => backward(saved, dout),
        };
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

fn autodiff_attention<I: Backend>(
    q: Tensor<Autodiff<I>, 4>,
    k: Tensor<Autodiff<I>, 4>,
    v: Tensor<Autodiff<I>, 4>,
    causal: bool,
    opts: Options,
) -> Tensor<Autodiff<I>, 4> {
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let run = |q: &FloatTensor<I>, k: &FloatTensor<I>, v: &FloatTensor<I>| -> FloatTensor<I> {
        forward::<I>(
            float(q.clone()),
            float(k.clone()),
            float(v.clone()),
            causal,
            &opts,
        )
        .into_primitive()
        .tensor()
    };
    let native = opts.native.get::<NativeAttention<I>>();
    let prep = AttentionBackward
        .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([
            q.node.clone(),
            k.node.clone(),
            v.node.clone(),
        ])
        .compute_bound()
        .stateful();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            let (qp, kp, vp) = (q.primitive, k.primitive, v.primitive);
            let by_native = native.and_then(|n| {
                (n.forward)(qp.clone(), kp.clone(), vp.clone(), causal)
                    .map(|(o, saved)| (o, Saved::Native(saved, n.backward)))
            });
            let (o, state) = by_native.unwrap_or_else(|| {
                let o = run(&qp, &kp, &vp);
                let state = Saved::Blocked([qp, kp, vp, o.clone()], causal, opts.block_bytes);
                (o, state)
            });
            prep.finish(state, o)
        }
        OpsKind::UnTracked(prep) => prep.finish(run(&q.primitive, &k.primitive, &v.primitive)),
    };
    float(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_long_sequences_within_the_budget() {
        let budget = DEFAULT_BLOCK_BYTES;
        assert_eq!(block_len(1, 1, 10, 10, budget), 10);
        let n = block_len(8, 12, 2048, 2048, budget);
        assert!(n >= 64 && n.is_multiple_of(64) && n <= 2048, "{n}");
        assert!(8 * 12 * n * 2048 * 4 <= budget);
        // Even a huge batch (or a tiny budget) gets 64-query blocks, never zero.
        assert_eq!(block_len(1024, 64, 4096, 4096, budget), 64);
        assert_eq!(block_len(1, 1, 300, 300, 1), 64);
    }
}
