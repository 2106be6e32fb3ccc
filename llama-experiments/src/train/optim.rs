//! The paper's optimiser: AdamW with decoupled weight decay on weight matrices only, and gradient
//! clipping by the global norm over all parameters, as a multi-tensor step.
//!
//! Burn 0.21's `AdamW` has no parameter groups, clips each tensor by its own norm
//! (`GradientClippingConfig::Norm`), and updates one parameter at a time: ~15 kernels per
//! parameter (~1,700 for `125m`), each a few microseconds of GPU work behind tens of microseconds of
//! host dispatch, so the GPU idles through the optimiser (docs/performance.md, attempt 7). Here the
//! parameters of each decay group are packed, in the module's order, into buckets of up to
//! [`BUCKET_ELEMS`] elements; a bucket's parameters and gradients are concatenated into flat f32
//! vectors, AdamW runs on those (~10 kernels per bucket in tensor ops, as torch's `foreach`
//! AdamW; eight with torch's kernels on libtorch, one fused kernel on CUDA, the clipping factor
//! folded in), and the parameters come back as views of the bucket's updated vector. Where the
//! fused kernel runs, a bucket of large parameters is not concatenated at all: the kernel runs once
//! per parameter, reading it and its gradient (bf16 under `llama_model::weight_cast`) where they lie
//! and writing into its range of the bucket's new vectors ([`AdamwParts`]). Buckets,
//! rather than one vector per group, bound the step's extra memory to a bucket's temporaries (one flat copy of a 1b
//! model is 4.4 GB). The update is torch's `AdamW` (bias-corrected moments,
//! `p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε)`) and the clipping `clip_grad_norm_`'s, without reading
//! anything back to the host.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

pub use super::adamw::{
    AdamwOutput, AdamwParts, AdamwPartsOutput, AdamwScalars, AdamwStep, widened,
};
use super::adamw::{
    backend_parts_min_mean, backend_update, backend_update_parts, cat, sum_squares, sum_squares_all,
};
use super::config::OptimConfig;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;
type Flat<B> = Tensor<Inner<B>, 1>;

/// Largest bucket, in elements (128 MiB of f32): large enough that a `125m` step is a handful of
/// buckets, small enough that their temporaries are noise next to the model.
pub const BUCKET_ELEMS: usize = 32 << 20;

/// Where a parameter lives: its bucket and its range there.
#[derive(Debug, Clone, Copy)]
struct Slot {
    bucket: usize,
    offset: usize,
    len: usize,
}

/// A bucket: its decay group (weight matrices or not) and its length.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    decayed: bool,
    len: usize,
}

/// AdamW over buckets of parameters, weight matrices decayed and everything else not.
pub struct LlamaOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    cfg: OptimConfig,
    slots: HashMap<ParamId, Slot>,
    buckets: Vec<Bucket>,
    no_decay_count: usize,
    /// Whether a backend's own update kernels may run (else the tensor-op form everywhere).
    native_update: bool,
    /// Whether that may be the fused kernel (CUDA).
    fused_update: bool,
    /// Least mean parameter size of a bucket updated parameter by parameter, where set
    /// ([`Self::with_parts_min_mean`], `LLAMA_ADAMW=fused`); else the backend's.
    parts_min_mean: Option<usize>,
    /// Steps taken (AdamW's `t`).
    time: usize,
    /// First and second moments per bucket, after the first step.
    moments: Vec<Option<(Flat<B>, Flat<B>)>>,
    _module: std::marker::PhantomData<M>,
}

/// What [`LlamaOptimizer::save`] writes.
#[derive(Record)]
struct MomentsRecord<B: Backend> {
    time: usize,
    first: Vec<Tensor<B, 1>>,
    second: Vec<Tensor<B, 1>>,
}

/// Lists the trained float parameters in the module's order with their size and whether weight decay
/// applies: to `Linear` weight matrices only (not norm scales, embeddings, learned positions or
/// biases).
struct Layout {
    containers: Vec<String>,
    params: Vec<(ParamId, usize, bool)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Layout {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // Frozen parameters get no slot: the step leaves them as they are (no decay either).
        if !param.is_require_grad() {
            return;
        }
        let in_linear = self.containers.last().is_some_and(|c| c == "Struct:Linear");
        let n = param.lazy_shape().num_elements();
        self.params.push((param.id, n, D == 2 && in_linear));
    }
}

/// Collects each bucket's parameter values (handles, not copies) and flattened gradients (zeros
/// where a parameter got none), in bucket order.
struct Gather<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    slots: &'a HashMap<ParamId, Slot>,
    params: Vec<Vec<(usize, Flat<B>)>>,
    grads_out: Vec<Vec<(usize, Flat<B>)>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(slot) = self.slots.get(&param.id) else {
            return;
        };
        let value = param.val().inner();
        let n = slot.len;
        // In the dtype the backward pass left it (bf16 for a projection under
        // `llama_model::weight_cast`): an update by parameter reads it so, a concatenated bucket
        // is widened to f32.
        let grad = match self.grads.remove::<Inner<B>, D>(param.id) {
            Some(g) => g.reshape([n]),
            None => Tensor::zeros([n], &value.device()),
        };
        let value = value.cast(DType::F32).reshape([n]);
        self.params[slot.bucket].push((slot.offset, value));
        self.grads_out[slot.bucket].push((slot.offset, grad));
    }
}

/// `grads` with every gradient in f32: a gradient left in the compute dtype
/// (`llama_model::weight_cast`) must be widened before gradients of several micro-batches are
/// summed, or the sum would round to bf16.
pub fn grads_to_f32<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
) -> GradientsParams {
    struct Widen<'a>(&'a mut GradientsParams);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Widen<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.0.remove::<Inner<B>, D>(param.id) {
                self.0.register::<Inner<B>, D>(param.id, widened(g));
            }
        }
    }
    model.visit(&mut Widen(&mut grads));
    grads
}

/// The update of one bucket and the parameters as views of it, computed when the mapper reaches
/// the bucket's first parameter, so that each bucket's old values are released before the next.
struct Update<'a, 'b, B: AutodiffBackend> {
    opt: &'a mut Step<'b, B>,
    slots: &'a HashMap<ParamId, Slot>,
}

/// Everything one step needs per bucket.
struct Step<'a, B: AutodiffBackend> {
    params: Vec<Vec<(usize, Flat<B>)>>,
    grads: Vec<Option<BucketGrad<B>>>,
    moments: Vec<Option<(Flat<B>, Flat<B>)>>,
    updated: Vec<Option<Flat<B>>>,
    /// The updated values in the compute dtype, where the update wrote them
    /// (`llama_model::weight_cast::keep_copy`).
    copies: Vec<Option<Flat<B>>>,
    buckets: &'a [Bucket],
    lr: f64,
    cfg: &'a OptimConfig,
    time: usize,
    /// Whether a backend's own update kernels may run (`LLAMA_ADAMW`), and a fused one.
    native: bool,
    fused: bool,
    /// The clipping factor every gradient is multiplied by, on the device.
    grad_factor: Option<Flat<B>>,
    /// The factor of the buckets updated parameter by parameter: their gradients were not
    /// multiplied by `grad_scale` (no pass of their own), so it is folded in here.
    parts_factor: Option<Flat<B>>,
}

/// A bucket's gradient: concatenated, or the parameters' own gradients `(offset, flat)` for a
/// backend that updates each parameter where it lies ([`AdamwParts`]).
enum BucketGrad<B: AutodiffBackend> {
    Flat(Flat<B>),
    Parts(Vec<(usize, Flat<B>)>),
}

impl<B: AutodiffBackend> Step<'_, B> {
    /// AdamW on bucket `k`: new moments into `moments[k]`, new values into `updated[k]`.
    fn run(&mut self, k: usize) {
        let (b1, b2) = (self.cfg.beta1 as f64, self.cfg.beta2 as f64);
        let t = self.time as i32;
        let scalars = AdamwScalars {
            beta1: b1,
            beta2: b2,
            eps: self.cfg.eps as f64,
            lr: self.lr,
            decay: match self.buckets[k].decayed {
                true => self.lr * self.cfg.weight_decay as f64,
                false => 0.0,
            },
            c1: 1.0 - b1.powi(t),
            c2: 1.0 - b2.powi(t),
        };
        let params = std::mem::take(&mut self.params[k]);
        let moments = self.moments[k].take();
        let grad_factor = self.grad_factor.clone();
        let (p, m, v) = match self.grads[k].take().expect("each bucket is updated once") {
            BucketGrad::Flat(grad) => self.update(AdamwStep {
                param: cat(params),
                grad,
                grad_factor,
                moments,
                scalars,
            }),
            BucketGrad::Parts(grads) => {
                let grad_factor = self.parts_factor.clone();
                // Gathered by one visit: the same parameters in the same order.
                let parts = params
                    .into_iter()
                    .zip(grads)
                    .map(|((offset, p), (_, g))| (offset, p, g))
                    .collect();
                let step = AdamwParts {
                    len: self.buckets[k].len,
                    parts,
                    grad_factor,
                    moments,
                    scalars,
                };
                match backend_update_parts(step) {
                    Ok((out, copy)) => {
                        self.copies[k] = copy;
                        out
                    }
                    Err(step) => self.update(step.concatenated()),
                }
            }
        };
        self.updated[k] = Some(p);
        self.moments[k] = Some((m, v));
    }

    /// One concatenated bucket's update: the backend's kernels where allowed, else tensor ops.
    fn update(&self, step: AdamwStep<Inner<B>>) -> AdamwOutput<Inner<B>> {
        let by_backend = match self.native {
            true => backend_update(step, self.fused),
            false => Err(step),
        };
        by_backend.unwrap_or_else(AdamwStep::decomposed)
    }
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, '_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(slot) = self.slots.get(&param.id).copied() else {
            return param;
        };
        if self.opt.updated[slot.bucket].is_none() {
            self.opt.run(slot.bucket);
        }
        let (id, tensor, mapper) = param.consume();
        let requires_grad = tensor.is_require_grad();
        let value = self.opt.updated[slot.bucket]
            .as_ref()
            .expect("just updated")
            .clone()
            .narrow(0, slot.offset, slot.len)
            .reshape(tensor.shape())
            .cast(tensor.dtype());
        if let Some(copy) = &self.opt.copies[slot.bucket] {
            llama_model::weight_cast::keep_copy(&value, copy, slot.offset);
        }
        let mut tensor = Tensor::from_inner(value);
        if requires_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> LlamaOptimizer<M, B> {
    /// Buckets of [`BUCKET_ELEMS`], or of `LLAMA_OPTIM_BUCKET_ELEMS` when set (for comparisons;
    /// a huge value gives one bucket per decay group). A value that is not a positive integer is
    /// an error, not silently the default.
    pub fn new(cfg: &OptimConfig, model: &M) -> anyhow::Result<Self> {
        let elems = match std::env::var("LLAMA_OPTIM_BUCKET_ELEMS") {
            Err(_) => BUCKET_ELEMS,
            Ok(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "LLAMA_OPTIM_BUCKET_ELEMS must be a positive number of elements, not `{v}`"
                    )
                })?,
        };
        // `fused`: the fused kernel over concatenated buckets only (before the update by parts).
        let choice = crate::op_registry::env_choice(
            "LLAMA_ADAMW",
            &["auto", "fused", "torch", "decomposed"],
        )?;
        let mut opt =
            Self::with_bucket_elems(cfg, model, elems).with_native_update(choice != "decomposed");
        opt.fused_update = matches!(choice, "auto" | "fused");
        if choice == "fused" {
            opt.parts_min_mean = Some(usize::MAX);
        }
        Ok(opt)
    }

    /// Whether a backend's own AdamW kernels may run where it has them (libtorch:
    /// `libtorch_adamw`, on CUDA the fused kernel; default) or the tensor-op form everywhere
    /// (`LLAMA_ADAMW=decomposed`). `LLAMA_ADAMW=torch` keeps torch's kernels on CUDA too.
    pub fn with_native_update(mut self, native: bool) -> Self {
        self.native_update = native;
        self
    }

    /// Buckets whose parameters average at least `elems` elements are updated parameter by
    /// parameter where the backend can ([`AdamwParts`]; tests use 1 to reach it with tiny ones).
    pub fn with_parts_min_mean(mut self, elems: usize) -> Self {
        self.parts_min_mean = Some(elems);
        self
    }

    /// [`new`](Self::new) with another bucket size (tests use tiny ones).
    pub fn with_bucket_elems(cfg: &OptimConfig, model: &M, bucket_elems: usize) -> Self {
        let mut layout = Layout {
            containers: Vec::new(),
            params: Vec::new(),
        };
        model.visit(&mut layout);
        let mut slots = HashMap::new();
        let mut buckets: Vec<Bucket> = Vec::new();
        for decayed in [true, false] {
            let mut open: Option<usize> = None;
            for &(id, n, _) in layout.params.iter().filter(|p| p.2 == decayed) {
                let k = match open {
                    Some(k) if buckets[k].len + n <= bucket_elems => k,
                    _ => {
                        buckets.push(Bucket { decayed, len: 0 });
                        buckets.len() - 1
                    }
                };
                open = Some(k);
                slots.insert(
                    id,
                    Slot {
                        bucket: k,
                        offset: buckets[k].len,
                        len: n,
                    },
                );
                buckets[k].len += n;
            }
        }
        Self {
            cfg: cfg.clone(),
            no_decay_count: layout.params.iter().filter(|p| !p.2).count(),
            moments: vec![None; buckets.len()],
            slots,
            buckets,
            time: 0,
            native_update: true,
            fused_update: true,
            parts_min_mean: None,
            _module: std::marker::PhantomData,
        }
    }

    /// Parameters that weight decay does not apply to.
    pub fn no_decay_count(&self) -> usize {
        self.no_decay_count
    }

    /// One AdamW step. The gradients are first multiplied by `grad_scale` (1/accumulation
    /// steps), then clipped to a global norm of `clip` (torch's factor `min(1, clip / (norm +
    /// 1e-6))`). Returns the updated model and the global norm before clipping, on the device.
    pub fn step(
        &mut self,
        lr: f64,
        model: M,
        mut grads: GradientsParams,
        grad_scale: f64,
        clip: Option<f64>,
        device: &B::Device,
    ) -> (M, Tensor<Inner<B>, 1>) {
        // The copies of the last update round the values this one replaces.
        llama_model::weight_cast::clear_copies::<Inner<B>>();
        let n = self.buckets.len();
        let mut gather = Gather::<B> {
            grads: &mut grads,
            slots: &self.slots,
            params: (0..n).map(|_| Vec::new()).collect(),
            grads_out: (0..n).map(|_| Vec::new()).collect(),
        };
        model.visit(&mut gather);
        let (params, parts) = (gather.params, gather.grads_out);
        // Large parameters stay where they are when the backend can update them there; their
        // gradients are left unscaled (the update multiplies by `grad_scale` with the clipping).
        let min_mean = match self.native_update && self.fused_update {
            true => {
                backend_parts_min_mean::<Inner<B>>(device).map(|m| self.parts_min_mean.unwrap_or(m))
            }
            false => None,
        };
        let grads: Vec<BucketGrad<B>> = (parts.into_iter().zip(&self.buckets))
            .map(|(g, bucket)| {
                match min_mean.is_some_and(|m| bucket.len >= m.saturating_mul(g.len())) {
                    true => BucketGrad::Parts(g),
                    false => BucketGrad::Flat(match grad_scale == 1.0 {
                        true => cat(g),
                        false => cat(g).mul_scalar(grad_scale),
                    }),
                }
            })
            .collect();
        let scaled = |t: Flat<B>| match grad_scale == 1.0 {
            true => t,
            false => t.mul_scalar(grad_scale * grad_scale),
        };
        // One reduction over the concatenated buckets' gradients and one over the others' (a
        // `cat` of a partial sum per bucket cost a launch per bucket on CubeCL).
        let (mut flat, mut by_parameter) = (Vec::new(), Vec::new());
        for g in &grads {
            match g {
                BucketGrad::Flat(g) => flat.push(g.clone()),
                BucketGrad::Parts(g) => by_parameter.extend(g.iter().map(|(_, g)| g.clone())),
            }
        }
        let mut squares: Vec<Flat<B>> = Vec::new();
        match flat.len() {
            0 => {}
            1 => squares.push(sum_squares(flat.remove(0))),
            _ => squares.push(sum_squares_all(flat)),
        }
        if !by_parameter.is_empty() {
            squares.push(scaled(sum_squares_all(by_parameter)));
        }
        let norm = match squares.len() {
            0 => Tensor::zeros([1], device),
            1 => squares.remove(0),
            _ => Tensor::cat(squares, 0).sum(),
        }
        .sqrt();
        // Applied by the update itself (one pass over each gradient fewer).
        let grad_factor = clip.map(|max| {
            norm.clone()
                .add_scalar(1e-6)
                .recip()
                .mul_scalar(max)
                .clamp_max(1.0)
        });
        let parts_factor = match (&grad_factor, grad_scale == 1.0) {
            (f, true) => f.clone(),
            (Some(f), false) => Some(f.clone().mul_scalar(grad_scale)),
            (None, false) => Some(Tensor::full([1], grad_scale, device)),
        };
        self.time += 1;
        let mut step = Step::<B> {
            params,
            grads: grads.into_iter().map(Some).collect(),
            moments: std::mem::take(&mut self.moments),
            updated: vec![None; n],
            copies: vec![None; n],
            buckets: &self.buckets,
            lr,
            cfg: &self.cfg,
            time: self.time,
            native: self.native_update,
            fused: self.fused_update,
            grad_factor,
            parts_factor,
        };
        let model = model.map(&mut Update {
            opt: &mut step,
            slots: &self.slots,
        });
        self.moments = step.moments;
        (model, norm)
    }

    /// Saves the step count and every bucket's moments into the folder `path`.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let (first, second) = self.moments.iter().flatten().cloned().unzip();
        let record = MomentsRecord::<Inner<B>> {
            time: self.time,
            first,
            second,
        };
        NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .record(record, path.join("optim-adamw"))?;
        Ok(())
    }

    /// Restores what [`save`](Self::save) wrote, checking it fits this model's buckets.
    pub fn load(mut self, path: &std::path::Path, device: &B::Device) -> anyhow::Result<Self> {
        let record: MomentsRecord<Inner<B>> = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .load(path.join("optim-adamw"), device)?;
        let saved = record.first.len();
        if saved == 0 {
            self.time = record.time;
            return Ok(self);
        }
        let fits = saved == self.buckets.len()
            && record.second.len() == saved
            && (record.first.iter().zip(&record.second).zip(&self.buckets))
                .all(|((m, v), b)| m.dims()[0] == b.len && v.dims()[0] == b.len);
        anyhow::ensure!(
            fits,
            "{}: the optimiser state does not fit this model ({saved} moment buckets, the model has {})",
            path.display(),
            self.buckets.len()
        );
        self.time = record.time;
        self.moments = record
            .first
            .into_iter()
            .zip(record.second)
            .map(Some)
            .collect();
        Ok(self)
    }
}
