//! One multi-task training step: forward, task losses, balancing, backward, AdamW.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use crate::balance::{GradNormStep, TaskBalancer, last_shared_layer_grad_norms};
use crate::config::ModelConfig;
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
}

/// Model optimiser and task balancer.
pub struct Trainer<B: AutodiffBackend> {
    config: ModelConfig,
    optimizer: OptimizerAdaptor<AdamW, MultiTaskModel<B>, B>,
    /// Task balancing.
    pub balancer: TaskBalancer,
    /// Run a GradNorm update every this many steps (it costs a decoder forward/backward per task).
    pub gradnorm_every: usize,
    steps: usize,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// AdamW with weight decay `weight_decay` (the reference: 0.01).
    pub fn new(config: ModelConfig, balancer: TaskBalancer, weight_decay: f32) -> Self {
        Self {
            config,
            optimizer: AdamWConfig::new().with_weight_decay(weight_decay).init(),
            balancer,
            gradnorm_every: 1,
            steps: 0,
        }
    }

    /// One step at learning rate `lr`; returns the updated model.
    pub fn step(
        &mut self,
        model: MultiTaskModel<B>,
        image: Tensor<B, 5>,
        targets: &Targets<B>,
        lr: f64,
    ) -> (MultiTaskModel<B>, StepReport) {
        let output = model.forward(image.clone());
        let losses = self.config.losses(&output, targets);
        let values = losses.values();
        let weights = self.balancer.weights().to_vec();
        let total = losses.weighted_sum(&weights);
        let weighted_total = crate::model::scalar(total.clone());
        let grads = GradientsParams::from_grads(total.backward(), &model);

        let mut gradnorm = None;
        if let TaskBalancer::GradNorm(gn) = &mut self.balancer
            && self.steps.is_multiple_of(self.gradnorm_every.max(1))
        {
            let norms = last_shared_layer_grad_norms(&model, &self.config, image, targets);
            gradnorm = Some(gn.update(&values, &norms));
        }
        self.steps += 1;
        let model = self.optimizer.step(lr, model, grads);
        (
            model,
            StepReport {
                losses: values,
                weights,
                weighted_total,
                gradnorm,
            },
        )
    }
}

/// The inner-backend copy of a model, for inference without a graph.
pub fn inference_model<B: AutodiffBackend>(
    model: &MultiTaskModel<B>,
) -> MultiTaskModel<B::InnerBackend> {
    model.valid()
}
