//! The `infer` stage: whole-volume sliding-window inference with a trained MTMed3D checkpoint,
//! predictions mapped back to the original image space.
//!
//! ```yaml
//! stages:
//!   - nifti_decode: {}
//!   - reorient: {axcodes: RAS}
//!   - normalise: {nonzero: true, channel_wise: true}
//!   - infer: {checkpoint: runs/train/best.mpk, overlap: 0.5, batch: 2}
//! sinks:
//!   - nifti_write: {dir: out/pred, fields: [pred_label], space: original}
//! ```
//!
//! The reference evaluates a fixed 96³ centre crop only, so a third of the tumour, on
//! average, is never seen. Here the whole volume is covered by overlapping windows of the
//! model's input size ([`window`]):
//!
//! - **segmentation**: window logits are blended with a Gaussian importance map (MONAI's
//!   `sliding_window_inference`, σ = 0.125 × patch), then turned into TC/WT/ET probabilities
//!   (sigmoid), and into a BraTS label map: the innermost predicted region wins (ET → 4, or 3
//!   under BraTS 2023+; else TC → 1 necrosis; else WT → 2 oedema).
//! - **boxes**: each window's detections (scored, decoded and suppressed by the model) are
//!   shifted to volume coordinates, clipped to the volume, then suppressed again across
//!   windows with the model's 3D NMS (same IoU), and the best `max_boxes` are kept. A tumour cut
//!   by a window edge gives a partial box in that window (one touching a window face inside the
//!   volume) and a whole one in a window that holds it. The model, trained on crops whose boxes
//!   are cut the same way, may score the partial view higher, and a small partial box overlaps
//!   the whole one by less than the NMS IoU, so whole boxes go first: a partial box is dropped
//!   when half of it lies inside a kept whole box, and never suppresses one. A tumour no window
//!   holds whole keeps its best partial box. With `detection_patch` the boxes come from a
//!   second pass with larger windows (up to the whole volume, padded), so that every tumour is
//!   seen whole; the masks and grade still come from the model's own windows.
//! - **grade**: each window's HGG probability (softmax of the two logits) is weighted by the
//!   tumour volume that window predicts (the sum of its WT probabilities inside the volume).
//!   The classifier reads the segmentation and was trained on crops holding tumour; a window
//!   of healthy brain carries no evidence about the grade, and weighting by predicted tumour
//!   lets the windows that see the tumour decide, smoothly, with no single window chosen by a
//!   hard rule. When no window predicts any tumour, the windows count equally.
//!
//! With `space: original` (the default) the predictions and every other volume and box field
//! of the sample are mapped back through `meta.history` (reorientation, crops, flips, quarter
//! turns) and the history is emptied, so the sample leaves the stage in one consistent space:
//! the image's own grid and affine. `nifti_write` then writes the same files with `space:
//! current` or `space: original`.

pub mod window;

use std::path::PathBuf;
use std::sync::Arc;

use mtmed3d_model::burn::tensor::backend::Backend;
use mtmed3d_model::burn::tensor::{Tensor, TensorData};
use mtmed3d_model::checkpoint::load_with_stored_config;
use mtmed3d_model::decoder::detection::anchors::{iou as box_iou, volume as box_volume};
use mtmed3d_model::decoder::detection::{Box3, Detections};
use mtmed3d_model::{CpuBackend, ModelConfig, MultiTaskModel};
use mtmed3d_pipeline::{
    BoundingBox, BuildContext, Component, Field, Problem, Sample, Stage, StageConfig, StageContext,
    StageError,
};
use ndarray::{Array3, Array4, ArrayD};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::labels::BratsConvention;
use crate::spatial::original_space::sample_to_original;
use window::{Blend, WindowPlan, sliding_window};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's flex backend.
    Cpu,
    /// burn's CUDA backend on GPU `N`.
    Cuda(usize),
}

impl DeviceSpec {
    /// `cpu` or `cuda:N` (`cuda` alone is `cuda:0`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{text}`: use `cpu` or `cuda:N`")),
        }
    }

    /// Checks that this build can run on the device.
    pub fn available(self) -> Result<Self, String> {
        match self {
            DeviceSpec::Cuda(n) if !cfg!(feature = "cuda") => Err(format!(
                "device `cuda:{n}` needs mtmed3d built with `--features cuda`; use `device: cpu`"
            )),
            d => Ok(d),
        }
    }
}

/// How window predictions of the grade are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GradeFrom {
    /// Weighted by the tumour volume each window predicts (windows without tumour count
    /// little).
    TumourWeighted,
    /// Every window counts the same.
    Mean,
}

/// How overlapping windows are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlendMode {
    /// Gaussian importance map (σ = `sigma_scale` × patch edge), as MONAI.
    Gaussian,
    /// Plain average.
    Constant,
}

/// Where the outputs (and the rest of the sample) are left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InferSpace {
    /// Mapped back to the grid and affine the image was read in; the history is emptied.
    Original,
    /// The sample's current grid (after reorientation, crops …).
    Current,
}

/// Whole-volume sliding-window inference with a trained checkpoint.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Infer {
    /// Checkpoint written by `train` (or `mtmed3d_model::checkpoint::save`); the model's
    /// configuration is read from it.
    pub checkpoint: PathBuf,
    /// `cpu` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[serde(default = "default_device")]
    pub device: String,
    /// The image (C×X×Y×Z f32, normalised as in training).
    #[serde(default = "default_image")]
    pub image: String,
    /// Window size (X, Y, Z); default: the model's input size. Each edge must be a multiple
    /// of 32 (the encoder halves five times).
    #[serde(default)]
    pub patch: Option<[usize; 3]>,
    /// Window size of the boxes (X, Y, Z; multiples of 32); default: `patch`, the boxes come
    /// from the segmentation's windows. A tumour wider than half a window is often seen only
    /// in pieces, and a piece's box scores as a miss; windows as large as the volume (padded)
    /// see every tumour whole, at the cost of one more pass. On the demo's 64×64×48 cases a
    /// 64³ pass raised held-out mAP@0.5 from 0.27 to 0.55 with the same checkpoint.
    #[serde(default)]
    pub detection_patch: Option<[usize; 3]>,
    /// Fraction of a window shared with its neighbour, 0 ≤ overlap < 1 (MONAI's default
    /// 0.25; 0.5 as nnU-Net costs about 2.5× more windows).
    #[serde(default = "default_overlap")]
    pub overlap: f64,
    /// `gaussian` or `constant`.
    #[serde(default = "default_blend")]
    pub blend: BlendMode,
    /// σ of the Gaussian as a fraction of the patch edge.
    #[serde(default = "default_sigma_scale")]
    pub sigma_scale: f64,
    /// Windows per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Probability above which a voxel belongs to a region.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Label values of the label map: `brats2018` (ET = 4) or `brats2023` (ET = 3).
    #[serde(default = "default_convention")]
    pub convention: BratsConvention,
    /// `original` (default) or `current`.
    #[serde(default = "default_space")]
    pub space: InferSpace,
    /// Field for the label map (X×Y×Z u8: 0, 1 NCR, 2 ED, 4 or 3 ET).
    #[serde(default = "default_label")]
    pub label: String,
    /// Field for the region probabilities (3×X×Y×Z f32, TC/WT/ET); `null` to skip.
    #[serde(default = "default_probabilities")]
    pub probabilities: Option<String>,
    /// Field for the thresholded region masks (3×X×Y×Z u8, TC/WT/ET); `null` (default) to skip.
    #[serde(default)]
    pub masks: Option<String>,
    /// Field for the boxes (with scores, in voxels of the output space).
    #[serde(default = "default_boxes")]
    pub boxes: String,
    /// Field for the predicted grade (text `HGG` or `LGG`).
    #[serde(default = "default_grade")]
    pub grade: String,
    /// Field for the probability of HGG (number).
    #[serde(default = "default_p_hgg")]
    pub p_hgg: String,
    /// How window grade predictions are combined: `tumour_weighted` or `mean`.
    #[serde(default = "default_grade_from")]
    pub grade_from: GradeFrom,
    /// Boxes kept after NMS across windows; default: the model's detections per image.
    #[serde(default)]
    pub max_boxes: Option<usize>,
    /// IoU above which NMS across windows suppresses a box; default: the model's.
    #[serde(default)]
    pub nms_iou: Option<f64>,
    /// nnU-Net's BraTS post-processing (Isensee et al. 2020): when fewer than this many voxels
    /// are predicted enhancing, they become necrosis (label 1, still tumour core). BraTS scores
    /// a case without enhancing tumour 0 for any enhancing voxel predicted, so a few spurious
    /// ones in a low-grade case cost the whole case. 0 (default): off.
    #[serde(default)]
    pub et_min_voxels: usize,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_image() -> String {
    "image".into()
}
fn default_overlap() -> f64 {
    0.25
}
fn default_blend() -> BlendMode {
    BlendMode::Gaussian
}
fn default_sigma_scale() -> f64 {
    0.125
}
fn default_batch() -> usize {
    1
}
fn default_threshold() -> f64 {
    0.5
}
fn default_convention() -> BratsConvention {
    BratsConvention::Brats2018
}
fn default_space() -> InferSpace {
    InferSpace::Original
}
fn default_label() -> String {
    "pred_label".into()
}
fn default_probabilities() -> Option<String> {
    Some("pred_prob".into())
}
fn default_boxes() -> String {
    "pred_boxes".into()
}
fn default_grade() -> String {
    "grade_pred".into()
}
fn default_p_hgg() -> String {
    "p_hgg".into()
}
fn default_grade_from() -> GradeFrom {
    GradeFrom::TumourWeighted
}

impl Component for Infer {
    const NAME: &'static str = "infer";
    const DOC: &'static str = "Sliding-window inference of a trained MTMed3D checkpoint over the whole volume (Gaussian blending), mapped back to the original space: label map, region probabilities, boxes with scores, grade with its probability.";

    fn reads(&self) -> Vec<String> {
        vec![self.image.clone()]
    }

    fn writes(&self) -> Vec<String> {
        let mut w = vec![
            self.label.clone(),
            self.boxes.clone(),
            self.grade.clone(),
            self.p_hgg.clone(),
        ];
        w.extend(self.probabilities.clone());
        w.extend(self.masks.clone());
        w
    }

    fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Err(e) = DeviceSpec::parse(&self.device).and_then(DeviceSpec::available) {
            p.push(Problem::param("device", e));
        }
        if !(0.0..1.0).contains(&self.overlap) {
            p.push(Problem::param("overlap", "`overlap` must be within [0, 1)"));
        }
        if !(self.sigma_scale.is_finite() && self.sigma_scale > 0.0) {
            p.push(Problem::param(
                "sigma_scale",
                "`sigma_scale` must be a number > 0",
            ));
        }
        if self.batch == 0 {
            p.push(Problem::param("batch", "`batch` must be at least 1"));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            p.push(Problem::param(
                "threshold",
                "`threshold` must be within (0, 1)",
            ));
        }
        if self.patch.is_some_and(|s| s.contains(&0)) {
            p.push(Problem::param(
                "patch",
                "every entry of `patch` must be at least 1",
            ));
        }
        if self.max_boxes == Some(0) {
            p.push(Problem::param(
                "max_boxes",
                "`max_boxes` must be at least 1",
            ));
        }
        if self.nms_iou.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
            p.push(Problem::param("nms_iou", "`nms_iou` must be within [0, 1]"));
        }
        p
    }
}

/// A loaded model on its device.
/// (Boxed: a model is tens of kilobytes of module structure.)
enum Runner {
    Cpu(Box<MultiTaskModel<CpuBackend>>),
    #[cfg(feature = "cuda")]
    Cuda(
        Box<MultiTaskModel<mtmed3d_model::CudaBackend>>,
        mtmed3d_model::burn::backend::cuda::CudaDevice,
    ),
}

/// What the model says about a batch of windows.
#[derive(Debug, Default)]
struct WindowOutputs {
    /// `3×patch` segmentation logits per window.
    seg: Vec<Array4<f32>>,
    /// Grade logits per window.
    class: Vec<Vec<f32>>,
    /// Detections per window, in window coordinates.
    detections: Vec<Detections>,
}

fn forward<B: Backend>(
    model: &MultiTaskModel<B>,
    config: &ModelConfig,
    device: &B::Device,
    windows: ArrayD<f32>,
) -> Result<WindowOutputs, StageError> {
    let shape = windows.shape().to_vec();
    let (data, _) = windows
        .as_standard_layout()
        .into_owned()
        .into_raw_vec_and_offset();
    let input = Tensor::<B, 5>::from_data(TensorData::new(data, shape.clone()), device);
    let out = model.forward(input);
    let detections = config.detections(&out);
    let read = |t: TensorData| -> Result<Vec<f32>, StageError> {
        t.convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| StageError::new(format!("reading the model's output: {e:?}")))
    };
    let [b, k, x, y, z] = out.seg_logits.dims();
    let seg = read(out.seg_logits.into_data())?;
    let seg = Array4::from_shape_vec((b * k, x, y, z), seg)
        .map_err(|e| StageError::new(e.to_string()))?;
    let [_, classes] = out.class_logits.dims();
    let class = read(out.class_logits.into_data())?;
    Ok(WindowOutputs {
        seg: (0..b)
            .map(|i| {
                seg.slice(ndarray::s![i * k..(i + 1) * k, .., .., ..])
                    .to_owned()
            })
            .collect(),
        class: class.chunks(classes).map(<[f32]>::to_vec).collect(),
        detections,
    })
}

impl Runner {
    fn forward(
        &self,
        config: &ModelConfig,
        windows: ArrayD<f32>,
    ) -> Result<WindowOutputs, StageError> {
        match self {
            Runner::Cpu(model) => forward(model, config, &Default::default(), windows),
            #[cfg(feature = "cuda")]
            Runner::Cuda(model, device) => forward(model, config, device, windows),
        }
    }
}

struct InferStage {
    config: Infer,
    model_config: ModelConfig,
    runner: Runner,
    patch: [usize; 3],
    detection_patch: [usize; 3],
    blend: Blend,
}

impl StageConfig for Infer {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Stage>, StageError> {
        let device = DeviceSpec::parse(&self.device)
            .and_then(DeviceSpec::available)
            .map_err(StageError::new)?;
        let not_a_checkpoint = |e: mtmed3d_model::ModelError| {
            StageError::new(format!(
                "{e} (`checkpoint` must name a file written by the `train` stage)"
            ))
        };
        if !self.checkpoint.is_file() {
            return Err(StageError::file(
                &self.checkpoint,
                "no such checkpoint file; `checkpoint` must name a file written by the `train` stage",
            ));
        }
        let (runner, model_config) = match device {
            DeviceSpec::Cpu => {
                let (model, config) =
                    load_with_stored_config::<CpuBackend>(&self.checkpoint, &Default::default())
                        .map_err(not_a_checkpoint)?;
                (Runner::Cpu(Box::new(model)), config)
            }
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(n) => {
                let device = mtmed3d_model::cuda_device(n).map_err(StageError::new)?;
                let (model, config) = load_with_stored_config::<mtmed3d_model::CudaBackend>(
                    &self.checkpoint,
                    &device,
                )
                .map_err(not_a_checkpoint)?;
                (Runner::Cuda(Box::new(model), device), config)
            }
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(n) => {
                return Err(StageError::new(format!(
                    "device `cuda:{n}` needs mtmed3d built with `--features cuda`"
                )));
            }
        };
        let patch = self.patch.unwrap_or(model_config.input_size);
        let detection_patch = self.detection_patch.unwrap_or(patch);
        for (name, size) in [("patch", patch), ("detection_patch", detection_patch)] {
            model_config
                .check_input([
                    1,
                    model_config.encoder.in_channels,
                    size[0],
                    size[1],
                    size[2],
                ])
                .map_err(|e| StageError::new(format!("`{name}`: {e}")))?;
        }
        if model_config.classification.num_classes != 2 {
            return Err(StageError::file(
                &self.checkpoint,
                format!(
                    "the model has {} grade classes; `infer` reports HGG/LGG and needs 2",
                    model_config.classification.num_classes
                ),
            ));
        }
        if model_config.segmentation.out_channels != 3 {
            return Err(StageError::file(
                &self.checkpoint,
                format!(
                    "the model segments {} channels; `infer` needs the 3 BraTS regions TC, WT, ET",
                    model_config.segmentation.out_channels
                ),
            ));
        }
        let blend = match self.blend {
            BlendMode::Gaussian => Blend::Gaussian {
                sigma_scale: self.sigma_scale,
            },
            BlendMode::Constant => Blend::Constant,
        };
        Ok(Box::new(InferStage {
            config: self.clone(),
            model_config,
            runner,
            patch,
            detection_patch,
            blend,
        }))
    }
}

/// Region channels of the model's segmentation output.
const TC: usize = 0;
const WT: usize = 1;
const ET: usize = 2;

/// The BraTS label map of region probabilities: the innermost region above `threshold`.
pub fn label_map(prob: &Array4<f32>, threshold: f32, enhancing: u8) -> Array3<u8> {
    let [_, x, y, z] = [0, 1, 2, 3].map(|a| prob.shape()[a]);
    Array3::from_shape_fn((x, y, z), |(i, j, k)| {
        if prob[[ET, i, j, k]] > threshold {
            enhancing
        } else if prob[[TC, i, j, k]] > threshold {
            1
        } else if prob[[WT, i, j, k]] > threshold {
            2
        } else {
            0
        }
    })
}

/// Relabels the enhancing voxels as necrosis (1) when there are fewer than `min_voxels` of
/// them; returns whether it did.
pub fn suppress_small_enhancing(label: &mut Array3<u8>, enhancing: u8, min_voxels: usize) -> bool {
    let count = label.iter().filter(|&&v| v == enhancing).count();
    if count == 0 || count >= min_voxels {
        return false;
    }
    label.mapv_inplace(|v| if v == enhancing { 1 } else { v });
    true
}

/// Softmax probability of class 1 (HGG) of two logits.
fn p_class1(logits: &[f32]) -> f64 {
    let d = f64::from(logits[1]) - f64::from(logits[0]);
    1.0 / (1.0 + (-d).exp())
}

/// `Σ wᵢ pᵢ / Σ wᵢ`, or the plain mean when every weight is (nearly) zero.
pub fn combine_grades(probabilities: &[f64], weights: &[f64]) -> f64 {
    let total: f64 = weights.iter().sum();
    if total > 1e-6 {
        probabilities
            .iter()
            .zip(weights)
            .map(|(p, w)| p * w)
            .sum::<f64>()
            / total
    } else {
        probabilities.iter().sum::<f64>() / probabilities.len().max(1) as f64
    }
}

/// Shifts window detections to volume coordinates, clips them to the volume and keeps the
/// best `max_keep` after NMS across windows, whole boxes before partial ones (see the module
/// documentation). `window` is the windows' size.
pub fn merge_detections(
    windows: &[([i64; 3], Detections)],
    window: [usize; 3],
    volume: [usize; 3],
    iou: f32,
    max_keep: usize,
) -> Vec<BoundingBox> {
    // a box within a voxel of a window face that lies inside the volume is cut by that face
    const EDGE: f32 = 1.0;
    let mut candidates: Vec<(Box3, f32, usize, bool)> = Vec::new();
    for (start, d) in windows {
        for ((b, &s), &l) in d.boxes.iter().zip(&d.scores).zip(&d.labels) {
            let mut moved = *b;
            let mut partial = false;
            for a in 0..3 {
                let n = volume[a] as f32;
                moved[a] = (b[a] + start[a] as f32).clamp(0.0, n);
                moved[a + 3] = (b[a + 3] + start[a] as f32).clamp(0.0, n);
                let lo_inside = start[a] > 0;
                let hi_inside = start[a] + (window[a] as i64) < volume[a] as i64;
                partial |=
                    (lo_inside && b[a] < EDGE) || (hi_inside && b[a + 3] > window[a] as f32 - EDGE);
            }
            if (0..3).all(|a| moved[a + 3] > moved[a]) {
                candidates.push((moved, s, l, partial));
            }
        }
    }
    // whole boxes first, each group by decreasing score
    candidates.sort_by(|x, y| x.3.cmp(&y.3).then(y.1.total_cmp(&x.1)));
    let mut kept: Vec<(Box3, f32, usize, bool)> = Vec::new();
    for c in candidates {
        let suppressed = kept.iter().any(|k| {
            k.2 == c.2
                && (box_iou(&k.0, &c.0) > iou
                    || (c.3 && !k.3 && intersection(&k.0, &c.0) >= 0.5 * box_volume(&c.0)))
        });
        if !suppressed {
            kept.push(c);
        }
    }
    kept.sort_by(|x, y| y.1.total_cmp(&x.1));
    kept.truncate(max_keep);
    kept.into_iter()
        .map(|(b, s, l, _)| BoundingBox {
            corners: b.map(f64::from),
            class: l as u32,
            score: Some(f64::from(s)),
        })
        .collect()
}

/// Volume of the overlap of two boxes.
fn intersection(a: &Box3, b: &Box3) -> f32 {
    (0..3)
        .map(|i| (a[i + 3].min(b[i + 3]) - a[i].max(b[i])).max(0.0))
        .product()
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl Stage for InferStage {
    fn process(&self, mut sample: Sample, ctx: &StageContext) -> Result<Sample, StageError> {
        let c = &self.config;
        let image = sample.f32(&c.image)?;
        if image.ndim() != 4 {
            return Err(StageError::new(format!(
                "`{}` has shape {:?}; `infer` needs a C×X×Y×Z image",
                c.image,
                image.shape()
            )));
        }
        let channels = self.model_config.encoder.in_channels;
        if image.shape()[0] != channels {
            return Err(StageError::new(format!(
                "`{}` has {} channels but the model of {} expects {channels} (the modalities it was trained on, in the same order)",
                c.image,
                image.shape()[0],
                c.checkpoint.display()
            )));
        }
        let volume = [image.shape()[1], image.shape()[2], image.shape()[3]];
        let plan = WindowPlan::new(volume, self.patch, c.overlap);
        let mut window_detections = Vec::with_capacity(plan.starts.len());
        let mut grades = Vec::with_capacity(plan.starts.len());
        let mut weights = Vec::with_capacity(plan.starts.len());
        let logits = sliding_window(image, &plan, self.blend, c.batch, |windows, starts| {
            if ctx.cancelled() {
                return Err(StageError::new(
                    "inference stopped: the run is being cancelled",
                ));
            }
            let out = self.runner.forward(&self.model_config, windows)?;
            for ((&start, det), (seg, class)) in starts
                .iter()
                .zip(out.detections)
                .zip(out.seg.iter().zip(&out.class))
            {
                window_detections.push((start, det));
                grades.push(p_class1(class));
                let (lo, hi) = plan.inside(start);
                let off = [0, 1, 2].map(|a| (lo[a] as i64 - start[a]) as usize);
                let tumour: f64 = seg
                    .slice(ndarray::s![
                        WT,
                        off[0]..off[0] + hi[0] - lo[0],
                        off[1]..off[1] + hi[1] - lo[1],
                        off[2]..off[2] + hi[2] - lo[2]
                    ])
                    .iter()
                    .map(|&v| f64::from(sigmoid(v)))
                    .sum();
                weights.push(tumour);
            }
            Ok(out.seg)
        })?
        .ok_or_else(|| StageError::new("the image has no voxel"))?;

        let prob = logits.mapv(sigmoid);
        let threshold = c.threshold as f32;
        let mut label = label_map(&prob, threshold, c.convention.enhancing());
        let et_suppressed =
            suppress_small_enhancing(&mut label, c.convention.enhancing(), c.et_min_voxels);
        let p_hgg = match c.grade_from {
            GradeFrom::TumourWeighted => combine_grades(&grades, &weights),
            GradeFrom::Mean => combine_grades(&grades, &vec![0.0; grades.len()]),
        };
        if self.detection_patch != self.patch {
            window_detections.clear();
            let plan = WindowPlan::new(volume, self.detection_patch, c.overlap);
            // one window per pass: these windows are larger than the ones `batch` was sized for
            sliding_window(image, &plan, Blend::Constant, 1, |windows, starts| {
                let out = self.runner.forward(&self.model_config, windows)?;
                window_detections.extend(starts.iter().copied().zip(out.detections));
                Ok::<_, StageError>(Vec::new())
            })?;
        }
        let detection = &self.model_config.detection.inference;
        let boxes = merge_detections(
            &window_detections,
            self.detection_patch,
            volume,
            c.nms_iou.unwrap_or(detection.nms_iou) as f32,
            c.max_boxes.unwrap_or(detection.detections_per_image),
        );

        if let Some(name) = &c.masks {
            let mut masks = prob.mapv(|p| u8::from(p > threshold));
            if et_suppressed {
                masks.index_axis_mut(ndarray::Axis(0), ET).fill(0);
            }
            sample.insert(name.clone(), Field::u8(masks.into_dyn()));
        }
        if let Some(name) = &c.probabilities {
            sample.insert(name.clone(), Field::f32(prob.into_dyn()));
        }
        sample.insert(c.label.clone(), Field::u8(label.into_dyn()));
        sample.insert(c.boxes.clone(), Field::Boxes(Arc::new(boxes)));
        sample.insert(
            c.grade.clone(),
            Field::Text(if p_hgg >= 0.5 { "HGG" } else { "LGG" }.into()),
        );
        sample.insert(c.p_hgg.clone(), Field::Number(p_hgg));
        sample.meta.attrs.insert(
            "infer".into(),
            serde_json::json!({
                "checkpoint": c.checkpoint.display().to_string(),
                "model": self.model_config.name,
                "patch": self.patch,
                "detection_patch": self.detection_patch,
                "overlap": c.overlap,
                "windows": plan.starts.len(),
                "window_p_hgg": grades,
                "window_tumour_voxels": weights,
                "et_suppressed": et_suppressed,
            }),
        );
        if c.space == InferSpace::Original {
            sample_to_original(&mut sample)?;
        }
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtmed3d_model::burn::tensor::Distribution;
    use mtmed3d_model::checkpoint;
    use mtmed3d_pipeline::SourceConfig;
    use ndarray::Ix4;
    use std::path::Path;

    fn tiny_checkpoint(dir: &Path) -> (PathBuf, MultiTaskModel<CpuBackend>, ModelConfig) {
        let mut config = ModelConfig::tiny();
        // An untrained head scores every anchor near its prior (0.01), under the default
        // threshold: with none, the box comparisons below would compare two empty lists.
        config.detection.inference.score_threshold = 0.0;
        let model = config.init::<CpuBackend>(&Default::default()).unwrap();
        let path = dir.join("tiny.mpk");
        checkpoint::save(&model, &config, &path).unwrap();
        (path, model, config)
    }

    fn build(params: serde_json::Value) -> Box<dyn Stage> {
        let config: Infer = serde_json::from_value(params).unwrap();
        assert!(config.check().is_empty(), "{:?}", config.check());
        config.build(&BuildContext::default()).unwrap()
    }

    fn ctx() -> StageContext {
        StageContext::new("infer", 3, 0)
    }

    #[test]
    fn one_window_equals_a_direct_forward_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model, config) = tiny_checkpoint(dir.path());
        let device = Default::default();
        let input = Tensor::<CpuBackend, 5>::random(
            [1, 4, 32, 32, 32],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let direct = model.forward(input.clone());
        let direct_prob: Vec<f32> = direct
            .seg_logits
            .clone()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(sigmoid)
            .collect();
        let class: Vec<f32> = direct.class_logits.clone().into_data().to_vec().unwrap();
        let direct_boxes = config.detections(&direct).remove(0);

        let image: Vec<f32> = input.into_data().to_vec().unwrap();
        let mut sample = Sample::new("case");
        sample.insert(
            "image",
            Field::f32(ArrayD::from_shape_vec(ndarray::IxDyn(&[4, 32, 32, 32]), image).unwrap()),
        );
        let stage = build(serde_json::json!({
            "checkpoint": path, "blend": "gaussian", "masks": "pred_regions"
        }));
        let out = stage.process(sample, &ctx()).unwrap();

        let prob = out.f32("pred_prob").unwrap();
        assert_eq!(prob.shape(), &[3, 32, 32, 32]);
        let worst = prob
            .iter()
            .zip(&direct_prob)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "blended vs direct: {worst}");
        assert_eq!(out.u8("pred_label").unwrap().shape(), &[32, 32, 32]);
        assert_eq!(out.u8("pred_regions").unwrap().shape(), &[3, 32, 32, 32]);
        let p = out.number("p_hgg").unwrap();
        assert!((p - p_class1(&class)).abs() < 1e-6, "{p} vs {class:?}");
        let grade = out.text("grade_pred").unwrap();
        assert_eq!(grade, if p >= 0.5 { "HGG" } else { "LGG" });
        let boxes = out.boxes("pred_boxes").unwrap();
        assert!(
            !boxes.is_empty(),
            "the untrained model must propose boxes for this to test anything"
        );
        assert_eq!(boxes.len(), direct_boxes.boxes.len());
        for (b, (d, s)) in boxes
            .iter()
            .zip(direct_boxes.boxes.iter().zip(&direct_boxes.scores))
        {
            assert_eq!(b.corners, d.map(f64::from));
            assert_eq!(b.score, Some(f64::from(*s)));
        }
        assert_eq!(out.meta.attrs["infer"]["windows"], 1);
    }

    #[test]
    fn a_detection_window_as_large_as_the_volume_gives_the_whole_volume_pass_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model, config) = tiny_checkpoint(dir.path());
        let device = Default::default();
        let input = Tensor::<CpuBackend, 5>::random(
            [1, 4, 64, 32, 64],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let direct_boxes = config.detections(&model.forward(input.clone())).remove(0);
        let image: Vec<f32> = input.into_data().to_vec().unwrap();
        let sample = || {
            let mut s = Sample::new("case");
            s.insert(
                "image",
                Field::f32(
                    ArrayD::from_shape_vec(ndarray::IxDyn(&[4, 64, 32, 64]), image.clone())
                        .unwrap(),
                ),
            );
            s
        };
        let whole = build(serde_json::json!({
            "checkpoint": path, "detection_patch": [64, 32, 64]
        }))
        .process(sample(), &ctx())
        .unwrap();
        let windowed = build(serde_json::json!({"checkpoint": path}))
            .process(sample(), &ctx())
            .unwrap();
        let boxes = whole.boxes("pred_boxes").unwrap();
        assert!(
            !boxes.is_empty(),
            "the untrained model must propose boxes for this to test anything"
        );
        assert_eq!(boxes.len(), direct_boxes.boxes.len());
        for (b, d) in boxes.iter().zip(&direct_boxes.boxes) {
            assert_eq!(b.corners, d.map(f64::from));
        }
        // the segmentation still comes from the model's 32³ windows
        assert_eq!(
            whole.f32("pred_prob").unwrap(),
            windowed.f32("pred_prob").unwrap()
        );
        assert_eq!(
            whole.meta.attrs["infer"]["detection_patch"],
            serde_json::json!([64, 32, 64])
        );
        assert!(whole.meta.attrs["infer"]["windows"].as_u64().unwrap() > 1);
    }

    #[test]
    fn a_detection_patch_the_encoder_cannot_halve_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ..) = tiny_checkpoint(dir.path());
        let err = serde_json::from_value::<Infer>(serde_json::json!({
            "checkpoint": path, "detection_patch": [48, 32, 32]
        }))
        .unwrap()
        .build(&BuildContext::default())
        .err()
        .unwrap();
        assert!(err.to_string().contains("`detection_patch`"), "{err}");
    }

    #[test]
    fn a_phantom_of_non_multiple_size_comes_back_in_its_original_space() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ..) = tiny_checkpoint(dir.path());
        let source: crate::io::sources::PhantomSource = serde_json::from_value(
            serde_json::json!({"cases": 1, "seed": 5, "shape": [50, 45, 37]}),
        )
        .unwrap();
        let source = source.build(&BuildContext::default()).unwrap();
        let original = source.load("Phantom_0000", &ctx()).unwrap();
        let reorient: crate::spatial::reorient::Reorient =
            serde_json::from_value(serde_json::json!({"axcodes": "RAS"})).unwrap();
        let ras = reorient
            .build(&BuildContext::default())
            .unwrap()
            .process(original.clone(), &ctx())
            .unwrap();
        assert_ne!(
            ras.meta.affine, original.meta.affine,
            "phantoms are stored LPS"
        );

        let params = |space: &str| serde_json::json!({"checkpoint": path, "space": space, "batch": 3, "overlap": 0.25});
        let back = build(params("original"))
            .process(ras.clone(), &ctx())
            .unwrap();
        assert_eq!(back.meta.affine, original.meta.affine);
        assert!(back.meta.history.is_empty());
        assert_eq!(back.u8("pred_label").unwrap().shape(), &[50, 45, 37]);
        assert_eq!(back.f32("pred_prob").unwrap().shape(), &[3, 50, 45, 37]);
        // the rest of the sample moved back with the predictions
        assert_eq!(back.f32("image").unwrap(), original.f32("image").unwrap());
        assert_eq!(back.u8("label").unwrap(), original.u8("label").unwrap());
        // 50×45×37 in windows of 32 with overlap 0.25: 2 × 2 × 2
        assert_eq!(back.meta.attrs["infer"]["windows"], 8);

        // in the current space the same prediction, mapped back by nifti_write's own
        // function, lands on the same voxels
        let current = build(params("current")).process(ras, &ctx()).unwrap();
        assert_eq!(current.u8("pred_label").unwrap().shape(), &[50, 45, 37]);
        let label = current
            .u8("pred_label")
            .unwrap()
            .clone()
            .insert_axis(ndarray::Axis(0));
        let mapped = crate::io::nifti_stages::to_original_space(
            label.into_dimensionality::<Ix4>().unwrap(),
            &current.meta.history,
        )
        .unwrap();
        assert_eq!(
            mapped.index_axis(ndarray::Axis(0), 0),
            back.u8("pred_label")
                .unwrap()
                .view()
                .into_dimensionality()
                .unwrap()
        );
        let boxes_current = current.boxes("pred_boxes").unwrap();
        let boxes_back = back.boxes("pred_boxes").unwrap();
        assert_eq!(boxes_current.len(), boxes_back.len());
        for (c, b) in boxes_current.iter().zip(boxes_back) {
            // RAS from LPS flips x and y: [x1, x2) ↦ [50 − x2, 50 − x1)
            let expected = [
                50.0 - c.corners[3],
                45.0 - c.corners[4],
                c.corners[2],
                50.0 - c.corners[0],
                45.0 - c.corners[1],
                c.corners[5],
            ];
            assert_eq!(b.corners, expected);
        }
    }

    /// One window's detections, all of class 0.
    fn det(boxes: Vec<Box3>, scores: Vec<f32>) -> Detections {
        Detections {
            labels: vec![0; boxes.len()],
            boxes,
            scores,
        }
    }

    #[test]
    fn two_windows_detecting_the_same_box_yield_one_box() {
        // the same tumour at volume [10, 10, 10]–[20, 20, 20] seen from two windows, and a
        // second tumour seen by the second window only
        let windows = vec![
            (
                [0, 0, 0],
                det(vec![[10.0, 10.0, 10.0, 20.0, 20.0, 20.0]], vec![0.9]),
            ),
            (
                [8, 0, 0],
                det(
                    vec![
                        [2.0, 10.0, 10.0, 12.0, 20.0, 20.5],
                        [20.0, 2.0, 2.0, 26.0, 8.0, 8.0],
                    ],
                    vec![0.8, 0.3],
                ),
            ),
        ];
        let merged = merge_detections(&windows, [32; 3], [40, 40, 40], 0.22, 10);
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!(merged[0].corners, [10.0, 10.0, 10.0, 20.0, 20.0, 20.0]);
        assert_eq!(merged[0].score, Some(f64::from(0.9f32)));
        assert_eq!(merged[1].corners, [28.0, 2.0, 2.0, 34.0, 8.0, 8.0]);
        // top-K across windows
        assert_eq!(
            merge_detections(&windows, [32; 3], [40, 40, 40], 0.22, 1).len(),
            1
        );
        // a box from a padded window is clipped to the volume; one wholly outside is dropped
        let padded = vec![(
            [-4, 0, 0],
            det(
                vec![
                    [2.0, 1.0, 1.0, 8.0, 5.0, 5.0],
                    [0.0, 1.0, 1.0, 3.0, 5.0, 5.0],
                ],
                vec![0.7, 0.6],
            ),
        )];
        let merged = merge_detections(&padded, [32; 3], [40, 40, 40], 0.22, 10);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].corners, [0.0, 1.0, 1.0, 4.0, 5.0, 5.0]);
    }

    #[test]
    fn a_whole_box_beats_a_higher_scoring_partial_view_of_the_same_tumour() {
        // volume 64³, windows of 32: the tumour at [20, 20, 20]–[44, 44, 44] is cut by the first
        // window's far faces (its view ends at 32 on every axis, IoU 0.11 with the whole box) and
        // held whole by the window at 16
        let windows = vec![
            (
                [0, 0, 0],
                det(vec![[20.0, 20.0, 20.0, 32.0, 32.0, 32.0]], vec![0.8]),
            ),
            (
                [16, 16, 16],
                det(
                    vec![
                        [4.0, 4.0, 4.0, 28.0, 28.0, 28.0],
                        [0.0, 0.0, 0.0, 6.0, 6.0, 6.0],
                    ],
                    vec![0.4, 0.3],
                ),
            ),
        ];
        let merged = merge_detections(&windows, [32; 3], [64; 3], 0.22, 10);
        // the partial view is dropped (it lies inside the whole box); the small box at the second
        // window's corner is partial too but overlaps no whole box, so it stays
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!(merged[0].corners, [20.0, 20.0, 20.0, 44.0, 44.0, 44.0]);
        assert_eq!(merged[0].score, Some(f64::from(0.4f32)));
        assert_eq!(merged[1].corners, [16.0, 16.0, 16.0, 22.0, 22.0, 22.0]);
        // a box touching the volume's own border is whole: only faces inside the volume cut
        let border = vec![(
            [0, 0, 0],
            det(vec![[0.0, 0.0, 0.0, 10.0, 10.0, 10.0]], vec![0.5]),
        )];
        let merged = merge_detections(&border, [32; 3], [64; 3], 0.22, 10);
        assert_eq!(merged.len(), 1);
        // without the whole view, the partial one is kept
        let merged = merge_detections(&windows[..1], [32; 3], [64; 3], 0.22, 10);
        assert_eq!(merged[0].corners, [20.0, 20.0, 20.0, 32.0, 32.0, 32.0]);
    }

    #[test]
    fn label_map_follows_the_convention_and_the_innermost_region() {
        // voxels: nothing, WT only, WT+TC, WT+TC+ET, ET alone
        let mut prob = Array4::<f32>::zeros((3, 5, 1, 1));
        for (x, regions) in [vec![], vec![WT], vec![WT, TC], vec![WT, TC, ET], vec![ET]]
            .into_iter()
            .enumerate()
        {
            for r in regions {
                prob[[r, x, 0, 0]] = 0.9;
            }
        }
        let labels = |et| {
            label_map(&prob, 0.5, et)
                .iter()
                .copied()
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            labels(BratsConvention::Brats2018.enhancing()),
            [0, 2, 1, 4, 4]
        );
        assert_eq!(
            labels(BratsConvention::Brats2023.enhancing()),
            [0, 2, 1, 3, 3]
        );
    }

    #[test]
    fn few_enhancing_voxels_become_necrosis() {
        let mut label = Array3::<u8>::zeros((4, 4, 4));
        label[[1, 1, 1]] = 4;
        label[[1, 1, 2]] = 4;
        label[[2, 2, 2]] = 2;
        // two enhancing voxels, threshold 3: relabelled, the oedema untouched
        let mut small = label.clone();
        assert!(suppress_small_enhancing(&mut small, 4, 3));
        assert_eq!(small[[1, 1, 1]], 1);
        assert_eq!(small[[1, 1, 2]], 1);
        assert_eq!(small[[2, 2, 2]], 2);
        assert_eq!(small.iter().filter(|&&v| v == 4).count(), 0);
        // threshold 2 (not more than the count) and 0 (off) keep them
        for min in [2, 0] {
            let mut kept = label.clone();
            assert!(!suppress_small_enhancing(&mut kept, 4, min));
            assert_eq!(kept, label);
        }
        // brats2023 labels ET 3
        let mut l23 = label.mapv(|v| if v == 4 { 3 } else { v });
        assert!(suppress_small_enhancing(&mut l23, 3, 10));
        assert_eq!(l23[[1, 1, 1]], 1);
    }

    #[test]
    fn grades_are_weighted_by_predicted_tumour_volume() {
        // a window full of tumour says HGG, two windows of healthy brain say LGG
        let p = combine_grades(&[0.9, 0.2, 0.3], &[1000.0, 1.0, 0.0]);
        assert!((p - (900.0 + 0.2) / 1001.0).abs() < 1e-12, "{p}");
        // no tumour anywhere: every window counts the same
        assert!((combine_grades(&[0.9, 0.2, 0.4], &[0.0; 3]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn bad_parameters_are_reported_before_running() {
        let config: Infer = serde_json::from_value(serde_json::json!({
            "checkpoint": "x.mpk", "device": "tpu", "overlap": 1.0, "batch": 0, "threshold": 1.5
        }))
        .unwrap();
        let problems: Vec<String> = config
            .check()
            .into_iter()
            .map(|p| p.param.unwrap_or_default())
            .collect();
        assert_eq!(problems, ["device", "overlap", "batch", "threshold"]);
        assert_eq!(DeviceSpec::parse("cuda:1"), Ok(DeviceSpec::Cuda(1)));
        if !cfg!(feature = "cuda") {
            let err = DeviceSpec::Cuda(0).available().unwrap_err();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn an_image_with_the_wrong_channels_fails_the_case_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ..) = tiny_checkpoint(dir.path());
        let mut sample = Sample::new("case");
        sample.insert(
            "image",
            Field::f32(ArrayD::zeros(ndarray::IxDyn(&[3, 32, 32, 32]))),
        );
        let err = build(serde_json::json!({"checkpoint": path}))
            .process(sample, &ctx())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3 channels") && err.contains("expects 4"),
            "{err}"
        );
    }
}
