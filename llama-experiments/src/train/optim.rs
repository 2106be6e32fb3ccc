//! The paper's optimiser: AdamW with decoupled weight decay on weight matrices only, and gradient
//! clipping by the global norm over all parameters, as one multi-tensor step.
//!
//! Burn 0.21's `AdamW` has no parameter groups, clips each tensor by its own norm
//! (`GradientClippingConfig::Norm`), and updates one parameter at a time: ~15 kernels per
//! parameter (~1,700 for `125m`), each a few microseconds of GPU work behind tens of microseconds of
//! host dispatch, so the GPU idles through the optimiser (docs/performance.md, attempt 7). Here
//! each group's parameters and gradients are concatenated into one flat f32 vector, AdamW runs on
//! those (~10 kernels per group, as torch's `foreach` AdamW), and the parameters come back as
//! views of the updated vector. The update is torch's `AdamW` (bias-corrected moments,
//! `p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε)`) and the clipping `clip_grad_norm_`'s, without reading
//! anything back to the host.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

use super::config::OptimConfig;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;
type Flat<B> = Tensor<Inner<B>, 1>;

/// AdamW over two flat groups: weight matrices (decayed) and everything else.
pub struct LlamaOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    cfg: OptimConfig,
    no_decay_ids: HashSet<ParamId>,
    /// Steps taken (AdamW's `t`).
    time: usize,
    /// First and second moments per group (`[decay, no_decay]`), after the first step.
    moments: Option<[(Flat<B>, Flat<B>); 2]>,
    _module: std::marker::PhantomData<M>,
}

/// What [`LlamaOptimizer::save`] writes.
#[derive(Record)]
struct MomentsRecord<B: Backend> {
    time: usize,
    first: Vec<Tensor<B, 1>>,
    second: Vec<Tensor<B, 1>>,
}

/// Collects the ids of parameters that are not `Linear` weight matrices (norm scales, embeddings,
/// learned positions, biases).
struct Groups {
    containers: Vec<String>,
    no_decay: HashSet<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Groups {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let in_linear = self.containers.last().is_some_and(|c| c == "Struct:Linear");
        if !(D == 2 && in_linear) {
            self.no_decay.insert(param.id);
        }
    }
}

/// Flattens every float parameter and its gradient (zeros where a parameter got none) into its
/// group, in the module's visiting order.
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    no_decay: &'a HashSet<ParamId>,
    /// Per group (`[decay, no_decay]`): parameters, gradients.
    params: [Vec<Flat<B>>; 2],
    grads_out: [Vec<Flat<B>>; 2],
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val().inner();
        let n = value.shape().num_elements();
        let grad = match self.grads.remove::<Inner<B>, D>(param.id) {
            Some(g) => g.cast(DType::F32).reshape([n]),
            None => Tensor::zeros([n], &value.device()),
        };
        let g = usize::from(self.no_decay.contains(&param.id));
        self.params[g].push(value.cast(DType::F32).reshape([n]));
        self.grads_out[g].push(grad);
    }
}

/// Puts each parameter back as a view of its group's updated flat vector (same visiting order).
struct Unflatten<'a, B: AutodiffBackend> {
    no_decay: &'a HashSet<ParamId>,
    flat: [Tensor<Inner<B>, 1>; 2],
    offset: [usize; 2],
}

impl<B: AutodiffBackend> ModuleMapper<B> for Unflatten<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let requires_grad = tensor.is_require_grad();
        let g = usize::from(self.no_decay.contains(&id));
        let shape = tensor.shape();
        let n = shape.num_elements();
        let start = self.offset[g];
        self.offset[g] += n;
        let value = self.flat[g]
            .clone()
            .narrow(0, start, n)
            .reshape(shape)
            .cast(tensor.dtype());
        let mut tensor = Tensor::from_inner(value);
        if requires_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// `cat` of a group's pieces (an empty group is an empty vector).
fn cat<B: Backend>(parts: Vec<Tensor<B, 1>>, device: &B::Device) -> Tensor<B, 1> {
    if parts.is_empty() {
        Tensor::zeros([0], device)
    } else {
        Tensor::cat(parts, 0)
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> LlamaOptimizer<M, B> {
    pub fn new(cfg: &OptimConfig, model: &M) -> Self {
        let mut groups = Groups {
            containers: Vec::new(),
            no_decay: HashSet::new(),
        };
        model.visit(&mut groups);
        Self {
            cfg: cfg.clone(),
            no_decay_ids: groups.no_decay,
            time: 0,
            moments: None,
            _module: std::marker::PhantomData,
        }
    }

    /// Parameters that weight decay does not apply to.
    pub fn no_decay_count(&self) -> usize {
        self.no_decay_ids.len()
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
        let mut flat = Flatten::<B> {
            grads: &mut grads,
            no_decay: &self.no_decay_ids,
            params: Default::default(),
            grads_out: Default::default(),
        };
        model.visit(&mut flat);
        let params = flat.params.map(|p| cat(p, device));
        let grads = flat.grads_out.map(|g| {
            let g = cat(g, device);
            if grad_scale == 1.0 {
                g
            } else {
                g.mul_scalar(grad_scale)
            }
        });
        let squared = grads
            .iter()
            .map(|g| g.clone().square().sum())
            .reduce(|a, b| a + b)
            .expect("two groups");
        let norm = squared.sqrt();
        let grads = match clip {
            Some(max) => {
                let factor = norm
                    .clone()
                    .add_scalar(1e-6)
                    .recip()
                    .mul_scalar(max)
                    .clamp_max(1.0);
                grads.map(|g| g * factor.clone())
            }
            None => grads,
        };

        self.time += 1;
        let (b1, b2) = (self.cfg.beta1 as f64, self.cfg.beta2 as f64);
        let t = self.time as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        // Each group's old moments are consumed as its new ones are made, and every temporary
        // dies before the next group starts: with 1b's 4.4 GB vectors the optimiser's transient
        // memory is what decides the step's peak.
        let old = match self.moments.take() {
            Some([a, b]) => [Some(a), Some(b)],
            None => [None, None],
        };
        let mut updated = Vec::with_capacity(2);
        let mut next_moments = Vec::with_capacity(2);
        for (i, ((p, g), old)) in params.into_iter().zip(grads).zip(old).enumerate() {
            let (m, v) = match old {
                Some((m, v)) => (
                    m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1),
                    v.mul_scalar(b2) + g.square().mul_scalar(1.0 - b2),
                ),
                None => (
                    g.clone().mul_scalar(1.0 - b1),
                    g.square().mul_scalar(1.0 - b2),
                ),
            };
            // lr·m̂/(√v̂ + ε) = (lr/c1)·m / (√v/√c2 + ε)
            let denom = v
                .clone()
                .sqrt()
                .mul_scalar(1.0 / c2.sqrt())
                .add_scalar(self.cfg.eps as f64);
            let delta = m.clone().div(denom).mul_scalar(lr / c1);
            let decay = if i == 0 {
                lr * self.cfg.weight_decay as f64
            } else {
                0.0
            };
            let p = if decay == 0.0 {
                p
            } else {
                p.mul_scalar(1.0 - decay)
            };
            updated.push(p - delta);
            next_moments.push((m, v));
        }
        let mut next = next_moments.into_iter();
        self.moments = Some([next.next().expect("two"), next.next().expect("two")]);
        let mut upd = updated.into_iter();
        let mut back = Unflatten::<B> {
            no_decay: &self.no_decay_ids,
            flat: [upd.next().expect("two"), upd.next().expect("two")],
            offset: [0, 0],
        };
        (model.map(&mut back), norm)
    }

    /// Saves the step count and both groups' moments into the folder `path`.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let (first, second) = match &self.moments {
            Some(ms) => ms.iter().cloned().unzip(),
            None => (Vec::new(), Vec::new()),
        };
        let record = MomentsRecord::<Inner<B>> {
            time: self.time,
            first,
            second,
        };
        NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .record(record, path.join("optim-adamw"))?;
        Ok(())
    }

    /// Restores what [`save`](Self::save) wrote, checking it fits this model's groups.
    pub fn load(mut self, path: &std::path::Path, device: &B::Device) -> anyhow::Result<Self> {
        let record: MomentsRecord<Inner<B>> = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .load(path.join("optim-adamw"), device)?;
        self.time = record.time;
        self.moments = match (record.first.len(), record.second.len()) {
            (0, 0) => None,
            (2, 2) => {
                let mut m = record.first.into_iter();
                let mut v = record.second.into_iter();
                let mut pair = || (m.next().expect("two"), v.next().expect("two"));
                Some([pair(), pair()])
            }
            (a, b) => anyhow::bail!(
                "{}: optimiser state has {a}/{b} moment groups, expected 2",
                path.display()
            ),
        };
        Ok(self)
    }

    /// Checks loaded moments against the model's group sizes (a checkpoint of another model).
    pub fn check_fits(&self, model: &M) -> anyhow::Result<()> {
        let Some(ms) = &self.moments else {
            return Ok(());
        };
        let mut sizes = Sizes {
            no_decay: &self.no_decay_ids,
            n: [0, 0],
        };
        model.visit(&mut sizes);
        for (g, (m, v)) in ms.iter().enumerate() {
            let (lm, lv) = (m.dims()[0], v.dims()[0]);
            anyhow::ensure!(
                lm == sizes.n[g] && lv == sizes.n[g],
                "optimiser state does not fit this model: group {g} has {lm}/{lv} entries, the model {}",
                sizes.n[g]
            );
        }
        Ok(())
    }
}

/// Elements per group.
struct Sizes<'a> {
    no_decay: &'a HashSet<ParamId>,
    n: [usize; 2],
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Sizes<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let g = usize::from(self.no_decay.contains(&param.id));
        self.n[g] += param.lazy_shape().num_elements();
    }
}
