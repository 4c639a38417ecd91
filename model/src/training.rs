//! One multi-task training step: forward, task losses, balancing, backward, AdamW with a learning rate
//! per model part; the cosine schedule; reproducible initialisation; the state a resumed run needs.
//!
//! **Per-part learning rates.** burn 0.21's optimizer takes one learning rate per step. The trainer keeps
//! one AdamW per part (encoder, segmentation, classification, detection), each stepped with the gradients
//! of its own part only, as PyTorch's parameter groups do. Scaling the gradients per part instead would not
//! work: Adam divides each update by the running RMS of the gradient, so a constant gradient scale cancels
//! out and every part would move at the same rate (it would only change the weight-decay balance).

use std::sync::Mutex;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::balance::{
    GradNormStep, MgdaStep, TaskBalancer, last_shared_layer_grad_norms, last_shared_layer_grads,
};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::{MultiTaskModel, Targets};

/// What one step did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    /// Unweighted losses (segmentation, classification, detection).
    pub losses: [f64; 3],
    /// Weights used for this step.
    pub weights: Vec<f64>,
    /// `Σ wᵢ Lᵢ`.
    pub weighted_total: f64,
    /// The GradNorm update, when one ran.
    pub gradnorm: Option<GradNormStep>,
    /// The MGDA update, when one ran (its weights are this step's `weights`).
    pub mgda: Option<MgdaStep>,
}

/// Learning rates of the four model parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartRates {
    /// The shared Swin encoder.
    pub encoder: f64,
    /// The segmentation decoder.
    pub segmentation: f64,
    /// The classification decoder.
    pub classification: f64,
    /// The detection decoder (neck and heads).
    pub detection: f64,
}

impl PartRates {
    /// The reference's rates: encoder and segmentation 1e-4, detection and classification 1e-5.
    pub const REFERENCE: PartRates = PartRates {
        encoder: 1e-4,
        segmentation: 1e-4,
        classification: 1e-5,
        detection: 1e-5,
    };

    /// The same rate for every part.
    pub fn uniform(lr: f64) -> Self {
        PartRates {
            encoder: lr,
            segmentation: lr,
            classification: lr,
            detection: lr,
        }
    }

    /// Every rate multiplied by `factor` (a schedule's factor).
    pub fn scaled(&self, factor: f64) -> Self {
        PartRates {
            encoder: self.encoder * factor,
            segmentation: self.segmentation * factor,
            classification: self.classification * factor,
            detection: self.detection * factor,
        }
    }

    /// In [`Part::ALL`] order.
    pub fn as_array(&self) -> [f64; 4] {
        [
            self.encoder,
            self.segmentation,
            self.classification,
            self.detection,
        ]
    }
}

/// The parts of the model that get their own optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The shared encoder.
    Encoder,
    /// The segmentation decoder.
    Segmentation,
    /// The classification decoder.
    Classification,
    /// The detection decoder.
    Detection,
}

impl Part {
    /// All parts, in optimizer order.
    pub const ALL: [Part; 4] = [
        Part::Encoder,
        Part::Segmentation,
        Part::Classification,
        Part::Detection,
    ];
}

/// The learning-rate factor of a cosine schedule (SGDR without restarts) at `step` of `total`: 1 at the
/// start, `min_fraction` at `total` and after. `total == 0` means no schedule (factor 1).
pub fn cosine_factor(step: usize, total: usize, min_fraction: f64) -> f64 {
    if total == 0 {
        return 1.0;
    }
    let t = step.min(total) as f64 / total as f64;
    min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

type Adaptor<B> = OptimizerAdaptor<AdamW, MultiTaskModel<B>, B>;

/// The optimizers' records, one per [`Part`].
pub type OptimizerRecords<B> = Vec<<Adaptor<B> as Optimizer<MultiTaskModel<B>, B>>::Record>;

/// The scalar state of a [`Trainer`] (its optimizers' moments travel separately as records).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Steps taken.
    pub steps: usize,
    /// GradNorm and MGDA cadence.
    pub gradnorm_every: usize,
    /// Weight decay of every AdamW.
    pub weight_decay: f32,
    /// Task balancing, with GradNorm's weights, initial losses and Adam moments, or MGDA's weights.
    pub balancer: TaskBalancer,
}

/// Model optimisers (one AdamW per part) and task balancer.
pub struct Trainer<B: AutodiffBackend> {
    config: ModelConfig,
    optimizers: Vec<Adaptor<B>>,
    weight_decay: f32,
    /// Task balancing.
    pub balancer: TaskBalancer,
    /// Run a GradNorm or MGDA update every this many steps (it costs a decoder forward/backward per
    /// task); the steps between keep the last weights.
    pub gradnorm_every: usize,
    steps: usize,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// AdamW with weight decay `weight_decay` (the reference: 0.01).
    pub fn new(config: ModelConfig, balancer: TaskBalancer, weight_decay: f32) -> Self {
        Self {
            config,
            optimizers: Part::ALL
                .iter()
                .map(|_| AdamWConfig::new().with_weight_decay(weight_decay).init())
                .collect(),
            weight_decay,
            balancer,
            gradnorm_every: 1,
            steps: 0,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The model configuration it trains.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// One step at learning rate `lr` for every part; returns the updated model.
    pub fn step(
        &mut self,
        model: MultiTaskModel<B>,
        image: Tensor<B, 5>,
        targets: &Targets<B>,
        lr: f64,
    ) -> (MultiTaskModel<B>, StepReport) {
        self.step_parts(model, image, targets, PartRates::uniform(lr))
    }

    /// One step with a learning rate per part; returns the updated model.
    ///
    /// GradNorm updates its weights after the step (its update needs this step's losses and norms, and
    /// its weights are the state of an optimisation of their own); MGDA solves for this step's
    /// gradients first and the step uses the weights it finds.
    pub fn step_parts(
        &mut self,
        model: MultiTaskModel<B>,
        image: Tensor<B, 5>,
        targets: &Targets<B>,
        rates: PartRates,
    ) -> (MultiTaskModel<B>, StepReport) {
        let balance_now = self.steps.is_multiple_of(self.gradnorm_every.max(1));
        let mut mgda = None;
        if let TaskBalancer::Mgda(m) = &mut self.balancer
            && balance_now
        {
            // before the step's own forward, so that its graph is not held during these passes
            let shared = last_shared_layer_grads(&model, &self.config, image.clone(), targets);
            mgda = Some(m.update(&shared.gradients, &shared.losses));
        }
        let output = model.forward(image.clone());
        let losses = self.config.losses(&output, targets);
        let values = losses.values();
        let weights = self.balancer.weights().to_vec();
        let total = losses.weighted_sum(&weights);
        let weighted_total = crate::model::scalar(total.clone());
        let mut grads = total.backward();
        // each part's gradients go to that part's optimizer only
        let parts = [
            GradientsParams::from_module(&mut grads, &model.encoder),
            GradientsParams::from_module(&mut grads, &model.segmentation),
            GradientsParams::from_module(&mut grads, &model.classification),
            GradientsParams::from_module(&mut grads, &model.detection),
        ];

        let mut gradnorm = None;
        if let TaskBalancer::GradNorm(gn) = &mut self.balancer
            && balance_now
        {
            let norms = last_shared_layer_grad_norms(&model, &self.config, image, targets);
            gradnorm = Some(gn.update(&values, &norms));
        }
        self.steps += 1;
        let mut model = model;
        for ((optimizer, grads), lr) in self.optimizers.iter_mut().zip(parts).zip(rates.as_array())
        {
            model = optimizer.step(lr, model, grads);
        }
        (
            model,
            StepReport {
                losses: values,
                weights,
                weighted_total,
                gradnorm,
                mgda,
            },
        )
    }

    /// The scalar state, for a checkpoint.
    pub fn state(&self) -> TrainerState {
        TrainerState {
            steps: self.steps,
            gradnorm_every: self.gradnorm_every,
            weight_decay: self.weight_decay,
            balancer: self.balancer.clone(),
        }
    }

    /// The optimizers' moments, one record per part.
    pub fn optimizer_records(&self) -> OptimizerRecords<B> {
        self.optimizers.iter().map(Optimizer::to_record).collect()
    }

    /// A trainer continuing from a saved state and optimizer records (one per part).
    pub fn restore(config: ModelConfig, state: TrainerState, records: OptimizerRecords<B>) -> Self {
        let mut trainer = Self::new(config, state.balancer, state.weight_decay);
        trainer.gradnorm_every = state.gradnorm_every;
        trainer.steps = state.steps;
        trainer.optimizers = trainer
            .optimizers
            .into_iter()
            .zip(records)
            .map(|(o, r)| o.load_record(r))
            .collect();
        trainer
    }
}

/// The inner-backend copy of a model, for inference without a graph.
pub fn inference_model<B: AutodiffBackend>(
    model: &MultiTaskModel<B>,
) -> MultiTaskModel<B::InnerBackend> {
    model.valid()
}

/// Serialises seeded initialisations: the backend's seed is process-wide state.
static SEEDED_INIT: Mutex<()> = Mutex::new(());

/// Builds the model with parameters drawn reproducibly from `seed`.
///
/// [`ModelConfig::init`] draws from the backend's generator, which on `flex` takes a seed for one random
/// operation and then falls back to OS entropy, so two runs never start from the same weights. Here each
/// parameter is materialised right after seeding the backend with `(seed, parameter index)`, so the same
/// seed gives the same weights on every run. Concurrent random operations elsewhere in the process could
/// take a seed meant for a parameter; the seeded initialisations themselves are serialised.
pub fn seeded_init<B: Backend>(
    config: &ModelConfig,
    device: &B::Device,
    seed: u64,
) -> Result<MultiTaskModel<B>> {
    config.validate()?;
    let _guard = SEEDED_INIT.lock().unwrap_or_else(|p| p.into_inner());
    let model = MultiTaskModel {
        encoder: config.encoder.init(device),
        segmentation: config.segmentation.init(device),
        classification: config.classification.init(device),
        detection: config.detection.init(device),
    };
    materialise_seeded(&model, device, seed);
    Ok(model)
}

/// Materialises every not-yet-drawn parameter of any module from `seed`, as [`seeded_init`] does
/// for the whole model (for tests of single blocks that must not depend on OS entropy).
pub fn seed_parameters<B: Backend, M: Module<B>>(module: &M, device: &B::Device, seed: u64) {
    let _guard = SEEDED_INIT.lock().unwrap_or_else(|p| p.into_inner());
    materialise_seeded(module, device, seed);
}

fn materialise_seeded<B: Backend, M: Module<B>>(module: &M, device: &B::Device, seed: u64) {
    module.visit(&mut SeededMaterialise::<B> {
        device: device.clone(),
        seed,
        index: 0,
    });
}

struct SeededMaterialise<B: Backend> {
    device: B::Device,
    seed: u64,
    index: u64,
}

impl<B: Backend> ModuleVisitor<B> for SeededMaterialise<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // splitmix64 of (seed, index): neighbouring parameters get unrelated streams
        let mut z = self
            .seed
            .wrapping_add(self.index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        B::seed(&self.device, z);
        self.index += 1;
        let _ = param.val();
    }
}

/// Every float parameter of a model with its shape, in visiting order (for comparing runs: parameter
/// ids are random per model, the order is fixed by the configuration).
pub fn parameters<B: Backend>(model: &MultiTaskModel<B>) -> Vec<(Vec<usize>, Vec<f32>)> {
    struct Collect(Vec<(Vec<usize>, Vec<f32>)>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            let shape = tensor.dims().to_vec();
            self.0
                .push((shape, tensor.into_data().iter::<f32>().collect()));
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// The largest absolute difference between corresponding parameters of two models of one configuration,
/// with the index of the parameter (in visiting order) where it occurs.
pub fn max_parameter_difference<B: Backend>(
    a: &MultiTaskModel<B>,
    b: &MultiTaskModel<B>,
) -> (f64, usize) {
    let (pa, pb) = (parameters(a), parameters(b));
    assert_eq!(pa.len(), pb.len(), "models of one configuration");
    let mut worst = (0.0f64, 0usize);
    for (i, ((_, x), (_, y))) in pa.iter().zip(&pb).enumerate() {
        for (u, v) in x.iter().zip(y) {
            let d = f64::from((u - v).abs());
            if d > worst.0 || d.is_nan() {
                worst = (d, i);
            }
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    #[test]
    fn cosine_starts_at_one_and_ends_at_the_floor() {
        assert_eq!(cosine_factor(0, 100, 0.0), 1.0);
        assert!((cosine_factor(50, 100, 0.0) - 0.5).abs() < 1e-12);
        assert!(cosine_factor(100, 100, 0.1) - 0.1 < 1e-12);
        assert!((cosine_factor(250, 100, 0.1) - 0.1).abs() < 1e-12);
        assert_eq!(cosine_factor(7, 0, 0.0), 1.0);
    }

    #[test]
    fn a_seed_gives_the_same_weights_and_another_seed_other_weights() {
        let cfg = ModelConfig::tiny();
        let device = Default::default();
        let a = seeded_init::<CpuBackend>(&cfg, &device, 3).unwrap();
        let b = seeded_init::<CpuBackend>(&cfg, &device, 3).unwrap();
        let c = seeded_init::<CpuBackend>(&cfg, &device, 4).unwrap();
        assert_eq!(max_parameter_difference(&a, &b).0, 0.0);
        assert!(max_parameter_difference(&a, &c).0 > 1e-3);
    }
}
