//! Task balancing: fixed weights and GradNorm (Chen et al. 2018, paper §III-D).
//!
//! GradNorm here fixes the reference's defects: gradient norms are taken with respect to the last *shared*
//! layer (the encoder's final patch-merging projection), the weights keep one Adam state for the whole run,
//! the initial losses are recorded once, and no second-order term leaks into the model's gradients (the
//! weights' gradient is computed in closed form).
//!
//! burn has no `retain_graph`, so the per-task norms come from separate backward passes through the decoders
//! from a detached copy of the last shared layer's output `f = u·W`: each gives `gᵢ = ∂Lᵢ/∂f`, and
//! `∂Lᵢ/∂W = uᵀ gᵢ` is one matrix product (see [`last_shared_layer_grad_norms`]).

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use crate::config::ModelConfig;
use crate::encoder::EncoderFeatures;
use crate::model::{MultiTaskModel, Targets, Task};

/// GradNorm settings.
#[derive(Config, Debug, PartialEq)]
pub struct GradNormConfig {
    /// Asymmetry α: how strongly a lagging task's target norm is raised (the reference uses 0.12; the
    /// GradNorm paper 0.5–3).
    #[config(default = 1.5)]
    pub alpha: f64,
    /// Learning rate of the weights' Adam.
    #[config(default = 0.025)]
    pub learning_rate: f64,
    /// Smallest weight kept before renormalisation.
    #[config(default = 1e-3)]
    pub min_weight: f64,
}

/// How task losses are combined.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum TaskBalancer {
    /// Constant weights.
    Fixed(Vec<f64>),
    /// Weights adapted by GradNorm.
    GradNorm(GradNorm),
}

impl TaskBalancer {
    /// Current weights.
    pub fn weights(&self) -> &[f64] {
        match self {
            TaskBalancer::Fixed(w) => w,
            TaskBalancer::GradNorm(g) => g.weights(),
        }
    }
}

/// One GradNorm update, for logging.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GradNormStep {
    /// Weights before the update.
    pub weights_before: Vec<f64>,
    /// Weights after the update and renormalisation.
    pub weights_after: Vec<f64>,
    /// `Gᵢ = wᵢ ‖∇_W Lᵢ‖`.
    pub weighted_norms: Vec<f64>,
    /// Targets `mean(G) · rᵢ^α`.
    pub target_norms: Vec<f64>,
    /// Relative inverse training rates `rᵢ`.
    pub inverse_rates: Vec<f64>,
    /// `Σ |Gᵢ − targetᵢ|`.
    pub gradnorm_loss: f64,
}

/// GradNorm state: weights summing to the number of tasks, initial losses, Adam moments.
///
/// Serialisable so that a resumed run continues with the same weights and Adam moments.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GradNorm {
    config: GradNormConfig,
    weights: Vec<f64>,
    initial_losses: Option<Vec<f64>>,
    m: Vec<f64>,
    v: Vec<f64>,
    steps: i32,
}

impl GradNorm {
    /// Starts with unit weights for `tasks` tasks.
    pub fn new(config: GradNormConfig, tasks: usize) -> Self {
        Self {
            config,
            weights: vec![1.0; tasks],
            initial_losses: None,
            m: vec![0.0; tasks],
            v: vec![0.0; tasks],
            steps: 0,
        }
    }

    /// Current weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The losses recorded at the first update.
    pub fn initial_losses(&self) -> Option<&[f64]> {
        self.initial_losses.as_deref()
    }

    /// One update from the unweighted task losses `Lᵢ` and the norms `‖∂Lᵢ/∂W‖` of their gradients with
    /// respect to the last shared layer `W`.
    ///
    /// With `Gᵢ = wᵢ nᵢ` and the target treated as a constant (as in the paper), the gradient of
    /// `Σ|Gᵢ − targetᵢ|` with respect to `wᵢ` is `sign(Gᵢ − targetᵢ) · nᵢ`; Adam steps on it, then the
    /// weights are floored and renormalised to sum to the number of tasks.
    pub fn update(&mut self, losses: &[f64], grad_norms: &[f64]) -> GradNormStep {
        let t = self.weights.len();
        assert_eq!(losses.len(), t);
        assert_eq!(grad_norms.len(), t);
        let initial = self
            .initial_losses
            .get_or_insert_with(|| losses.iter().map(|l| l.max(f64::MIN_POSITIVE)).collect())
            .clone();
        let before = self.weights.clone();
        let g: Vec<f64> = (0..t).map(|i| self.weights[i] * grad_norms[i]).collect();
        let g_mean = g.iter().sum::<f64>() / t as f64;
        let rates: Vec<f64> = (0..t).map(|i| losses[i] / initial[i]).collect();
        let rate_mean = rates.iter().sum::<f64>() / t as f64;
        let r: Vec<f64> = rates.iter().map(|x| x / rate_mean).collect();
        let target: Vec<f64> = r
            .iter()
            .map(|ri| g_mean * ri.powf(self.config.alpha))
            .collect();
        let loss = (0..t).map(|i| (g[i] - target[i]).abs()).sum();

        // Adam on the weights, state kept across updates
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        self.steps += 1;
        for i in 0..t {
            // a difference below rounding noise has no sign: without this dead band Adam, which
            // normalises its steps, would turn noise into full-size weight changes
            let diff = g[i] - target[i];
            let sign = if diff.abs() <= 1e-9 * g_mean.abs().max(f64::MIN_POSITIVE) {
                0.0
            } else {
                diff.signum()
            };
            let grad = sign * grad_norms[i];
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * grad;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * grad * grad;
            let m_hat = self.m[i] / (1.0 - b1.powi(self.steps));
            let v_hat = self.v[i] / (1.0 - b2.powi(self.steps));
            self.weights[i] -= self.config.learning_rate * m_hat / (v_hat.sqrt() + eps);
            self.weights[i] = self.weights[i].max(self.config.min_weight);
        }
        let sum: f64 = self.weights.iter().sum();
        for w in &mut self.weights {
            *w *= t as f64 / sum;
        }
        GradNormStep {
            weights_before: before,
            weights_after: self.weights.clone(),
            weighted_norms: g,
            target_norms: target,
            inverse_rates: r,
            gradnorm_loss: loss,
        }
    }
}

/// `‖∂Lᵢ/∂W‖` for each task, `W` being the last shared layer (the stage-4 merging projection).
///
/// The encoder runs once without a graph; for each task the decoders it needs run from a leaf copy of
/// `f = u·W` and one backward gives `gᵢ = ∂Lᵢ/∂f`; then `∂Lᵢ/∂W = uᵀ gᵢ`. Costs one encoder forward and one
/// decoder forward/backward per task; the model's own gradients are untouched.
pub fn last_shared_layer_grad_norms<B: AutodiffBackend>(
    model: &MultiTaskModel<B>,
    config: &ModelConfig,
    image: Tensor<B, 5>,
    targets: &Targets<B>,
) -> [f64; 3] {
    let inner = model.valid();
    let ([hs0, hs1, hs2, hs3], u) = inner
        .encoder
        .forward_until_last_layer(image.clone().inner());
    let f = inner.encoder.stages[3].merging.reduction.forward(u.clone()); // [B, d, h, w, 2C]
    let [b, d, h, w, c8] = u.dims();
    let rows = b * d * h * w;
    let u_t = u.reshape([rows, c8]).transpose(); // [8C, rows]
    Task::ALL.map(|task| {
        let f_leaf = Tensor::<B, 5>::from_inner(f.clone()).require_grad();
        let hs4 = model
            .encoder
            .project_out(f_leaf.clone().permute([0, 4, 1, 2, 3]));
        let features = EncoderFeatures {
            hidden: [
                Tensor::from_inner(hs0.clone()),
                Tensor::from_inner(hs1.clone()),
                Tensor::from_inner(hs2.clone()),
                Tensor::from_inner(hs3.clone()),
                hs4,
            ],
        };
        let loss = model.task_loss(config, task, image.clone().detach(), &features, targets);
        let grads = loss.backward();
        let g = f_leaf
            .grad(&grads)
            .expect("the task depends on the bottleneck"); // [B, d, h, w, 2C]
        let c2 = g.dims()[4];
        let dw = u_t.clone().matmul(g.reshape([rows, c2])); // [8C, 2C]
        crate::model::scalar(dw.square().sum().sqrt())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_task_gets_more_weight() {
        let mut gn = GradNorm::new(GradNormConfig::new(), 3);
        // tasks 0 and 2 halve their loss over the run, task 1 stays where it started
        let norms = [1.0, 1.0, 1.0];
        let mut last = None;
        for step in 0..100 {
            let progress = 1.0 - 0.5 * step as f64 / 100.0;
            let losses = [2.0 * progress, 1.0, 0.5 * progress];
            last = Some(gn.update(&losses, &norms));
        }
        let w = gn.weights();
        assert!(w[1] > 1.2, "lagging task weight {w:?}");
        assert!(w[0] < 1.0 && w[2] < 1.0, "{w:?}");
        assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-9);
        let last = last.unwrap();
        assert!(last.inverse_rates[1] > 1.0);
    }

    #[test]
    fn equal_progress_and_norms_leave_weights_equal() {
        let mut gn = GradNorm::new(GradNormConfig::new(), 3);
        for step in 0..20 {
            let l = 1.0 / (1.0 + step as f64);
            gn.update(&[l, 2.0 * l, 3.0 * l], &[0.5, 0.5, 0.5]);
        }
        for w in gn.weights() {
            assert!((w - 1.0).abs() < 1e-6, "{:?}", gn.weights());
        }
    }

    #[test]
    fn larger_gradient_norms_get_smaller_weights() {
        let mut gn = GradNorm::new(GradNormConfig::new(), 2);
        for _ in 0..200 {
            gn.update(&[1.0, 1.0], &[4.0, 1.0]);
        }
        let w = gn.weights();
        assert!(w[0] < w[1], "{w:?}");
        // at the balance point w0·4 ≈ w1·1
        assert!((w[0] * 4.0 / w[1] - 1.0).abs() < 0.2, "{w:?}");
    }
}
