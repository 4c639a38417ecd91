//! Task balancing: fixed weights, GradNorm (Chen et al. 2018, paper §III-D) and MGDA-UB (Sener & Koltun
//! 2018, "Multi-Task Learning as Multi-Objective Optimization").
//!
//! GradNorm here fixes the reference's defects: gradient norms are taken with respect to the last *shared*
//! layer (the encoder's final patch-merging projection), the weights keep one Adam state for the whole run,
//! the initial losses are recorded once, and no second-order term leaks into the model's gradients (the
//! weights' gradient is computed in closed form).
//!
//! burn has no `retain_graph`, so the per-task gradients come from separate backward passes through the
//! decoders from a detached copy of the last shared layer's output `f = u·W`: each gives `gᵢ = ∂Lᵢ/∂f`, and
//! `∂Lᵢ/∂W = uᵀ gᵢ` is one matrix product (see [`last_shared_layer_grads`]). GradNorm uses their norms,
//! MGDA their Gram matrix; both come from that one function.
//!
//! **MGDA-UB.** MGDA looks for the point of the convex hull of the task gradients nearest the origin,
//! `min_{α ∈ Δ} ‖Σᵢ αᵢ gᵢ‖²` (Δ the probability simplex). Unless that minimum is 0 (the parameters are
//! Pareto-stationary), `−Σ αᵢ gᵢ` is a direction along which every task's loss decreases to first order.
//! MGDA-UB solves the problem for the gradients with respect to the shared representation `Z` (an upper
//! bound that needs one backward pass instead of one per task) and uses the `α` as loss weights.
//!
//! Deviation: [`Mgda`] takes `gᵢ = ∂Lᵢ/∂W` for the last shared layer `W`, the tensor GradNorm measures,
//! rather than `∂Lᵢ/∂Z`, for the reason GradNorm takes it: one shared layer stands for the shared
//! parameters, because their full gradients would cost a backward pass through the whole encoder per
//! task. It also suits this model better than `Z` would: the decoders read the encoder's skip features at
//! every scale besides the bottleneck, so no single `Z` carries a task's whole dependence on the shared
//! parameters and the upper bound does not hold, whereas for `W` the problem is MGDA's own, exactly, for
//! that block of shared parameters; and `W` is one `8C × 2C` matrix whatever the batch and volume.

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
    /// Weights from MGDA-UB's min-norm problem.
    Mgda(Mgda),
}

impl TaskBalancer {
    /// Current weights.
    pub fn weights(&self) -> &[f64] {
        match self {
            TaskBalancer::Fixed(w) => w,
            TaskBalancer::GradNorm(g) => g.weights(),
            TaskBalancer::Mgda(m) => m.weights(),
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

/// How [`Mgda`] normalises each task's gradient before the min-norm problem (the `normalization_type` of
/// the paper's code). As there, the solution's `α` weight the losses themselves: the normalisation
/// changes which combination is sought, not what it multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GradientNormalisation {
    /// `gᵢ` as it is.
    #[serde(rename = "none")]
    None,
    /// `gᵢ / ‖gᵢ‖`: only the directions count.
    #[serde(rename = "l2")]
    L2,
    /// `gᵢ / Lᵢ` (the gradient of `log Lᵢ`).
    #[serde(rename = "loss")]
    Loss,
    /// `gᵢ / (Lᵢ ‖gᵢ‖)`.
    #[serde(rename = "loss+")]
    LossL2,
}

/// MGDA settings.
#[derive(Config, Debug, PartialEq)]
pub struct MgdaConfig {
    /// Gradient normalisation. `l2` by default: it makes the weights independent of each loss's scale
    /// and of its gradient's magnitude, so they depend only on how the task gradients point relative to
    /// one another (agreement or conflict), which is what MGDA is about. Without normalisation the
    /// min-norm point moves towards the task with the smallest gradient (with collinear gradients all the
    /// weight goes there), so a task whose loss happens to be small in absolute terms would take over;
    /// `loss+` depends on the absolute loss values, which are not comparable between Dice + BCE,
    /// focal cross-entropy and the detection losses.
    #[config(default = "GradientNormalisation::L2")]
    pub normalisation: GradientNormalisation,
    /// Smallest weight kept (weights sum to the number of tasks, so at most 1). MGDA often puts a task
    /// on the simplex's boundary (`αᵢ = 0`); the floor keeps its decoder training.
    #[config(default = 1e-3)]
    pub min_weight: f64,
}

/// One MGDA update, for logging.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MgdaStep {
    /// Weights before the update.
    pub weights_before: Vec<f64>,
    /// Weights after the update: `T·αᵢ`, floored at `min_weight` and rescaled to sum to `T`; the weights
    /// before when the update was skipped.
    pub weights_after: Vec<f64>,
    /// The min-norm solution `α` on the simplex (sums to 1); empty when the update was skipped.
    pub alphas: Vec<f64>,
    /// `‖∂Lᵢ/∂W‖` of the raw gradients.
    pub grad_norms: Vec<f64>,
    /// Gram matrix `ĝᵢ·ĝⱼ` of the normalised gradients the problem was solved for (rows); the raw
    /// gradients' when the update was skipped before normalising.
    pub gram: Vec<Vec<f64>>,
    /// `‖Σ αᵢ ĝᵢ‖²`, the minimum; `None` when the update was skipped.
    pub min_norm_sq: Option<f64>,
    /// Tasks left out of the problem (`αᵢ = 0`) because their gradient or its normaliser is zero.
    pub zero_gradient: Vec<usize>,
    /// Why the weights were kept, when they were.
    pub skipped: Option<String>,
}

/// MGDA-UB task balancing (see the module documentation for the choice of `W`).
///
/// Each update solves `min_{α ∈ Δ} ‖Σ αᵢ ĝᵢ‖²` exactly ([`min_norm_simplex`]) for the normalised
/// gradients `ĝᵢ` of the current step, and the weights become `T·α` (`T` tasks): the paper's `α` sum to
/// 1, scaling them by `T` keeps the loss's scale that of fixed weights `[1, …, 1]` (and of GradNorm), so
/// the learning rates keep their meaning whichever balancer runs. The weights then get the `min_weight`
/// floor and are rescaled to sum to `T` again.
///
/// Degenerate inputs: a task whose gradient is zero (or whose normaliser is: a zero loss under `loss` or
/// `loss+`, which would make `ĝᵢ` unbounded) is left out of the problem with `αᵢ = 0` (hence the floor). MGDA proper would put all the weight on it (the zero vector is the hull's
/// nearest point), which would stop every other task for one that no change of `W` moves to first order;
/// a direction that decreases the other losses leaves it unchanged, so it is still a first-order Pareto
/// improvement. When every gradient is zero, or a gradient, loss or normalised Gram entry is not finite,
/// the weights are kept and the step says why.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Mgda {
    config: MgdaConfig,
    weights: Vec<f64>,
}

impl Mgda {
    /// Starts with unit weights for `tasks` tasks.
    pub fn new(config: MgdaConfig, tasks: usize) -> Self {
        Self {
            config,
            weights: vec![1.0; tasks],
        }
    }

    /// Current weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The settings.
    pub fn config(&self) -> &MgdaConfig {
        &self.config
    }

    /// One update from the gradients `∂Lᵢ/∂W` (one flattened vector per task, all of one length) and the
    /// unweighted losses `Lᵢ` (read by the `loss` and `loss+` normalisations).
    pub fn update<V: AsRef<[f32]>>(&mut self, gradients: &[V], losses: &[f64]) -> MgdaStep {
        let t = self.weights.len();
        if gradients.len() != t {
            return self.keep(
                Vec::new(),
                format!("{} gradients for {t} tasks", gradients.len()),
            );
        }
        if let Some(first) = gradients.first() {
            let n = first.as_ref().len();
            if gradients.iter().any(|g| g.as_ref().len() != n) {
                return self.keep(Vec::new(), "gradients of different lengths".to_string());
            }
        }
        self.update_from_gram(&gram(gradients), losses)
    }

    /// One update from the Gram matrix `Mᵢⱼ = gᵢ·gⱼ` of the raw gradients and the losses; the
    /// normalisations are applied to `M` (`ĝᵢ·ĝⱼ = Mᵢⱼ / (cᵢ cⱼ)`).
    pub fn update_from_gram(&mut self, gram: &[Vec<f64>], losses: &[f64]) -> MgdaStep {
        let t = self.weights.len();
        if gram.len() != t || gram.iter().any(|row| row.len() != t) {
            return self.keep(gram.to_vec(), format!("the Gram matrix is not {t}×{t}"));
        }
        // a non-finite entry in gᵢ makes Mᵢᵢ non-finite (and every product with gᵢ: the diagonal names
        // the task)
        if let Some(i) = (0..t).find(|&i| !gram[i][i].is_finite()) {
            return self.keep(gram.to_vec(), format!("non-finite gradient for task {i}"));
        }
        if gram.iter().flatten().any(|v| !v.is_finite()) {
            return self.keep(gram.to_vec(), "non-finite Gram matrix".to_string());
        }
        let norms: Vec<f64> = (0..t).map(|i| gram[i][i].max(0.0).sqrt()).collect();
        let uses_loss = matches!(
            self.config.normalisation,
            GradientNormalisation::Loss | GradientNormalisation::LossL2
        );
        if uses_loss {
            if losses.len() != t {
                return self.keep(
                    gram.to_vec(),
                    format!("{} losses for {t} tasks", losses.len()),
                );
            }
            if let Some(i) = (0..t).find(|&i| !losses[i].is_finite()) {
                return self.keep(gram.to_vec(), format!("non-finite loss for task {i}"));
            }
        }
        // ĝᵢ = gᵢ / cᵢ; cᵢ = 0 makes ĝᵢ zero (a zero gradient) or unbounded (a zero loss with a gradient):
        // either way the task takes no part in the problem (an unbounded vector gets α = 0 in the limit)
        let factors: Vec<f64> = (0..t)
            .map(|i| match self.config.normalisation {
                GradientNormalisation::None => 1.0,
                GradientNormalisation::L2 => norms[i],
                GradientNormalisation::Loss => losses[i].abs(),
                GradientNormalisation::LossL2 => losses[i].abs() * norms[i],
            })
            .collect();
        if let Some(i) = (0..t).find(|&i| !factors[i].is_finite()) {
            return self.keep(gram.to_vec(), format!("non-finite normaliser for task {i}"));
        }
        let zero: Vec<usize> = (0..t)
            .filter(|&i| norms[i] == 0.0 || factors[i] == 0.0)
            .collect();
        let active: Vec<usize> = (0..t).filter(|i| !zero.contains(i)).collect();
        let normalised: Vec<Vec<f64>> = (0..t)
            .map(|i| {
                (0..t)
                    .map(|j| {
                        if zero.contains(&i) || zero.contains(&j) {
                            0.0
                        } else {
                            gram[i][j] / factors[i] / factors[j]
                        }
                    })
                    .collect()
            })
            .collect();
        if normalised.iter().flatten().any(|v| !v.is_finite()) {
            return self.keep(
                normalised,
                "the normalised Gram matrix overflows".to_string(),
            );
        }
        let step = |weights_after: Vec<f64>,
                    alphas: Vec<f64>,
                    min_norm_sq: Option<f64>,
                    skipped: Option<String>| MgdaStep {
            weights_before: self.weights.clone(),
            weights_after,
            alphas,
            grad_norms: norms.clone(),
            gram: normalised.clone(),
            min_norm_sq,
            zero_gradient: zero.clone(),
            skipped,
        };
        if active.is_empty() {
            let kept = self.weights.clone();
            return step(
                kept,
                Vec::new(),
                None,
                Some("every task's gradient is zero".into()),
            );
        }
        let sub: Vec<Vec<f64>> = active
            .iter()
            .map(|&i| active.iter().map(|&j| normalised[i][j]).collect())
            .collect();
        let Some(solution) = min_norm_simplex(&sub) else {
            let kept = self.weights.clone();
            return step(
                kept,
                Vec::new(),
                None,
                Some("the min-norm problem has no solution".into()),
            );
        };
        let mut alphas = vec![0.0; t];
        for (k, &i) in active.iter().enumerate() {
            alphas[i] = solution.alphas[k];
        }
        let weights = floored_weights(&alphas, self.config.min_weight);
        let report = step(weights.clone(), alphas, Some(solution.value), None);
        self.weights = weights;
        report
    }

    /// A step that keeps the weights, saying why.
    fn keep(&self, gram: Vec<Vec<f64>>, reason: String) -> MgdaStep {
        let norms = (0..gram.len())
            .map(|i| gram[i].get(i).map_or(f64::NAN, |v| v.max(0.0).sqrt()))
            .collect();
        MgdaStep {
            weights_before: self.weights.clone(),
            weights_after: self.weights.clone(),
            alphas: Vec::new(),
            grad_norms: norms,
            gram,
            min_norm_sq: None,
            zero_gradient: Vec::new(),
            skipped: Some(reason),
        }
    }
}

/// `T·αᵢ` with every weight at least `floor` and the sum `T` (`α` is rescaled to sum to 1 first; negative
/// or non-finite entries count as 0).
///
/// The weights under the floor are raised to it and the others scaled down to make room, repeated until
/// none is under it (each round fixes at least one more weight, and the largest `T·αᵢ ≥ 1` never is
/// fixed while `floor ≤ 1`). A floor outside `[0, 1]` is clamped into it: with `T` weights summing to
/// `T`, a floor above 1 cannot be met.
pub fn floored_weights(alphas: &[f64], floor: f64) -> Vec<f64> {
    let t = alphas.len();
    let total = t as f64;
    let floor = if floor.is_finite() {
        floor.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut w: Vec<f64> = alphas
        .iter()
        .map(|a| {
            if a.is_finite() {
                a.max(0.0) * total
            } else {
                0.0
            }
        })
        .collect();
    let mut fixed = vec![false; t];
    loop {
        let free = (0..t).filter(|&i| !fixed[i]).count();
        if free == 0 {
            break;
        }
        let room = total - floor * (t - free) as f64;
        let free_sum: f64 = (0..t).filter(|&i| !fixed[i]).map(|i| w[i]).sum();
        for i in (0..t).filter(|&i| !fixed[i]) {
            w[i] = if free_sum > 0.0 {
                w[i] * room / free_sum
            } else {
                room / free as f64
            };
        }
        let under: Vec<usize> = (0..t).filter(|&i| !fixed[i] && w[i] < floor).collect();
        if under.is_empty() {
            break;
        }
        for i in under {
            fixed[i] = true;
            w[i] = floor;
        }
    }
    w
}

/// The min-norm point of a convex hull: `α` on the simplex and the value `αᵀ M α`.
#[derive(Debug, Clone, PartialEq)]
pub struct MinNorm {
    /// Convex weights (non-negative, summing to 1).
    pub alphas: Vec<f64>,
    /// `αᵀ M α = ‖Σ αᵢ gᵢ‖²`.
    pub value: f64,
}

/// Most vectors [`min_norm_simplex`] takes: it enumerates the `2ᵀ − 1` supports.
pub const MIN_NORM_MAX_TASKS: usize = 12;

/// Ridge added to the scaled Gram matrix's diagonal (relative to its largest diagonal entry).
const RIDGE: f64 = 1e-9;

/// `min_{α ∈ Δ} αᵀ M α` for the Gram matrix `M` of up to [`MIN_NORM_MAX_TASKS`] vectors, exactly.
///
/// The paper iterates Frank-Wolfe (its Algorithm 2, with a closed-form line search between two points);
/// for a handful of tasks the problem is solved outright instead. For every support `S` (non-empty set of
/// tasks) the minimiser on the affine hull of `S` solves the KKT system `M_SS a + μ 1 = 0`, `Σ a = 1`; the
/// minimiser on the simplex is the non-negative candidate of least value, and it is among them (it is the
/// affine minimiser on its own support). For two vectors this is the paper's line search.
///
/// `M` is scaled by its largest diagonal entry and given a ridge of `1e-9` on the diagonal, which makes
/// the minimiser unique: identical (or otherwise affinely dependent) gradients leave a whole face of
/// minimisers, and the ridge picks the one nearest equal weights, where exact arithmetic would pick an
/// arbitrary vertex; a non-degenerate solution moves by about `1e-9`. The value is `αᵀ M α` for the `M`
/// given. `None` for a matrix that is not square, is empty, has more than [`MIN_NORM_MAX_TASKS`] rows or a
/// non-finite entry; a zero matrix gives equal weights.
pub fn min_norm_simplex(gram: &[Vec<f64>]) -> Option<MinNorm> {
    let t = gram.len();
    if t == 0
        || t > MIN_NORM_MAX_TASKS
        || gram.iter().any(|row| row.len() != t)
        || gram.iter().flatten().any(|v| !v.is_finite())
    {
        return None;
    }
    let quad = |m: &[Vec<f64>], a: &[f64]| -> f64 {
        (0..t)
            .map(|i| a[i] * (0..t).map(|j| m[i][j] * a[j]).sum::<f64>())
            .sum()
    };
    // symmetric part: a rounding-asymmetric Gram matrix has the same quadratic form
    let sym: Vec<Vec<f64>> = (0..t)
        .map(|i| (0..t).map(|j| 0.5 * (gram[i][j] + gram[j][i])).collect())
        .collect();
    let scale = (0..t).map(|i| sym[i][i].abs()).fold(0.0, f64::max);
    if scale == 0.0 {
        return Some(MinNorm {
            alphas: vec![1.0 / t as f64; t],
            value: 0.0,
        });
    }
    let m: Vec<Vec<f64>> = (0..t)
        .map(|i| {
            (0..t)
                .map(|j| sym[i][j] / scale + if i == j { RIDGE } else { 0.0 })
                .collect()
        })
        .collect();
    let mut best: Option<(f64, Vec<f64>)> = None;
    for mask in 1u32..(1 << t) {
        let support: Vec<usize> = (0..t).filter(|&i| mask >> i & 1 == 1).collect();
        let Some(a_s) = affine_min_norm(&m, &support) else {
            continue;
        };
        // a candidate with a clearly negative weight lies outside the simplex; rounding-level ones are
        // clipped
        if a_s.iter().any(|&a| a < -1e-9) {
            continue;
        }
        let mut a = vec![0.0; t];
        for (k, &i) in support.iter().enumerate() {
            a[i] = a_s[k].max(0.0);
        }
        let sum: f64 = a.iter().sum();
        if !(sum > 0.0 && sum.is_finite()) {
            continue;
        }
        a.iter_mut().for_each(|x| *x /= sum);
        let v = quad(&m, &a);
        if v.is_finite() && best.as_ref().is_none_or(|(b, _)| v < *b) {
            best = Some((v, a));
        }
    }
    // a single vertex's system is always regular, so there is a candidate
    let (_, alphas) = best?;
    let value = quad(&sym, &alphas).max(0.0);
    Some(MinNorm { alphas, value })
}

/// The minimiser of `aᵀ M a` over `Σ a = 1` with `a` supported on `support`: the solution of
/// `[M_SS 1; 1ᵀ 0] [a; μ] = [0; 1]`, `None` when that system is singular.
fn affine_min_norm(m: &[Vec<f64>], support: &[usize]) -> Option<Vec<f64>> {
    let k = support.len();
    let n = k + 1;
    let mut a = vec![vec![0.0; n + 1]; n]; // augmented [A | b]
    for (r, &i) in support.iter().enumerate() {
        for (c, &j) in support.iter().enumerate() {
            a[r][c] = m[i][j];
        }
        a[r][k] = 1.0;
        a[k][r] = 1.0;
    }
    a[k][n] = 1.0;
    // Gaussian elimination with partial pivoting; the entries are O(1) after scaling, so an absolute
    // pivot threshold is meaningful
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[pivot][col].abs() < 1e-14 {
            return None;
        }
        a.swap(col, pivot);
        let (done, rest) = a.split_at_mut(col + 1);
        let pivot_row = &done[col];
        for row in rest {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r][c] * x[c]).sum();
        x[r] = (a[r][n] - s) / a[r][r];
    }
    x.truncate(k);
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// The gradients `∂Lᵢ/∂W` of the task losses with respect to the last shared layer `W` (the stage-4
/// merging projection), with the losses of the same passes.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedLayerGradients {
    /// `∂Lᵢ/∂W` per task (segmentation, classification, detection), flattened row-major from `[8C, 2C]`.
    pub gradients: [Vec<f32>; 3],
    /// The unweighted task losses `Lᵢ` the gradients are of.
    pub losses: [f64; 3],
}

impl SharedLayerGradients {
    /// `‖∂Lᵢ/∂W‖` per task (summed in f64).
    pub fn norms(&self) -> [f64; 3] {
        std::array::from_fn(|i| dot(&self.gradients[i], &self.gradients[i]).sqrt())
    }

    /// The Gram matrix `Mᵢⱼ = gᵢ·gⱼ` of the gradients (summed in f64).
    pub fn gram(&self) -> Vec<Vec<f64>> {
        gram(&self.gradients)
    }
}

/// `Σ aₖ bₖ` in f64; vectors of different lengths have no dot product (NaN).
fn dot(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// `Mᵢⱼ = gᵢ·gⱼ`.
fn gram<V: AsRef<[f32]>>(gradients: &[V]) -> Vec<Vec<f64>> {
    let t = gradients.len();
    let mut m = vec![vec![0.0; t]; t];
    for i in 0..t {
        for j in i..t {
            let v = dot(gradients[i].as_ref(), gradients[j].as_ref());
            m[i][j] = v;
            m[j][i] = v;
        }
    }
    m
}

/// `∂Lᵢ/∂W` for each task, `W` being the last shared layer (the stage-4 merging projection), and the
/// task losses.
///
/// The encoder runs once without a graph; for each task the decoders it needs run from a leaf copy of
/// `f = u·W` and one backward gives `gᵢ = ∂Lᵢ/∂f`; then `∂Lᵢ/∂W = uᵀ gᵢ`. Costs one encoder forward and one
/// decoder forward/backward per task, and the copy of three `8C × 2C` matrices to the host; the model's
/// own gradients are untouched. A task whose loss does not reach the bottleneck gets a zero gradient.
pub fn last_shared_layer_grads<B: AutodiffBackend>(
    model: &MultiTaskModel<B>,
    config: &ModelConfig,
    image: Tensor<B, 5>,
    targets: &Targets<B>,
) -> SharedLayerGradients {
    let inner = model.valid();
    let ([hs0, hs1, hs2, hs3], u) = inner
        .encoder
        .forward_until_last_layer(image.clone().inner());
    let f = inner.encoder.stages[3].merging.reduction.forward(u.clone()); // [B, d, h, w, 2C]
    let [b, d, h, w, c8] = u.dims();
    let c2 = f.dims()[4];
    let rows = b * d * h * w;
    let u_t = u.reshape([rows, c8]).transpose(); // [8C, rows]
    let per_task = Task::ALL.map(|task| {
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
        let value = crate::model::scalar(loss.clone());
        let grads = loss.backward();
        let dw = match f_leaf.grad(&grads) {
            // [B, d, h, w, 2C] → [8C, 2C]
            Some(g) => u_t
                .clone()
                .matmul(g.reshape([rows, c2]))
                .into_data()
                .iter::<f32>()
                .collect(),
            // no path from the bottleneck to this loss: its gradient there is zero
            None => vec![0.0; c8 * c2],
        };
        (dw, value)
    });
    let [(g0, l0), (g1, l1), (g2, l2)] = per_task;
    SharedLayerGradients {
        gradients: [g0, g1, g2],
        losses: [l0, l1, l2],
    }
}

/// `‖∂Lᵢ/∂W‖` for each task, `W` being the last shared layer: the norms of
/// [`last_shared_layer_grads`].
pub fn last_shared_layer_grad_norms<B: AutodiffBackend>(
    model: &MultiTaskModel<B>,
    config: &ModelConfig,
    image: Tensor<B, 5>,
    targets: &Targets<B>,
) -> [f64; 3] {
    last_shared_layer_grads(model, config, image, targets).norms()
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

    /// `Mᵢⱼ = gᵢ·gⱼ` of small vectors.
    fn gram_of(vectors: &[&[f64]]) -> Vec<Vec<f64>> {
        vectors
            .iter()
            .map(|a| {
                vectors
                    .iter()
                    .map(|b| a.iter().zip(*b).map(|(x, y)| x * y).sum())
                    .collect()
            })
            .collect()
    }

    fn quad(m: &[Vec<f64>], a: &[f64]) -> f64 {
        (0..a.len())
            .map(|i| a[i] * (0..a.len()).map(|j| m[i][j] * a[j]).sum::<f64>())
            .sum()
    }

    /// The least `aᵀ M a` over a grid on the 3-simplex with `n` steps per side.
    fn grid_min(m: &[Vec<f64>], n: usize) -> f64 {
        let mut best = f64::INFINITY;
        for i in 0..=n {
            for j in 0..=n - i {
                let a = [
                    i as f64 / n as f64,
                    j as f64 / n as f64,
                    (n - i - j) as f64 / n as f64,
                ];
                best = best.min(quad(m, &a));
            }
        }
        best
    }

    /// The KKT conditions of the min-norm problem: `(M a)ᵢ` equals the minimum `aᵀ M a` where `aᵢ > 0`
    /// and is at least that where `aᵢ = 0`.
    fn assert_kkt(m: &[Vec<f64>], sol: &MinNorm) {
        let t = m.len();
        let scale = (0..t).map(|i| m[i][i]).fold(0.0, f64::max);
        let tol = 1e-7 * scale;
        assert!(
            (sol.alphas.iter().sum::<f64>() - 1.0).abs() < 1e-12,
            "{sol:?}"
        );
        assert!(sol.alphas.iter().all(|&a| a >= 0.0), "{sol:?}");
        assert!((quad(m, &sol.alphas) - sol.value).abs() < tol, "{sol:?}");
        for i in 0..t {
            let grad: f64 = (0..t).map(|j| m[i][j] * sol.alphas[j]).sum();
            if sol.alphas[i] > 1e-9 {
                assert!(
                    (grad - sol.value).abs() < tol,
                    "active {i}: (Ma)ᵢ = {grad}, min {} in {m:?}, {sol:?}",
                    sol.value
                );
            } else {
                assert!(
                    grad >= sol.value - tol,
                    "inactive {i}: (Ma)ᵢ = {grad} < min {} in {m:?}, {sol:?}",
                    sol.value
                );
            }
        }
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    #[test]
    fn two_orthogonal_unit_gradients_get_equal_weights() {
        let m = gram_of(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let sol = min_norm_simplex(&m).unwrap();
        assert!((sol.alphas[0] - 0.5).abs() < 1e-12, "{sol:?}");
        assert!((sol.alphas[1] - 0.5).abs() < 1e-12, "{sol:?}");
        // ‖(½, ½)‖² = ½
        assert!((sol.value - 0.5).abs() < 1e-12, "{sol:?}");
    }

    #[test]
    fn collinear_gradients_put_all_weight_on_the_smaller() {
        // g₁ = 2 g₂: the hull is the segment [g₂, 2 g₂], nearest the origin at g₂
        let g2 = [0.3, -0.4, 1.2];
        let g1 = g2.map(|x| 2.0 * x);
        let sol = min_norm_simplex(&gram_of(&[&g1, &g2])).unwrap();
        assert_eq!(sol.alphas, vec![0.0, 1.0]);
        assert!((sol.value - 1.69).abs() < 1e-12, "‖g₂‖² = 1.69: {sol:?}");

        // the balancer without normalisation: weights 2·(0, 1), floored at 1e-3 and rescaled
        let mut mgda = Mgda::new(
            MgdaConfig::new().with_normalisation(GradientNormalisation::None),
            2,
        );
        let as_f32 = |g: &[f64]| g.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let step = mgda.update(&[as_f32(&g1), as_f32(&g2)], &[1.0, 1.0]);
        assert_eq!(step.skipped, None);
        assert_eq!(step.alphas, vec![0.0, 1.0]);
        assert!((mgda.weights()[0] - 1e-3).abs() < 1e-15, "{step:?}");
        assert!((mgda.weights()[1] - 1.999).abs() < 1e-12, "{step:?}");
    }

    #[test]
    fn pairs_match_the_papers_closed_form_line_search() {
        let mut rng = Lcg(5);
        for _ in 0..200 {
            let v1: Vec<f64> = (0..4).map(|_| rng.next()).collect();
            let v2: Vec<f64> = (0..4).map(|_| rng.next()).collect();
            let m = gram_of(&[&v1, &v2]);
            // the weight of v₁ on the segment's nearest point to the origin
            let gamma = ((m[1][1] - m[0][1]) / (m[0][0] + m[1][1] - 2.0 * m[0][1])).clamp(0.0, 1.0);
            let sol = min_norm_simplex(&m).unwrap();
            assert!((sol.alphas[0] - gamma).abs() < 1e-6, "{gamma} vs {sol:?}");
            assert_kkt(&m, &sol);
        }
    }

    #[test]
    fn three_tasks_satisfy_kkt_and_match_a_grid_search() {
        // all three active: the nearest point lies inside the triangle
        let interior = gram_of(&[&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0], &[-0.5, -0.5, 1.0]]);
        // one inactive: g₃ points away, beyond g₁ and g₂'s segment
        let boundary = gram_of(&[&[1.0, 0.2, 0.0], &[0.1, 1.0, 0.0], &[2.0, 2.0, 0.5]]);
        let mut cases = vec![interior.clone(), boundary.clone()];
        let mut rng = Lcg(11);
        for _ in 0..300 {
            let g: Vec<Vec<f64>> = (0..3)
                .map(|_| (0..5).map(|_| rng.next()).collect())
                .collect();
            cases.push(gram_of(&[&g[0], &g[1], &g[2]]));
        }
        let sol = min_norm_simplex(&interior).unwrap();
        assert!(sol.alphas.iter().all(|&a| a > 0.05), "{sol:?}");
        let sol = min_norm_simplex(&boundary).unwrap();
        assert_eq!(sol.alphas[2], 0.0, "{sol:?}");
        let mut some_inactive = 0;
        for (k, m) in cases.iter().enumerate() {
            let sol = min_norm_simplex(m).unwrap();
            assert_kkt(m, &sol);
            some_inactive += sol.alphas.contains(&0.0) as usize;
            if k < 40 {
                let scale = (0..3).map(|i| m[i][i]).fold(0.0, f64::max);
                let grid = grid_min(m, 400);
                assert!(
                    sol.value <= grid + 1e-9 * scale,
                    "{} > grid {grid}",
                    sol.value
                );
                // the grid's spacing is 1/400 and it includes the faces: its minimum is within O(spacing²)
                // of the exact one
                assert!(
                    grid - sol.value < 1e-4 * scale,
                    "{} vs grid {grid}",
                    sol.value
                );
            }
        }
        assert!(
            some_inactive > 10,
            "the random cases reach the boundary too"
        );
    }

    #[test]
    fn identical_gradients_get_equal_weights() {
        let g = [0.5f32, -1.0, 2.0];
        for normalisation in [
            GradientNormalisation::None,
            GradientNormalisation::L2,
            GradientNormalisation::Loss,
            GradientNormalisation::LossL2,
        ] {
            let mut mgda = Mgda::new(MgdaConfig::new().with_normalisation(normalisation), 3);
            let step = mgda.update(&[g, g, g], &[0.7, 0.7, 0.7]);
            assert_eq!(step.skipped, None, "{normalisation:?}");
            for w in mgda.weights() {
                assert!((w - 1.0).abs() < 1e-6, "{normalisation:?}: {step:?}");
            }
        }
        // two identical and one orthogonal: the pair shares the half the third gets
        let mut mgda = Mgda::new(MgdaConfig::new(), 3);
        mgda.update(&[[1.0f32, 0.0], [1.0, 0.0], [0.0, 3.0]], &[1.0; 3]);
        let w = mgda.weights();
        for (w, want) in w.iter().zip([0.75, 0.75, 1.5]) {
            assert!((w - want).abs() < 1e-6, "{w} vs {want}");
        }
    }

    #[test]
    fn a_zero_gradient_is_left_out_and_floored() {
        let mut mgda = Mgda::new(MgdaConfig::new(), 3);
        let step = mgda.update(&[[2.0f32, 0.0], [0.0, 0.5], [0.0, 0.0]], &[1.0, 1.0, 1.0]);
        assert_eq!(step.skipped, None);
        assert_eq!(step.zero_gradient, vec![2]);
        assert!((step.alphas[0] - 0.5).abs() < 1e-9 && (step.alphas[1] - 0.5).abs() < 1e-9);
        assert_eq!(step.alphas[2], 0.0);
        let w = mgda.weights();
        // 3·(½, ½, 0) → the third raised to 1e-3, the others share 2.999
        assert!((w[2] - 1e-3).abs() < 1e-15, "{w:?}");
        assert!(
            (w[0] - 1.4995).abs() < 1e-9 && (w[1] - 1.4995).abs() < 1e-9,
            "{w:?}"
        );
        assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-12);

        // a zero loss under `loss` normalisation makes ĝ unbounded: left out as well
        let mut mgda = Mgda::new(
            MgdaConfig::new().with_normalisation(GradientNormalisation::Loss),
            3,
        );
        let step = mgda.update(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &[1.0, 2.0, 0.0]);
        assert_eq!(step.zero_gradient, vec![2]);
        assert!(mgda.weights().iter().all(|w| w.is_finite()));

        // every gradient zero: nothing to balance, the weights stay
        let mut mgda = Mgda::new(MgdaConfig::new(), 3);
        let step = mgda.update(&[[0.0f32; 4]; 3], &[1.0; 3]);
        assert_eq!(
            step.skipped.as_deref(),
            Some("every task's gradient is zero")
        );
        assert_eq!(mgda.weights(), &[1.0, 1.0, 1.0]);
    }

    #[test]
    fn non_finite_inputs_keep_the_previous_weights() {
        let mut mgda = Mgda::new(
            MgdaConfig::new().with_normalisation(GradientNormalisation::LossL2),
            3,
        );
        let good = [[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.6, 0.3]];
        mgda.update(&good, &[1.0, 0.5, 2.0]);
        let before = mgda.weights().to_vec();
        assert!(before.iter().all(|w| w.is_finite()));
        assert!(before.iter().any(|w| (w - 1.0).abs() > 1e-3), "{before:?}");

        let mut nan = good;
        nan[1][2] = f32::NAN;
        let step = mgda.update(&nan, &[1.0, 0.5, 2.0]);
        assert_eq!(
            step.skipped.as_deref(),
            Some("non-finite gradient for task 1")
        );
        assert_eq!(step.weights_after, before);
        assert_eq!(mgda.weights(), before.as_slice());

        let mut inf = good;
        inf[0][0] = f32::INFINITY;
        assert!(mgda.update(&inf, &[1.0; 3]).skipped.is_some());
        let step = mgda.update(&good, &[1.0, f64::NAN, 2.0]);
        assert_eq!(step.skipped.as_deref(), Some("non-finite loss for task 1"));
        // wrong shapes are reported, not panicked on
        assert!(mgda.update(&good[..2], &[1.0; 3]).skipped.is_some());
        let ragged: Vec<Vec<f32>> = vec![vec![1.0, 0.0], vec![0.0], vec![1.0, 1.0]];
        assert!(mgda.update(&ragged, &[1.0; 3]).skipped.is_some());
        assert!(mgda.update(&good, &[1.0]).skipped.is_some());
        assert_eq!(mgda.weights(), before.as_slice());

        assert_eq!(min_norm_simplex(&[]), None);
        assert_eq!(
            min_norm_simplex(&[vec![1.0, f64::NAN], vec![0.0, 1.0]]),
            None
        );
        assert_eq!(min_norm_simplex(&[vec![1.0, 0.0]]), None);
        let zero = min_norm_simplex(&[vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]]).unwrap();
        assert_eq!(zero.value, 0.0);
        assert!(zero.alphas.iter().all(|a| (a - 1.0 / 3.0).abs() < 1e-15));
    }

    #[test]
    fn the_floor_keeps_weights_summing_to_the_task_count() {
        let w = floored_weights(&[1.0, 0.0, 0.0], 1e-3);
        assert_eq!(w[1], 1e-3);
        assert_eq!(w[2], 1e-3);
        assert!((w[0] - 2.998).abs() < 1e-12, "{w:?}");
        // 3·α = (2.4, 0.45, 0.15): raising the last to 0.42 scales the second down to 0.407, under the
        // floor too, so both end on it
        let w = floored_weights(&[0.8, 0.15, 0.05], 0.42);
        assert!(
            (w[1] - 0.42).abs() < 1e-12 && (w[2] - 0.42).abs() < 1e-12,
            "{w:?}"
        );
        assert!((w[0] - 2.16).abs() < 1e-12, "{w:?}");
        for floor in [0.0, 0.5, 1.0, 7.0, f64::NAN, -1.0] {
            let w = floored_weights(&[0.2, 0.3, 0.5], floor);
            assert!(
                (w.iter().sum::<f64>() - 3.0).abs() < 1e-12,
                "{floor}: {w:?}"
            );
            assert!(
                w.iter().all(|w| w.is_finite() && *w >= 0.0),
                "{floor}: {w:?}"
            );
        }
        assert_eq!(floored_weights(&[0.2, 0.3, 0.5], 1.0), vec![1.0; 3]);
    }

    #[test]
    fn an_mgda_balancer_survives_a_serde_round_trip() {
        let mut mgda = Mgda::new(
            MgdaConfig::new()
                .with_normalisation(GradientNormalisation::LossL2)
                .with_min_weight(0.01),
            3,
        );
        mgda.update(&[[1.0f32, 0.0], [0.0, 1.0], [0.7, 0.7]], &[1.0, 2.0, 3.0]);
        let balancer = TaskBalancer::Mgda(mgda.clone());
        let json = serde_json::to_string(&balancer).unwrap();
        assert!(json.contains("\"loss+\""), "{json}");
        let back: TaskBalancer = serde_json::from_str(&json).unwrap();
        let TaskBalancer::Mgda(back) = back else {
            panic!("not MGDA: {json}");
        };
        assert_eq!(back.weights(), mgda.weights());
        assert_eq!(back.config(), mgda.config());
        assert_eq!(back.weights().len(), 3);

        // the other variants read as they did before MGDA existed
        let fixed: TaskBalancer = serde_json::from_str(r#"{"Fixed":[1.0,2.0,0.5]}"#).unwrap();
        assert_eq!(fixed.weights(), &[1.0, 2.0, 0.5]);
        let gn = TaskBalancer::GradNorm(GradNorm::new(GradNormConfig::new(), 3));
        let back: TaskBalancer =
            serde_json::from_str(&serde_json::to_string(&gn).unwrap()).unwrap();
        assert!(matches!(back, TaskBalancer::GradNorm(_)));
    }
}
