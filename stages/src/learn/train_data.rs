//! Samples into model batches, the validation set and its metrics.

use mtmed3d_pipeline::split::{Part, Split};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mtmed3d_model::burn::tensor::backend::{AutodiffBackend, Backend};
use mtmed3d_model::burn::tensor::{Tensor, TensorData};
use mtmed3d_model::decoder::detection::BoxTargets;
use mtmed3d_model::{ModelConfig, MultiTaskModel, Targets};
use mtmed3d_pipeline::registry::Built;
use mtmed3d_pipeline::{
    BuildContext, RunOptions, Sample, Sink, Stage, StageContext, StageError, runtime,
};

use super::Train;

/// One sample, checked and flattened for batching.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Sample id.
    pub id: String,
    /// Epoch it belongs to.
    pub epoch: u32,
    /// `C×X×Y×Z` image values.
    pub image: Vec<f32>,
    /// `3×X×Y×Z` masks in {0, 1}.
    pub masks: Vec<f32>,
    /// Boxes in voxels.
    pub boxes: BoxTargets,
    /// 0 = LGG, 1 = HGG.
    pub grade: usize,
    /// `[C, X, Y, Z]`.
    pub shape: [usize; 4],
}

impl Prepared {
    /// Reads the fields `train` needs, checking them against the model configuration.
    pub fn from_sample(
        sample: &Sample,
        params: &Train,
        config: &ModelConfig,
    ) -> Result<Prepared, StageError> {
        let image = sample.f32(&params.image)?;
        let label = sample.u8(&params.label)?;
        let [x, y, z] = config.input_size;
        let channels = config.encoder.in_channels;
        if image.shape() != [channels, x, y, z] {
            return Err(StageError::new(format!(
                "`{}` has shape {:?} but the `{}` model takes {channels}×{x}×{y}×{z}: crop to the model's input \
                 size before `train` (e.g. `rand_crop: {{size: [{x}, {y}, {z}]}}`)",
                params.image,
                image.shape(),
                config.name
            )));
        }
        let regions = config.segmentation.out_channels;
        if label.shape() != [regions, x, y, z] {
            return Err(StageError::new(format!(
                "`{}` has shape {:?}, expected {regions}×{x}×{y}×{z} region masks (TC, WT, ET): \
                 run `brats_regions` before `train`",
                params.label,
                label.shape()
            )));
        }
        let boxes = sample.boxes(&params.boxes)?;
        let grade = match sample.meta.attrs.get(&params.grade_attr) {
            Some(serde_json::Value::String(g)) if g.eq_ignore_ascii_case("HGG") => 1,
            Some(serde_json::Value::String(g)) if g.eq_ignore_ascii_case("LGG") => 0,
            Some(other) => {
                return Err(StageError::new(format!(
                    "grade attribute `{}` is {other}, expected \"HGG\" or \"LGG\"",
                    params.grade_attr
                )));
            }
            None => {
                return Err(StageError::new(format!(
                    "no grade: the sample has no `{}` attribute (sources such as `brats` with HGG/LGG \
                     folders or a grade CSV set it)",
                    params.grade_attr
                )));
            }
        };
        let image_values: Vec<f32> = image.iter().copied().collect();
        if image_values.iter().any(|v| !v.is_finite()) {
            return Err(StageError::new(format!(
                "`{}` holds NaN or infinite values",
                params.image
            )));
        }
        Ok(Prepared {
            id: sample.id.clone(),
            epoch: sample.epoch,
            image: image_values,
            masks: label.iter().map(|&v| f32::from(u8::from(v > 0))).collect(),
            boxes: BoxTargets {
                boxes: boxes.iter().map(|b| b.corners.map(|c| c as f32)).collect(),
                labels: boxes.iter().map(|b| b.class as usize).collect(),
            },
            grade,
            shape: [channels, x, y, z],
        })
    }
}

/// Stacks prepared samples into an image batch and targets.
pub fn to_tensors<B: Backend>(
    items: &[&Prepared],
    device: &B::Device,
) -> (Tensor<B, 5>, Targets<B>) {
    let [c, x, y, z] = items[0].shape;
    let b = items.len();
    let image: Vec<f32> = items.iter().flat_map(|p| p.image.iter().copied()).collect();
    let masks: Vec<f32> = items.iter().flat_map(|p| p.masks.iter().copied()).collect();
    let regions = masks.len() / (b * x * y * z);
    (
        Tensor::from_data(TensorData::new(image, [b, c, x, y, z]), device),
        Targets {
            seg: Tensor::from_data(TensorData::new(masks, [b, regions, x, y, z]), device),
            grades: items.iter().map(|p| p.grade).collect(),
            boxes: items.iter().map(|p| p.boxes.clone()).collect(),
        },
    )
}

/// Runs the validation pipeline once and keeps its samples (prepared for the model) in memory.
pub fn collect_validation(
    path: &Path,
    params: &Train,
    config: &ModelConfig,
    training_split: Option<&Split>,
) -> Result<Vec<Prepared>, StageError> {
    let registry = crate::registry();
    let fail = |m: String| StageError::new(format!("validation pipeline {}: {m}", path.display()));
    let mut plan = mtmed3d_pipeline::config::load(path, &[], &registry)
        .map_err(|d| fail(format!("invalid:\n{d}")))?;
    if plan.sinks.is_empty() {
        return Err(fail(
            "it needs a sink (e.g. `discard: {}`); its sinks are replaced by an in-memory collector"
                .into(),
        ));
    }
    plan.epochs = 1;
    plan.sinks.truncate(1);
    if plan.split.is_none() {
        // a cross-validated training validates on its own fold
        plan.split = training_split.map(|s| s.with_part(Part::Val));
    }
    let ctx = BuildContext {
        pipeline_name: plan.name.clone(),
        pipeline_file: Some(plan.file.clone()),
        seed: plan.seed,
        epochs: 1,
        ..BuildContext::default()
    };
    let source = match plan
        .source
        .config
        .build(&ctx)
        .map_err(|e| fail(e.message))?
    {
        Built::Source(s) => s,
        _ => return Err(fail("its source is not a source".into())),
    };
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    for p in &plan.stages {
        match p.config.build(&ctx).map_err(|e| fail(e.message))? {
            Built::Stage(s) => stages.push(s),
            _ => return Err(fail(format!("`{}` is not a stage", p.name))),
        }
    }
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink = Collector {
        params: params.clone(),
        config: config.clone(),
        out: collected.clone(),
    };
    let summary = runtime::run_built(
        &plan,
        source,
        stages,
        vec![Box::new(sink)],
        &RunOptions::default(),
    )
    .map_err(|e| fail(e.to_string()))?;
    if !summary.failures.is_empty() {
        let f = &summary.failures[0];
        return Err(fail(format!(
            "{} of its samples failed, first {} in {}: {}",
            summary.failures.len(),
            f.case,
            f.stage,
            f.reason
        )));
    }
    let mut items = std::mem::take(&mut *collected.lock().unwrap_or_else(|p| p.into_inner()));
    if items.is_empty() {
        return Err(fail("it produced no samples".into()));
    }
    items.sort_by(|a: &Prepared, b: &Prepared| a.id.cmp(&b.id));
    Ok(items)
}

struct Collector {
    params: Train,
    config: ModelConfig,
    out: Arc<Mutex<Vec<Prepared>>>,
}

impl Sink for Collector {
    fn write(&self, sample: Sample, _ctx: &StageContext) -> Result<(), StageError> {
        let p = Prepared::from_sample(&sample, &self.params, &self.config)?;
        self.out.lock().unwrap_or_else(|p| p.into_inner()).push(p);
        Ok(())
    }
}

/// Validation results.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationMetrics {
    /// Cases evaluated.
    pub cases: usize,
    /// Mean Dice of TC, WT, ET (logit > 0), over cases whose region is not empty; NaN when every case's
    /// region is empty.
    pub dice: [f64; 3],
    /// Fraction of grades predicted right (argmax of the logits).
    pub accuracy: f64,
}

impl ValidationMetrics {
    /// `(mean Dice over the regions that have one + grade accuracy) / 2`: what `best.ckpt` maximises.
    pub fn score(&self) -> f64 {
        let d: Vec<f64> = self
            .dice
            .iter()
            .copied()
            .filter(|d| d.is_finite())
            .collect();
        let dice = if d.is_empty() {
            0.0
        } else {
            d.iter().sum::<f64>() / d.len() as f64
        };
        (dice + self.accuracy) / 2.0
    }
}

/// Evaluates the model (without a graph) on the validation set.
pub fn validate<B: AutodiffBackend>(
    model: &MultiTaskModel<B>,
    items: &[Prepared],
    batch_size: usize,
    device: &B::Device,
) -> ValidationMetrics {
    let inner = mtmed3d_model::training::inference_model(model);
    let mut sums = [0.0f64; 3];
    let mut counts = [0usize; 3];
    let mut correct = 0usize;
    for chunk in items.chunks(batch_size.max(1)) {
        let refs: Vec<&Prepared> = chunk.iter().collect();
        let (image, targets) = to_tensors::<B::InnerBackend>(&refs, device);
        let out = inner.forward(image);
        let logits: Vec<f32> = out.seg_logits.into_data().iter::<f32>().collect();
        let classes: Vec<f32> = out.class_logits.clone().into_data().iter::<f32>().collect();
        let k = out.class_logits.dims()[1];
        let grades = targets.grades;
        let [_, x, y, z] = chunk[0].shape;
        let n = x * y * z;
        for (i, item) in chunk.iter().enumerate() {
            for r in 0..3 {
                let pred = &logits[(i * 3 + r) * n..(i * 3 + r + 1) * n];
                let truth = &item.masks[r * n..(r + 1) * n];
                let (mut inter, mut p, mut t) = (0.0f64, 0.0f64, 0.0f64);
                for (&l, &m) in pred.iter().zip(truth) {
                    let hit = f64::from(u8::from(l > 0.0));
                    inter += hit * f64::from(m);
                    p += hit;
                    t += f64::from(m);
                }
                if t > 0.0 {
                    sums[r] += 2.0 * inter / (p + t);
                    counts[r] += 1;
                }
            }
            let row = &classes[i * k..(i + 1) * k];
            let predicted = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (j, &v)| {
                    if v > best.1 { (j, v) } else { best }
                })
                .0;
            correct += usize::from(predicted == grades[i]);
        }
    }
    let dice = [0, 1, 2].map(|r| {
        if counts[r] > 0 {
            sums[r] / counts[r] as f64
        } else {
            f64::NAN
        }
    });
    ValidationMetrics {
        cases: items.len(),
        dice,
        accuracy: correct as f64 / items.len().max(1) as f64,
    }
}
