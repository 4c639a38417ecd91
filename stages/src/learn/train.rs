//! The `train` sink: batches samples in feed order and trains the MTMed3D multi-task model.
//!
//! ```yaml
//! sinks:
//!   - train:
//!       out: runs/demo-train            # last.ckpt, best.ckpt, history.jsonl, curves.svg
//!       preset: tiny
//!       batch_size: 2
//!       lr: {encoder: 2e-3, segmentation: 2e-3, classification: 2e-3, detection: 2e-3}
//!       validation: configs/demo-val.yaml
//! ```
//!
//! The pipeline's other threads decode and augment while the model steps; the sink measures the time it
//! waited for its next sample against the time it spent stepping, and writes the fraction per epoch.
//!
//! **Order.** Samples are consumed in feed order (`Sample::seq`), whatever order the threads deliver them
//! in, so the batches — and the weights — depend only on the pipeline and its seed.
//!
//! **Resume.** `resume: runs/x/last.ckpt` restores the weights, the optimizers' moments, the task
//! balancer, the schedule and the position in the feed; the samples before that position are skipped as
//! they arrive (the pipeline recomputes them: their augmentations depend only on seed, epoch and case, so
//! the data that follows is the data the interrupted run would have seen). The training loop itself draws
//! no random numbers; the model's initial weights come from the pipeline's seed.
//!
//! **Learning-rate schedule.** Cosine from the configured rates to `min_lr_fraction` of them over
//! `epochs × steps per epoch`, stepped every batch. Steps per epoch: the `steps_per_epoch` parameter when
//! given; otherwise ⌈cases per epoch / batch_size⌉ from the run's case list, corrected at the end of the
//! first epoch to the steps it really took (stages that emit several pieces per case, or drop cases,
//! change it); when neither is known the first epoch runs at the full rate.

#[path = "train_data.rs"]
mod data;
#[path = "train_reorder.rs"]
pub mod reorder;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use mtmed3d_model::balance::{
    GradNorm, GradNormConfig, GradientNormalisation, Mgda, MgdaConfig, TaskBalancer,
};
use mtmed3d_model::burn::tensor::backend::AutodiffBackend;
use mtmed3d_model::checkpoint;
use mtmed3d_model::training::{PartRates, Trainer, cosine_factor, seeded_init};
use mtmed3d_model::{ModelConfig, MultiTaskModel};
use mtmed3d_pipeline::{
    BuildContext, Component, FinishContext, Problem, Sample, Sink, SinkConfig, StageContext,
    StageError,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use data::{Prepared, ValidationMetrics};

/// Trains the multi-task model (segmentation, grade, detection) on the samples it receives.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// Run directory: `last.ckpt` (every checkpoint), `best.ckpt` (best validation score, or lowest
    /// epoch loss without validation), `history.jsonl` (one line per step, epoch and validation,
    /// flushed as it goes) and `curves.svg` (the history drawn after every epoch).
    pub out: PathBuf,
    /// Model preset: `tiny` (32³ inputs, trains on a laptop) or `reference` (96³, the paper's model).
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Changes to the preset, merged into its JSON configuration (e.g. `{loss: {seg_bce_weight: 0.5}}`).
    #[serde(default)]
    pub overrides: Option<serde_json::Value>,
    /// `cpu` (burn's flex backend) or `cuda:N` (needs a build with the `cuda` feature).
    #[serde(default = "default_device")]
    pub device: String,
    /// Samples per step. The last batch of an epoch may be smaller.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// AdamW learning rate per model part (defaults: the reference's 1e-4 for encoder and segmentation,
    /// 1e-5 for classification and detection).
    #[serde(default)]
    pub lr: LearningRates,
    /// AdamW weight decay (the reference: 0.01).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f32,
    /// The cosine schedule ends at this fraction of each learning rate.
    #[serde(default)]
    pub min_lr_fraction: f64,
    /// Steps per epoch for sizing the schedule (default: from the case count, see the module docs).
    #[serde(default)]
    pub steps_per_epoch: Option<usize>,
    /// Task balancing: `gradnorm` (weights adapted to equalise training rates), `mgda` (MGDA-UB: the
    /// weights of the min-norm combination of the task gradients, solved afresh at each update) or
    /// `fixed`.
    #[serde(default)]
    pub balance: Balance,
    /// Task weights [segmentation, classification, detection] for `fixed` balancing.
    #[serde(default = "default_task_weights")]
    pub task_weights: Vec<f64>,
    /// GradNorm asymmetry α.
    #[serde(default = "default_alpha")]
    pub gradnorm_alpha: f64,
    /// Learning rate of GradNorm's weights.
    #[serde(default = "default_gradnorm_lr")]
    pub gradnorm_lr: f64,
    /// MGDA's gradient normalisation: `l2` (the default: only the gradients' directions count),
    /// `loss`, `loss+` (by loss and norm) or `none`.
    #[serde(default)]
    pub mgda_normalisation: MgdaNormalisation,
    /// MGDA's smallest task weight, within [0, 1] (the weights sum to 3).
    #[serde(default = "default_mgda_min_weight")]
    pub mgda_min_weight: f64,
    /// Run a GradNorm or MGDA update every this many steps (each costs a decoder pass per task); the
    /// steps between keep the last weights.
    #[serde(default = "one")]
    pub gradnorm_every: usize,
    /// A pipeline file whose samples are the validation set: run once at start (its sinks are
    /// replaced by an in-memory collector, one epoch), then the model is evaluated on it. Samples must
    /// have the model's input size (use `crop` with a fixed `size`). When the training pipeline has
    /// a `split`, a validation pipeline without one gets it with `part: val` (its own fold).
    #[serde(default)]
    pub validation: Option<PathBuf>,
    /// Validate after every this many epochs (and after the last).
    #[serde(default = "one_u32")]
    pub validate_every: u32,
    /// Also write `last.ckpt` every this many steps (0: at epoch ends only).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// A training checkpoint (`last.ckpt`) to continue from.
    #[serde(default)]
    pub resume: Option<PathBuf>,
    /// Stop (with an error) right after this many steps, as if the process were killed; for testing
    /// resume. Nothing is written after the stop.
    #[serde(default)]
    pub stop_after_steps: Option<usize>,
    /// The image field (C×X×Y×Z f32).
    #[serde(default = "default_image")]
    pub image: String,
    /// The region masks (3×X×Y×Z u8: TC, WT, ET, as `brats_regions` writes them).
    #[serde(default = "default_label")]
    pub label: String,
    /// The boxes field (as `boxes` writes it).
    #[serde(default = "default_boxes")]
    pub boxes: String,
    /// The metadata attribute holding the grade (`HGG` or `LGG`).
    #[serde(default = "default_grade")]
    pub grade_attr: String,
    /// Samples held back waiting for a missing one (a case that failed upstream) before giving up on it.
    #[serde(default = "default_window")]
    pub reorder_window: usize,
}

/// Learning rates of the model parts.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LearningRates {
    /// The shared Swin encoder.
    pub encoder: f64,
    /// The segmentation decoder.
    pub segmentation: f64,
    /// The classification decoder.
    pub classification: f64,
    /// The detection decoder.
    pub detection: f64,
}

impl Default for LearningRates {
    fn default() -> Self {
        let r = PartRates::REFERENCE;
        LearningRates {
            encoder: r.encoder,
            segmentation: r.segmentation,
            classification: r.classification,
            detection: r.detection,
        }
    }
}

impl LearningRates {
    fn rates(&self) -> PartRates {
        PartRates {
            encoder: self.encoder,
            segmentation: self.segmentation,
            classification: self.classification,
            detection: self.detection,
        }
    }
}

/// How the task losses are weighted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// GradNorm on the last shared encoder layer.
    #[default]
    Gradnorm,
    /// Constant `task_weights`.
    Fixed,
    /// MGDA-UB on the last shared encoder layer.
    Mgda,
}

/// How MGDA normalises each task's gradient before solving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum MgdaNormalisation {
    /// The gradients as they are.
    #[serde(rename = "none")]
    None,
    /// Divided by their norms.
    #[default]
    #[serde(rename = "l2")]
    L2,
    /// Divided by the losses.
    #[serde(rename = "loss")]
    Loss,
    /// Divided by loss times norm.
    #[serde(rename = "loss+")]
    LossL2,
}

impl MgdaNormalisation {
    fn model(self) -> GradientNormalisation {
        match self {
            MgdaNormalisation::None => GradientNormalisation::None,
            MgdaNormalisation::L2 => GradientNormalisation::L2,
            MgdaNormalisation::Loss => GradientNormalisation::Loss,
            MgdaNormalisation::LossL2 => GradientNormalisation::LossL2,
        }
    }
}

fn default_preset() -> String {
    "tiny".into()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_batch() -> usize {
    2
}
fn default_weight_decay() -> f32 {
    0.01
}
fn default_task_weights() -> Vec<f64> {
    vec![1.0; 3]
}
fn default_alpha() -> f64 {
    1.5
}
fn default_gradnorm_lr() -> f64 {
    0.025
}
fn default_mgda_min_weight() -> f64 {
    1e-3
}
fn one() -> usize {
    1
}
fn one_u32() -> u32 {
    1
}
fn default_image() -> String {
    "image".into()
}
fn default_label() -> String {
    "label".into()
}
fn default_boxes() -> String {
    "boxes".into()
}
fn default_grade() -> String {
    "grade".into()
}
fn default_window() -> usize {
    64
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// burn's flex backend.
    Cpu,
    /// burn's CUDA backend, device index.
    Cuda(usize),
}

impl Device {
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(text: &str) -> Result<Device, String> {
        match text.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            t => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("device `{text}`: write `cpu`, `cuda` or `cuda:N`")),
        }
    }
}

impl Train {
    /// The preset with `overrides` merged in.
    pub fn model_config(&self) -> Result<ModelConfig, String> {
        let base = ModelConfig::preset(&self.preset).map_err(|e| e.to_string())?;
        let Some(overrides) = &self.overrides else {
            return Ok(base);
        };
        let mut value = serde_json::to_value(&base).map_err(|e| e.to_string())?;
        merge(&mut value, overrides);
        let config: ModelConfig = serde_json::from_value(value)
            .map_err(|e| format!("`overrides` do not fit the `{}` preset: {e}", self.preset))?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn balancer(&self) -> TaskBalancer {
        match self.balance {
            Balance::Fixed => TaskBalancer::Fixed(self.task_weights.clone()),
            Balance::Gradnorm => TaskBalancer::GradNorm(GradNorm::new(
                GradNormConfig::new()
                    .with_alpha(self.gradnorm_alpha)
                    .with_learning_rate(self.gradnorm_lr),
                3,
            )),
            Balance::Mgda => TaskBalancer::Mgda(Mgda::new(
                MgdaConfig::new()
                    .with_normalisation(self.mgda_normalisation.model())
                    .with_min_weight(self.mgda_min_weight),
                3,
            )),
        }
    }
}

fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

impl Component for Train {
    const NAME: &'static str = "train";
    const DOC: &'static str = "Trains the MTMed3D multi-task model on the samples (in feed order): AdamW per part, cosine schedule, GradNorm, MGDA or fixed task weights, validation, atomic checkpoints, exact resume, history with data-wait fraction.";

    fn reads(&self) -> Vec<String> {
        vec![self.image.clone(), self.label.clone(), self.boxes.clone()]
    }

    fn outputs(&self) -> Vec<PathBuf> {
        vec![self.out.clone()]
    }

    fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Err(e) = self.model_config() {
            let param = if self.overrides.is_some() && ModelConfig::preset(&self.preset).is_ok() {
                "overrides"
            } else {
                "preset"
            };
            p.push(Problem::param(param, e));
        }
        if let Err(e) = Device::parse(&self.device) {
            p.push(Problem::param("device", e));
        }
        if self.batch_size == 0 {
            p.push(Problem::param(
                "batch_size",
                "`batch_size` must be at least 1",
            ));
        }
        let r = self.lr;
        if [r.encoder, r.segmentation, r.classification, r.detection]
            .iter()
            .any(|v| !(v.is_finite() && *v >= 0.0))
        {
            p.push(Problem::param(
                "lr",
                "learning rates must be finite and ≥ 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_fraction) {
            p.push(Problem::param(
                "min_lr_fraction",
                "`min_lr_fraction` must be within [0, 1]",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            p.push(Problem::param(
                "weight_decay",
                "`weight_decay` must be finite and ≥ 0",
            ));
        }
        if self.task_weights.len() != 3 || self.task_weights.iter().any(|w| !w.is_finite()) {
            p.push(Problem::param(
                "task_weights",
                "`task_weights` needs 3 finite numbers: segmentation, classification, detection",
            ));
        }
        if !(self.mgda_min_weight.is_finite() && (0.0..=1.0).contains(&self.mgda_min_weight)) {
            p.push(Problem::param(
                "mgda_min_weight",
                "`mgda_min_weight` must be within [0, 1] (the 3 weights sum to 3)",
            ));
        }
        if self.steps_per_epoch == Some(0) {
            p.push(Problem::param(
                "steps_per_epoch",
                "`steps_per_epoch` must be at least 1",
            ));
        }
        if self.validate_every == 0 || self.gradnorm_every == 0 || self.reorder_window == 0 {
            p.push(Problem::param(
                "validate_every",
                "`validate_every`, `gradnorm_every` and `reorder_window` must be at least 1",
            ));
        }
        p
    }
}

impl SinkConfig for Train {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Sink>, StageError> {
        let problems = self.check();
        if let Some(first) = problems.first() {
            return Err(StageError::new(first.message.clone()));
        }
        let device = Device::parse(&self.device).map_err(StageError::new)?;
        let engine: Box<dyn Engine> = match device {
            Device::Cpu => Box::new(Loop::<mtmed3d_model::CpuAutodiff>::new(
                self.clone(),
                ctx,
                Default::default(),
            )?),
            #[cfg(feature = "cuda")]
            Device::Cuda(index) => Box::new(Loop::<mtmed3d_model::CudaAutodiff>::new(
                self.clone(),
                ctx,
                mtmed3d_model::cuda_device(index).map_err(StageError::new)?,
            )?),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => {
                return Err(StageError::new(format!(
                    "device `{}` needs a build with CUDA support: `cargo build --release --features cuda` \
                     (or train with `device: cpu`)",
                    self.device
                )));
            }
        };
        Ok(Box::new(TrainSink {
            engine: Mutex::new(engine),
        }))
    }
}

/// The part of the training loop that does not depend on the backend's type.
trait Engine: Send {
    fn accept(&mut self, sample: Sample) -> Result<(), StageError>;
    fn finish(&mut self, complete: bool) -> Result<(), StageError>;
}

struct TrainSink {
    engine: Mutex<Box<dyn Engine>>,
}

impl Sink for TrainSink {
    fn write(&self, sample: Sample, _ctx: &StageContext) -> Result<(), StageError> {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(sample)
    }

    fn finish(&self, ctx: &FinishContext) -> Result<(), StageError> {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish(ctx.complete)
    }
}

/// Bookkeeping saved in every checkpoint, so a resumed run continues where the checkpoint was taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    /// First feed position not yet trained on.
    next_seq: u64,
    /// Epoch in progress (or just completed, when `epoch_complete`).
    epoch: u32,
    epoch_complete: bool,
    epoch_steps: usize,
    epoch_samples: usize,
    epoch_loss_sums: [f64; 3],
    epoch_wait_s: f64,
    epoch_busy_s: f64,
    /// Steps per epoch used to size the schedule, once known.
    steps_per_epoch: Option<usize>,
    best_score: Option<f64>,
    /// Length of `history.jsonl` at the checkpoint (a resumed run cuts the file back to it).
    history_bytes: u64,
    /// Checked on resume: another seed or batch size would change the data order.
    seed: u64,
    batch_size: usize,
}

struct Loop<B: AutodiffBackend> {
    params: Train,
    model_config: ModelConfig,
    device: B::Device,
    model: Option<MultiTaskModel<B>>,
    trainer: Trainer<B>,
    reorder: reorder::Reorder<Option<Prepared>>,
    batch: Vec<(u64, Prepared)>,
    progress: Progress,
    epochs: u32,
    validation: Vec<Prepared>,
    history: fs::File,
    history_path: PathBuf,
    last_return: Option<Instant>,
    stopped: bool,
    skipped_reported: usize,
}

impl<B: AutodiffBackend> Loop<B> {
    fn new(params: Train, ctx: &BuildContext, device: B::Device) -> Result<Self, StageError> {
        let model_config = params.model_config().map_err(StageError::new)?;
        fs::create_dir_all(&params.out).map_err(|e| StageError::file(&params.out, e))?;
        let validation = match &params.validation {
            Some(path) => {
                data::collect_validation(path, &params, &model_config, ctx.split.as_ref())?
            }
            None => Vec::new(),
        };
        let history_path = params.out.join("history.jsonl");
        let (model, trainer, progress) = match &params.resume {
            Some(path) => {
                let ck = checkpoint::load_training::<B>(path, &model_config, &device)
                    .map_err(|e| StageError::new(format!("cannot resume: {e}")))?;
                let progress: Progress = serde_json::from_value(ck.state).map_err(|e| {
                    StageError::new(format!(
                        "cannot resume from {}: its training state does not parse ({e}); was it written by `train`?",
                        path.display()
                    ))
                })?;
                if progress.seed != ctx.seed || progress.batch_size != params.batch_size {
                    return Err(StageError::new(format!(
                        "cannot resume from {}: it was trained with seed {} and batch_size {}, this run has seed {} and batch_size {} \
                         (the data order would differ; use the same values)",
                        path.display(),
                        progress.seed,
                        progress.batch_size,
                        ctx.seed,
                        params.batch_size
                    )));
                }
                (ck.model, ck.trainer, progress)
            }
            None => {
                let model = seeded_init::<B>(&model_config, &device, ctx.seed)
                    .map_err(|e| StageError::new(e.to_string()))?;
                let mut trainer =
                    Trainer::new(model_config.clone(), params.balancer(), params.weight_decay);
                trainer.gradnorm_every = params.gradnorm_every;
                let progress = Progress {
                    seed: ctx.seed,
                    batch_size: params.batch_size,
                    steps_per_epoch: params.steps_per_epoch.or_else(|| {
                        ctx.cases_per_epoch
                            .filter(|&n| n > 0)
                            .map(|n| n.div_ceil(params.batch_size))
                    }),
                    ..Progress::default()
                };
                (model, trainer, progress)
            }
        };
        let history = open_history(
            &history_path,
            progress.history_bytes,
            params.resume.is_some(),
        )?;
        Ok(Loop {
            reorder: reorder::Reorder::new(progress.next_seq, params.reorder_window),
            model_config,
            device,
            model: Some(model),
            trainer,
            batch: Vec::new(),
            progress,
            epochs: ctx.epochs.max(1),
            validation,
            history,
            history_path,
            last_return: None,
            stopped: false,
            skipped_reported: 0,
            params,
        })
    }

    fn log(&mut self, line: serde_json::Value) -> Result<(), StageError> {
        let mut text = line.to_string();
        text.push('\n');
        self.history
            .write_all(text.as_bytes())
            .and_then(|()| self.history.flush())
            .map_err(|e| StageError::file(&self.history_path, e))?;
        self.progress.history_bytes += text.len() as u64;
        Ok(())
    }

    /// Consumes the samples that may be released, in feed order.
    fn drain(&mut self, ended: bool) -> Result<(), StageError> {
        while let Some((seq, item)) = self.reorder.pop(ended) {
            if self.reorder.skipped.len() > self.skipped_reported {
                let missing = &self.reorder.skipped[self.skipped_reported..];
                tracing::warn!(
                    "train: feed positions {missing:?} never arrived (failed upstream?); training goes on without them"
                );
                self.skipped_reported = self.reorder.skipped.len();
            }
            let Some(item) = item else { continue };
            if item.epoch > self.progress.epoch {
                if !self.progress.epoch_complete {
                    self.end_epoch()?;
                }
                self.progress = Progress {
                    epoch: item.epoch,
                    epoch_complete: false,
                    epoch_steps: 0,
                    epoch_samples: 0,
                    epoch_loss_sums: [0.0; 3],
                    epoch_wait_s: 0.0,
                    epoch_busy_s: 0.0,
                    ..self.progress.clone()
                };
            }
            self.batch.push((seq, item));
            if self.batch.len() == self.params.batch_size {
                self.step()?;
            }
            if self.stopped {
                return Ok(());
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), StageError> {
        let batch = std::mem::take(&mut self.batch);
        let Some(&(last_seq, _)) = batch.last() else {
            return Ok(());
        };
        let items: Vec<&Prepared> = batch.iter().map(|(_, p)| p).collect();
        let (image, targets) = data::to_tensors::<B>(&items, &self.device);
        let total = self
            .progress
            .steps_per_epoch
            .map_or(0, |spe| spe * self.epochs as usize);
        let factor = cosine_factor(self.trainer.steps(), total, self.params.min_lr_fraction);
        let rates = self.params.lr.rates().scaled(factor);
        let started = Instant::now();
        let model = self.model.take().expect("model present between steps");
        let (model, report) = self.trainer.step_parts(model, image, &targets, rates);
        self.model = Some(model);
        let step_s = started.elapsed().as_secs_f64();
        let ids: Vec<&str> = items.iter().map(|p| p.id.as_str()).collect();
        if report.losses.iter().any(|l| !l.is_finite()) {
            return Err(StageError::new(format!(
                "training diverged at step {}: losses {:?} on {ids:?} (lower the learning rates)",
                self.trainer.steps(),
                report.losses
            )));
        }
        self.progress.next_seq = self.progress.next_seq.max(last_seq + 1);
        self.progress.epoch_steps += 1;
        self.progress.epoch_samples += items.len();
        for (sum, l) in self.progress.epoch_loss_sums.iter_mut().zip(report.losses) {
            *sum += l;
        }
        let line = serde_json::json!({
            "kind": "step",
            "step": self.trainer.steps(),
            "epoch": self.progress.epoch,
            "samples": ids,
            "lr": rates,
            "losses": {"seg": report.losses[0], "cls": report.losses[1], "det": report.losses[2]},
            "total": report.losses.iter().sum::<f64>(),
            "weights": report.weights,
            "weighted_total": report.weighted_total,
            "step_s": step_s,
        });
        self.log(line)?;
        let steps = self.trainer.steps();
        if self.params.checkpoint_every > 0 && steps.is_multiple_of(self.params.checkpoint_every) {
            self.save("last.ckpt")?;
        }
        if self.params.stop_after_steps == Some(steps) {
            self.stopped = true;
            return Err(StageError::new(format!(
                "stopped after {steps} steps as `stop_after_steps` asks (resume from {})",
                self.params.out.join("last.ckpt").display()
            )));
        }
        Ok(())
    }

    fn end_epoch(&mut self) -> Result<(), StageError> {
        if !self.batch.is_empty() {
            self.step()?;
            if self.stopped {
                return Ok(());
            }
        }
        let p = &self.progress;
        let steps = p.epoch_steps.max(1) as f64;
        let mean = p.epoch_loss_sums.map(|s| s / steps);
        let waited = p.epoch_wait_s + p.epoch_busy_s;
        let fraction = if waited > 0.0 {
            p.epoch_wait_s / waited
        } else {
            0.0
        };
        let line = serde_json::json!({
            "kind": "epoch",
            "epoch": p.epoch,
            "steps": p.epoch_steps,
            "samples": p.epoch_samples,
            "mean_losses": {"seg": mean[0], "cls": mean[1], "det": mean[2]},
            "mean_total": mean.iter().sum::<f64>(),
            "wait_s": p.epoch_wait_s,
            "busy_s": p.epoch_busy_s,
            "data_wait_fraction": fraction,
        });
        tracing::info!(
            "train: epoch {} done: {} steps, mean loss {:.4}, data-wait {:.0}%",
            p.epoch,
            p.epoch_steps,
            mean.iter().sum::<f64>(),
            fraction * 100.0
        );
        let epoch_loss = mean.iter().sum::<f64>();
        if p.epoch == 0 && self.params.steps_per_epoch.is_none() && p.epoch_steps > 0 {
            // the real count (pieces per case, dropped cases) replaces the estimate from the case list
            self.progress.steps_per_epoch = Some(p.epoch_steps);
        }
        self.log(line)?;
        let epoch = self.progress.epoch;
        let last_epoch = epoch + 1 >= self.epochs;
        let mut score = None;
        if !self.validation.is_empty()
            && ((epoch + 1).is_multiple_of(self.params.validate_every) || last_epoch)
        {
            let model = self.model.as_ref().expect("model present");
            let m = data::validate(
                model,
                &self.validation,
                self.params.batch_size,
                &self.device,
            );
            let s = m.score();
            let line = serde_json::json!({
                "kind": "validation",
                "epoch": epoch,
                "step": self.trainer.steps(),
                "cases": m.cases,
                "dice": {"TC": m.dice[0], "WT": m.dice[1], "ET": m.dice[2]},
                "grade_accuracy": m.accuracy,
                "score": s,
            });
            tracing::info!(
                "train: validation after epoch {epoch}: Dice WT {:.3} TC {:.3} ET {:.3}, grade accuracy {:.3}",
                m.dice[1],
                m.dice[0],
                m.dice[2],
                m.accuracy
            );
            self.log(line)?;
            score = Some(s);
        } else if self.validation.is_empty() {
            score = Some(-epoch_loss);
        }
        self.progress.epoch_complete = true;
        let curves = self.params.out.join("curves.svg");
        if let Err(e) = crate::eval::curves::write_svg(&self.history_path, &curves) {
            // the curves are a view of the history, which is complete: training goes on
            tracing::warn!("train: curves not drawn: {e}");
        }
        if let Some(s) = score
            && self.progress.best_score.is_none_or(|b| s > b)
        {
            self.progress.best_score = Some(s);
            self.save("best.ckpt")?;
        }
        self.save("last.ckpt")
    }

    fn save(&mut self, name: &str) -> Result<(), StageError> {
        let path = self.params.out.join(name);
        let state =
            serde_json::to_value(&self.progress).map_err(|e| StageError::new(e.to_string()))?;
        let model = self.model.as_ref().expect("model present");
        checkpoint::save_training(model, &self.trainer, &state, &path)
            .map_err(|e| StageError::new(e.to_string()))
    }
}

impl<B: AutodiffBackend> Engine for Loop<B> {
    fn accept(&mut self, sample: Sample) -> Result<(), StageError> {
        let arrived = Instant::now();
        if let Some(last) = self.last_return {
            self.progress.epoch_wait_s += arrived.duration_since(last).as_secs_f64();
        }
        let result = if self.stopped || sample.seq < self.progress.next_seq {
            // already trained on before the checkpoint this run resumed from (or stopped)
            Ok(())
        } else {
            let (seq, id) = (sample.seq, sample.id.clone());
            match Prepared::from_sample(&sample, &self.params, &self.model_config) {
                Ok(p) => {
                    self.reorder.push(seq, id, Some(p));
                    self.drain(false)
                }
                Err(e) => {
                    // a placeholder keeps the order moving without waiting for the window
                    self.reorder.push(seq, id, None);
                    self.drain(false).and(Err(e))
                }
            }
        };
        let done = Instant::now();
        self.progress.epoch_busy_s += done.duration_since(arrived).as_secs_f64();
        self.last_return = Some(done);
        result
    }

    fn finish(&mut self, complete: bool) -> Result<(), StageError> {
        if self.stopped || !complete {
            // like a killed process: the last checkpoint stays what it was
            return Ok(());
        }
        self.drain(true)?;
        if self.stopped {
            return Ok(());
        }
        if !self.progress.epoch_complete
            && (self.progress.epoch_steps > 0 || !self.batch.is_empty())
        {
            self.end_epoch()?;
        }
        Ok(())
    }
}

fn open_history(path: &Path, keep: u64, resumed: bool) -> Result<fs::File, StageError> {
    let err = |e| StageError::file(path, e);
    if resumed {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        // lines written after the checkpoint belong to steps the resumed run does again
        let len = file.metadata().map_err(err)?.len();
        file.set_len(keep.min(len)).map_err(err)?;
        drop(file);
        fs::OpenOptions::new().append(true).open(path).map_err(err)
    } else {
        fs::File::create(path).map_err(err)
    }
}

/// The largest absolute difference between the weights of two checkpoints of one configuration, and
/// the index of the parameter where it occurs (for checking that a resumed run matches an uninterrupted
/// one).
pub fn checkpoint_difference(a: &Path, b: &Path) -> Result<(f64, usize), String> {
    type Cpu = mtmed3d_model::CpuBackend;
    let device = Default::default();
    let (ma, config) =
        checkpoint::load_with_stored_config::<Cpu>(a, &device).map_err(|e| e.to_string())?;
    let mb = checkpoint::load::<Cpu>(b, &config, &device).map_err(|e| e.to_string())?;
    Ok(mtmed3d_model::training::max_parameter_difference(&ma, &mb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtmed3d_pipeline::{Diagnostic, DiagnosticKind, config};

    /// The `train` sink with `params` after the preprocessing its fields need.
    fn parse(params: &str) -> Result<mtmed3d_pipeline::Plan, Vec<Diagnostic>> {
        let yaml = format!(
            "source:\n  phantom: {{cases: 2, shape: [32, 32, 32]}}\nstages:\n  - brats_regions: {{}}\n  \
             - boxes: {{from: WT}}\nsinks:\n  - train: {{out: run, {params}}}\n"
        );
        config::parse_str(&yaml, Path::new("p.yaml"), &[], &crate::registry()).map_err(|d| d.items)
    }

    fn only_error(params: &str) -> Diagnostic {
        let Err(mut errors) = parse(params) else {
            panic!("`{params}` was accepted");
        };
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.remove(0)
    }

    fn train(params: &str) -> Train {
        let node = mtmed3d_pipeline::yaml::parse(&format!("{{out: run, {params}}}")).unwrap();
        mtmed3d_pipeline::yaml::from_node(&node).unwrap()
    }

    #[test]
    fn mgda_and_its_options_parse() {
        if let Err(errors) = parse(
            "balance: mgda, mgda_normalisation: loss+, mgda_min_weight: 0.01, gradnorm_every: 2",
        ) {
            panic!("refused: {errors:#?}");
        }
        let t = train("balance: mgda, mgda_normalisation: loss+, mgda_min_weight: 0.01");
        assert_eq!(t.balance, Balance::Mgda);
        assert_eq!(t.mgda_normalisation, MgdaNormalisation::LossL2);
        let TaskBalancer::Mgda(m) = t.balancer() else {
            panic!("not MGDA: {:?}", t.balancer());
        };
        assert_eq!(m.config().normalisation, GradientNormalisation::LossL2);
        assert_eq!(m.config().min_weight, 0.01);
        assert_eq!(m.weights(), &[1.0, 1.0, 1.0]);
        for (text, want) in [
            ("none", GradientNormalisation::None),
            ("l2", GradientNormalisation::L2),
            ("loss", GradientNormalisation::Loss),
        ] {
            let t = train(&format!("balance: mgda, mgda_normalisation: {text}"));
            assert_eq!(t.mgda_normalisation.model(), want);
        }
        // the defaults: l2, a floor of 1e-3, as the model's MgdaConfig
        let t = train("balance: mgda");
        let TaskBalancer::Mgda(m) = t.balancer() else {
            panic!("not MGDA");
        };
        assert_eq!(m.config(), &MgdaConfig::new());
    }

    #[test]
    fn wrong_mgda_options_are_refused_with_a_fix() {
        let d = only_error("balance: mgda, mgda_normalization: l2");
        assert_eq!(d.kind, DiagnosticKind::UnknownField);
        assert_eq!(
            d.message,
            "unknown parameter `mgda_normalization` for `train`"
        );
        assert_eq!(
            d.help.as_deref(),
            Some("did you mean `mgda_normalisation`?")
        );

        let d = only_error("balance: mgda, mgda_normalisation: l1");
        assert_eq!(d.kind, DiagnosticKind::InvalidValue);
        assert_eq!(
            d.message,
            "`train`: unknown value `l1`, expected one of `none`, `l2`, `loss` or `loss+`"
        );
        let d = only_error("balance: mgda, mgda_normalisation: los");
        assert_eq!(d.help.as_deref(), Some("did you mean `loss`?"));

        let d = only_error("balance: mgdaa");
        assert!(d.message.contains("unknown value `mgdaa`"), "{}", d.message);
        assert_eq!(d.help.as_deref(), Some("did you mean `mgda`?"));

        let d = only_error("balance: mgda, mgda_min_weight: 1.5");
        assert_eq!(
            d.message,
            "`train`: `mgda_min_weight` must be within [0, 1] (the 3 weights sum to 3)"
        );
    }
}
