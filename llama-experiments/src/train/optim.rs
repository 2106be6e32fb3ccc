//! The paper's optimiser around Burn's AdamW: decoupled weight decay on weight matrices only, and
//! gradient clipping by the global norm over all parameters.
//!
//! Burn 0.21 has no parameter groups and clips each tensor by its own norm
//! (`GradientClippingConfig::Norm`), so this module splits the gradients between two AdamW
//! adaptors (decay 0.1 and 0) and rescales them itself.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::config::OptimConfig;

type Adaptor<M, B> = OptimizerAdaptor<AdamW, M, B>;

/// Two AdamW adaptors: one for weight matrices (decayed), one for everything else.
pub struct LlamaOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    decay: Adaptor<M, B>,
    no_decay: Adaptor<M, B>,
    no_decay_ids: HashSet<ParamId>,
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

/// Moves the gradients of `ids` from one `GradientsParams` to another, or scales all of them.
struct GradVisitor<'a> {
    from: &'a mut GradientsParams,
    to: Option<(&'a mut GradientsParams, &'a HashSet<ParamId>)>,
    scale: Option<f64>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((to, ids)) = &mut self.to {
            if ids.contains(&param.id)
                && let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id)
            {
                to.register(param.id, g);
            }
        } else if let Some(s) = self.scale
            && let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id)
        {
            self.from.register(param.id, g.mul_scalar(s));
        }
    }
}

/// Sum of squared gradient entries over all parameters.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.cast(burn::tensor::DType::F32).powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(s) => s + sq,
                None => sq,
            });
        }
    }
}

/// The global L2 norm of `grads`, on the device (`[1]`; zero without gradients).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let mut v = SquaredNorm::<B> { grads, sum: None };
    model.visit(&mut v);
    v.sum.unwrap_or_else(|| Tensor::zeros([1], device)).sqrt()
}

/// Multiplies every gradient by `scale`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    scale: f64,
) {
    let mut v = GradVisitor {
        from: grads,
        to: None,
        scale: Some(scale),
    };
    model.visit(&mut v);
}

/// Multiplies every gradient by a one-element device tensor.
struct ScaleBy<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: Tensor<B::InnerBackend, 1>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleBy<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let factor = self.factor.clone().cast(g.dtype()).reshape([1; D]);
            self.grads.register(param.id, g * factor);
        }
    }
}

/// Clips the global norm of `grads` to `max` as `torch.nn.utils.clip_grad_norm_` does (every
/// gradient times `min(1, max / (norm + 1e-6))`) without reading the norm back: the factor stays
/// on the device, so the host goes on queueing the optimiser while the GPU finishes the backward
/// pass. Returns the norm before clipping, still on the device.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    max: Option<f64>,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let norm = global_norm(model, grads, device);
    if let Some(max) = max {
        let factor = norm
            .clone()
            .add_scalar(1e-6)
            .recip()
            .mul_scalar(max)
            .clamp_max(1.0);
        model.visit(&mut ScaleBy::<B> { grads, factor });
    }
    norm
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> LlamaOptimizer<M, B> {
    pub fn new(cfg: &OptimConfig, model: &M) -> Self {
        let adamw = |wd: f32| {
            AdamWConfig::new()
                .with_beta_1(cfg.beta1)
                .with_beta_2(cfg.beta2)
                .with_epsilon(cfg.eps)
                .with_weight_decay(wd)
                .init::<B, M>()
        };
        let mut groups = Groups {
            containers: Vec::new(),
            no_decay: HashSet::new(),
        };
        model.visit(&mut groups);
        Self {
            decay: adamw(cfg.weight_decay),
            no_decay: adamw(0.0),
            no_decay_ids: groups.no_decay,
        }
    }

    /// Parameters that weight decay applies to, of all float parameters.
    pub fn no_decay_count(&self) -> usize {
        self.no_decay_ids.len()
    }

    /// One AdamW step with `grads` (already averaged and clipped).
    pub fn step(&mut self, lr: f64, model: M, mut grads: GradientsParams) -> M {
        let mut other = GradientsParams::new();
        let mut v = GradVisitor {
            from: &mut grads,
            to: Some((&mut other, &self.no_decay_ids)),
            scale: None,
        };
        model.visit(&mut v);
        let model = self.decay.step(lr, model, grads);
        self.no_decay.step(lr, model, other)
    }

    /// Saves both adaptors' moments into the folder `path`.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        rec.record(self.decay.to_record(), path.join("optim-decay"))?;
        rec.record(self.no_decay.to_record(), path.join("optim-no-decay"))?;
        Ok(())
    }

    /// Restores what [`save`](Self::save) wrote.
    pub fn load(self, path: &std::path::Path, device: &B::Device) -> anyhow::Result<Self> {
        let rec = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let decay = rec.load(path.join("optim-decay"), device)?;
        let no_decay = rec.load(path.join("optim-no-decay"), device)?;
        Ok(Self {
            decay: self.decay.load_record(decay),
            no_decay: self.no_decay.load_record(no_decay),
            no_decay_ids: self.no_decay_ids,
        })
    }
}
