//! RetinaNet detection decoder (paper §III-C1): PANet neck over encoder stages 1–4, GroupNorm heads,
//! anchors sized to the input, ATSS matching, focal + smooth-L1 losses, 3D NMS.

pub mod anchors;
pub mod box_coder;
pub mod head;
pub mod matcher;
pub mod neck;
pub mod nms;

use burn::module::Module;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::{BoxLoss, DetectionConfig, DetectionInput};
use crate::encoder::EncoderFeatures;
use crate::loss::{giou_loss, sigmoid_focal_loss, smooth_l1};
use crate::ops::avg_pool3d_2;
pub use anchors::{Anchors, Box3};
use head::Head;
use neck::PanNeck;

/// Neck and the two heads.
#[derive(Module, Debug)]
pub struct DetectionDecoder<B: Backend> {
    /// PANet neck.
    pub neck: PanNeck<B>,
    /// Classification head (`A·K` outputs per location).
    pub cls_head: Head<B>,
    /// Box regression head (`A·6` outputs per location).
    pub box_head: Head<B>,
    input: DetectionInput,
}

/// Raw head outputs over all levels, in anchor order.
#[derive(Debug, Clone)]
pub struct DetectionOutput<B: Backend> {
    /// `[B, N, K]` class logits.
    pub cls_logits: Tensor<B, 3>,
    /// `[B, N, 6]` box offsets (see [`box_coder`]).
    pub box_regression: Tensor<B, 3>,
    /// Spatial size of each level.
    pub level_sizes: Vec<[usize; 3]>,
}

/// Ground-truth boxes of one image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoxTargets {
    /// Boxes, `[x0, y0, z0, x1, y1, z1]` in input voxels.
    pub boxes: Vec<Box3>,
    /// Class of each box (0-based).
    pub labels: Vec<usize>,
}

/// Detections of one image, by decreasing score.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detections {
    /// Boxes, `[x0, y0, z0, x1, y1, z1]`.
    pub boxes: Vec<Box3>,
    /// Scores in (0, 1).
    pub scores: Vec<f32>,
    /// Classes.
    pub labels: Vec<usize>,
}

impl DetectionConfig {
    /// Builds the decoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DetectionDecoder<B> {
        let a = self.num_anchors();
        let p = self.prior_probability;
        DetectionDecoder {
            neck: PanNeck::new(
                &self
                    .in_channels
                    .iter()
                    .map(|c| c + self.guide_channels())
                    .collect::<Vec<_>>(),
                self.channels,
                device,
            ),
            cls_head: Head::new(
                self.channels,
                self.head_convs,
                self.group_norm_groups,
                a,
                self.num_classes,
                -((1.0 - p) / p).ln(),
                device,
            ),
            box_head: Head::new(
                self.channels,
                self.head_convs,
                self.group_norm_groups,
                a,
                6,
                0.0,
                device,
            ),
            input: self.input,
        }
    }
}

impl<B: Backend> DetectionDecoder<B> {
    /// What the neck reads besides the encoder.
    pub fn input(&self) -> DetectionInput {
        self.input
    }

    /// The full-resolution guide the configured input concatenates to every level: the segmentation's
    /// probabilities (gradient stopped) and the image, `[B, seg + image channels, D, H, W]`; `None`
    /// when the neck reads the encoder alone.
    pub fn guide(&self, seg_logits: Tensor<B, 5>, image: Tensor<B, 5>) -> Option<Tensor<B, 5>> {
        match self.input {
            DetectionInput::Encoder => None,
            DetectionInput::EncoderWithSegmentation => {
                Some(Tensor::cat(vec![sigmoid(seg_logits.detach()), image], 1))
            }
        }
    }

    /// Encoder outputs `hs1..hs4` (and the guide of [`Self::guide`], pooled to each level) → head
    /// outputs over every anchor.
    pub fn forward(
        &self,
        features: &EncoderFeatures<B>,
        guide: Option<Tensor<B, 5>>,
    ) -> DetectionOutput<B> {
        let mut levels = features.hidden[1..].to_vec(); // strides 4, 8, 16, 32
        let level_sizes: Vec<[usize; 3]> = levels
            .iter()
            .map(|t| {
                let [_, _, d, h, w] = t.dims();
                [d, h, w]
            })
            .collect();
        assert_eq!(
            guide.is_some(),
            self.input != DetectionInput::Encoder,
            "the detection input {:?} needs a guide exactly when it reads more than the encoder",
            self.input
        );
        if let Some(mut g) = guide {
            for (level, size) in levels.iter_mut().zip(&level_sizes) {
                // each level's grid divides the input's, so halving reaches it exactly
                while g.dims()[2..] != size[..] {
                    g = avg_pool3d_2(g);
                }
                *level = Tensor::cat(vec![level.clone(), g.clone()], 1);
            }
        }
        let neck = self.neck.forward(levels); // each [B, F, size_i]
        let cls = neck
            .iter()
            .map(|n| self.cls_head.forward(n.clone()))
            .collect();
        let reg = neck.into_iter().map(|n| self.box_head.forward(n)).collect();
        DetectionOutput {
            cls_logits: Tensor::cat(cls, 1),     // [B, N, K]
            box_regression: Tensor::cat(reg, 1), // [B, N, 6]
            level_sizes,
        }
    }
}

/// Classification and box losses of the detection decoder.
#[derive(Debug, Clone)]
pub struct DetectionLosses<B: Backend> {
    /// Focal loss over all anchors.
    pub classification: Tensor<B, 1>,
    /// Smooth L1 over the positive anchors.
    pub box_regression: Tensor<B, 1>,
    /// Positive anchors over the batch.
    pub positives: usize,
}

/// Matches anchors to the targets (ATSS) and computes the detection losses.
///
/// The focal loss is summed over every anchor and class and divided by the number of positives
/// (RetinaNet's normalisation) unless `normalize_by_positives` is off, in which case it is averaged like the
/// reference; the box loss (smooth L1 summed over coordinates, `1 − GIoU`, or both, as configured) is
/// averaged over positives.
pub fn detection_loss<B: Backend>(
    config: &DetectionConfig,
    anchors: &Anchors,
    output: &DetectionOutput<B>,
    targets: &[BoxTargets],
) -> DetectionLosses<B> {
    let device = output.cls_logits.device();
    let [b, n, k] = output.cls_logits.dims();
    assert_eq!(n, anchors.len(), "anchors do not match the head outputs");
    assert_eq!(b, targets.len(), "one BoxTargets per image");
    let mut cls_target = vec![0f32; b * n * k];
    let mut positive_rows = Vec::new();
    let mut box_targets = Vec::new();
    let (mut positive_anchors, mut positive_gt) = (Vec::new(), Vec::new());
    for (i, t) in targets.iter().enumerate() {
        let matches = matcher::atss_match(&config.matcher, anchors, &t.boxes);
        for (a, m) in matches.iter().enumerate() {
            if let Some(g) = *m {
                cls_target[(i * n + a) * k + t.labels[g]] = 1.0;
                positive_rows.push((i * n + a) as i64);
                box_targets.extend(box_coder::encode(&anchors.boxes[a], &t.boxes[g]));
                positive_anchors.push(anchors.boxes[a]);
                positive_gt.push(t.boxes[g]);
            }
        }
    }
    let positives = positive_rows.len();
    let loss_cfg = &config.loss;
    let target = Tensor::<B, 3>::from_data(TensorData::new(cls_target, [b, n, k]), &device);
    let focal = sigmoid_focal_loss(
        output.cls_logits.clone(),
        target,
        loss_cfg.focal_gamma,
        loss_cfg.focal_alpha,
    );
    let classification = if loss_cfg.normalize_by_positives {
        focal.sum().div_scalar(positives.max(1) as f64)
    } else {
        focal.mean()
    };
    let box_regression = if positives == 0 {
        // keeps the graph connected so every parameter still receives a (zero) gradient
        output.box_regression.clone().sum().mul_scalar(0.0)
    } else {
        let rows =
            Tensor::<B, 1, Int>::from_data(TensorData::new(positive_rows, [positives]), &device);
        let pred = output
            .box_regression
            .clone()
            .reshape([b * n, 6])
            .select(0, rows); // [P, 6]
        let boxes = |rows: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(rows, [positives, 6]), &device)
        };
        let smooth = || {
            smooth_l1(
                pred.clone(),
                boxes(box_targets.clone()),
                loss_cfg.smooth_l1_beta,
            )
            .sum()
            .div_scalar(positives as f64)
        };
        let giou = || {
            giou_loss(
                pred.clone(),
                boxes(positive_anchors.concat()),
                boxes(positive_gt.concat()),
            )
            .mean()
        };
        match loss_cfg.box_loss {
            BoxLoss::SmoothL1 => smooth(),
            BoxLoss::Giou => giou(),
            BoxLoss::SmoothL1AndGiou => smooth() + giou(),
        }
    };
    DetectionLosses {
        classification,
        box_regression,
        positives,
    }
}

/// Scores, decodes, clips and suppresses the head outputs into detections per image.
pub fn postprocess<B: Backend>(
    config: &DetectionConfig,
    anchors: &Anchors,
    output: &DetectionOutput<B>,
    input: [usize; 3],
) -> Vec<Detections> {
    let [b, n, k] = output.cls_logits.dims();
    let logits: Vec<f32> = output
        .cls_logits
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 logits");
    let deltas: Vec<f32> = output
        .box_regression
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 offsets");
    let inf = &config.inference;
    let mut all = Vec::with_capacity(b);
    for i in 0..b {
        let (mut boxes, mut scores, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        for &count in &anchors.per_level {
            let mut cand: Vec<(f32, usize, usize)> = Vec::new();
            for a in start..start + count {
                for c in 0..k {
                    let s = 1.0 / (1.0 + (-logits[(i * n + a) * k + c]).exp());
                    if s as f64 > inf.score_threshold {
                        cand.push((s, a, c));
                    }
                }
            }
            cand.sort_by(|x, y| y.0.total_cmp(&x.0));
            cand.truncate(inf.topk_per_level);
            for (s, a, c) in cand {
                let d = &deltas[(i * n + a) * 6..(i * n + a) * 6 + 6];
                let mut bx = box_coder::decode(&anchors.boxes[a], d);
                for ax in 0..3 {
                    bx[ax] = bx[ax].clamp(0.0, input[ax] as f32);
                    bx[ax + 3] = bx[ax + 3].clamp(0.0, input[ax] as f32);
                }
                if anchors::volume(&bx) > 0.0 {
                    boxes.push(bx);
                    scores.push(s);
                    labels.push(c);
                }
            }
            start += count;
        }
        let keep = nms::nms(
            &boxes,
            &scores,
            &labels,
            inf.nms_iou as f32,
            inf.detections_per_image,
        );
        all.push(Detections {
            boxes: keep.iter().map(|&j| boxes[j]).collect(),
            scores: keep.iter().map(|&j| scores[j]).collect(),
            labels: keep.iter().map(|&j| labels[j]).collect(),
        });
    }
    all
}
