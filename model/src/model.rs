//! The multi-task model: shared encoder, segmentation, classification (after segmentation) and
//! detection decoders (paper Fig. 1).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::config::{DetectionInput, ModelConfig};
use crate::decoder::detection::{
    Anchors, BoxTargets, DetectionLosses, DetectionOutput, Detections, detection_loss, postprocess,
};
use crate::decoder::{ClassificationDecoder, DetectionDecoder, SegmentationDecoder};
use crate::encoder::{EncoderFeatures, SwinEncoder};
use crate::error::{ModelError, Result};
use crate::loss::{classification_focal_loss, segmentation_loss};

/// Shared encoder and the three task decoders.
#[derive(Module, Debug)]
pub struct MultiTaskModel<B: Backend> {
    /// 3D Swin Transformer.
    pub encoder: SwinEncoder<B>,
    /// SwinUNETR decoder (TC/WT/ET logits).
    pub segmentation: SegmentationDecoder<B>,
    /// DenseNet-121 3D on the segmentation (grade logits).
    pub classification: ClassificationDecoder<B>,
    /// RetinaNet with a PANet neck.
    pub detection: DetectionDecoder<B>,
}

/// The tasks, in the order of loss vectors and task weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Task {
    /// Tumour sub-region segmentation.
    Segmentation,
    /// Grade classification.
    Classification,
    /// Tumour detection.
    Detection,
}

impl Task {
    /// All tasks in loss-vector order.
    pub const ALL: [Task; 3] = [Task::Segmentation, Task::Classification, Task::Detection];
}

/// Outputs of a multi-task forward pass.
#[derive(Debug, Clone)]
pub struct MultiTaskOutput<B: Backend> {
    /// `[B, 3, D, H, W]` logits of TC, WT, ET.
    pub seg_logits: Tensor<B, 5>,
    /// `[B, classes]` grade logits.
    pub class_logits: Tensor<B, 2>,
    /// Head outputs over every anchor.
    pub detection: DetectionOutput<B>,
}

/// Ground truth of a batch.
#[derive(Debug, Clone)]
pub struct Targets<B: Backend> {
    /// `[B, 3, D, H, W]` TC/WT/ET masks in {0, 1}.
    pub seg: Tensor<B, 5>,
    /// Grade per image (0 = LGG, 1 = HGG).
    pub grades: Vec<usize>,
    /// Boxes per image.
    pub boxes: Vec<BoxTargets>,
}

/// Unweighted task losses.
#[derive(Debug, Clone)]
pub struct TaskLosses<B: Backend> {
    /// Dice loss (plus cross-entropy when configured).
    pub seg: Tensor<B, 1>,
    /// Focal loss of the grade.
    pub cls: Tensor<B, 1>,
    /// Detection classification + box loss.
    pub det: Tensor<B, 1>,
    /// Positive anchors matched in the batch.
    pub det_positives: usize,
}

impl<B: Backend> TaskLosses<B> {
    /// The losses in [`Task::ALL`] order.
    pub fn as_array(&self) -> [Tensor<B, 1>; 3] {
        [self.seg.clone(), self.cls.clone(), self.det.clone()]
    }

    /// `Σ wᵢ Lᵢ`.
    pub fn weighted_sum(&self, weights: &[f64]) -> Tensor<B, 1> {
        let [s, c, d] = self.as_array();
        s.mul_scalar(weights[0]) + c.mul_scalar(weights[1]) + d.mul_scalar(weights[2])
    }

    /// Values as `f64`, in [`Task::ALL`] order.
    pub fn values(&self) -> [f64; 3] {
        self.as_array().map(scalar)
    }
}

/// Forces the lazy initialisation of every parameter it visits.
struct Materialise;

impl<B: Backend> ModuleVisitor<B> for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Reads a one-element tensor.
pub fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

impl ModelConfig {
    /// Validates the configuration and builds the model, with every parameter initialised.
    ///
    /// burn initialises parameters lazily, and a clone of a not-yet-initialised parameter draws its own
    /// random values; the model is initialised here so that copies (`valid()`, checkpoints taken before
    /// the first forward) hold the same weights as the original.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<MultiTaskModel<B>> {
        self.validate()?;
        let model = MultiTaskModel {
            encoder: self.encoder.init(device),
            segmentation: self.segmentation.init(device),
            classification: self.classification.init(device),
            detection: self.detection.init(device),
        };
        model.visit(&mut Materialise);
        Ok(model)
    }

    /// Checks that an input of shape `[B, C, D, H, W]` fits this model.
    pub fn check_input(&self, dims: [usize; 5]) -> Result<()> {
        let reduction = self.encoder.patch_size * 16;
        let reason = if dims[1] != self.encoder.in_channels {
            Some(format!("expected {} channels", self.encoder.in_channels))
        } else if dims[2..].iter().any(|&s| s == 0 || s % reduction != 0) {
            Some(format!(
                "spatial sizes must be positive multiples of {reduction}"
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ModelError::InputShape {
                got: dims.to_vec(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Anchors for a detection output of an input of spatial size `input`.
    pub fn anchors(&self, input: [usize; 3], level_sizes: &[[usize; 3]]) -> Anchors {
        Anchors::generate(&self.detection.anchors, input, level_sizes)
    }

    /// Unweighted task losses of `output` against `targets`.
    pub fn losses<B: Backend>(
        &self,
        output: &MultiTaskOutput<B>,
        targets: &Targets<B>,
    ) -> TaskLosses<B> {
        let seg = segmentation_loss(&self.loss, output.seg_logits.clone(), targets.seg.clone());
        let cls = classification_focal_loss(
            output.class_logits.clone(),
            &targets.grades,
            self.loss.cls_focal_gamma,
        );
        let det = self.detection_losses(output, targets);
        TaskLosses {
            seg,
            cls,
            det: det.classification + det.box_regression,
            det_positives: det.positives,
        }
    }

    /// Detection losses alone.
    pub fn detection_losses<B: Backend>(
        &self,
        output: &MultiTaskOutput<B>,
        targets: &Targets<B>,
    ) -> DetectionLosses<B> {
        let [_, _, d, h, w] = output.seg_logits.dims();
        let anchors = self.anchors([d, h, w], &output.detection.level_sizes);
        detection_loss(&self.detection, &anchors, &output.detection, &targets.boxes)
    }

    /// Boxes after scoring, decoding and NMS.
    pub fn detections<B: Backend>(&self, output: &MultiTaskOutput<B>) -> Vec<Detections> {
        let [_, _, d, h, w] = output.seg_logits.dims();
        let anchors = self.anchors([d, h, w], &output.detection.level_sizes);
        postprocess(&self.detection, &anchors, &output.detection, [d, h, w])
    }
}

impl<B: Backend> MultiTaskModel<B> {
    /// `[B, in, D, H, W]` → segmentation logits, grade logits and detection head outputs.
    pub fn forward(&self, image: Tensor<B, 5>) -> MultiTaskOutput<B> {
        let features = self.encoder.forward(image.clone()); // hs0..hs4
        self.decode(image, &features)
    }

    /// The three decoders on given encoder features.
    pub fn decode(&self, image: Tensor<B, 5>, features: &EncoderFeatures<B>) -> MultiTaskOutput<B> {
        let seg_logits = self.segmentation.forward(image.clone(), features); // [B, 3, D, H, W]
        let cls_input = self
            .classification
            .prepare_input(seg_logits.clone(), image.clone());
        let class_logits = self.classification.forward(cls_input); // [B, classes]
        let guide = self.detection.guide(seg_logits.clone(), image);
        let detection = self.detection.forward(features, guide); // [B, N, K], [B, N, 6]
        MultiTaskOutput {
            seg_logits,
            class_logits,
            detection,
        }
    }

    /// The loss of one task only, running just the decoders it depends on.
    pub fn task_loss(
        &self,
        config: &ModelConfig,
        task: Task,
        image: Tensor<B, 5>,
        features: &EncoderFeatures<B>,
        targets: &Targets<B>,
    ) -> Tensor<B, 1> {
        match task {
            Task::Segmentation => {
                let seg = self.segmentation.forward(image, features);
                segmentation_loss(&config.loss, seg, targets.seg.clone())
            }
            Task::Classification => {
                let seg = self.segmentation.forward(image.clone(), features);
                let logits = self
                    .classification
                    .forward(self.classification.prepare_input(seg, image));
                classification_focal_loss(logits, &targets.grades, config.loss.cls_focal_gamma)
            }
            Task::Detection => {
                let guide = match self.detection.input() {
                    DetectionInput::Encoder => None,
                    DetectionInput::EncoderWithSegmentation => {
                        let seg = self.segmentation.forward(image.clone(), features);
                        self.detection.guide(seg, image.clone())
                    }
                };
                let detection = self.detection.forward(features, guide);
                let [_, _, d, h, w] = image.dims();
                let anchors = config.anchors([d, h, w], &detection.level_sizes);
                let l = detection_loss(&config.detection, &anchors, &detection, &targets.boxes);
                l.classification + l.box_regression
            }
        }
    }
}
