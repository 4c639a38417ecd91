//! Model configuration and presets.
//!
//! Every module is built from a `#[derive(Config)]` struct by `init(device)`. [`ModelConfig`] gathers them
//! with the input size; [`ModelConfig::reference`] reproduces the reference implementation's structure and
//! [`ModelConfig::tiny`] is small enough to train on two CPU cores in minutes.

use burn::config::Config;

use crate::error::{ModelError, Result};

/// Which slices the patch merging concatenates.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum PatchMergingMode {
    /// MONAI's legacy `"merging"`: offsets (d,h,w) 000, 100, 010, 001, 101, 010, 001, 111 — two slices are
    /// duplicated and 011, 110 are never seen. Kept because the reference (and MONAI's pretrained weights)
    /// use it.
    Legacy,
    /// All eight offsets of the 2×2×2 neighbourhood, in (d,h,w) lexicographic order (MONAI `"mergingv2"`).
    V2,
}

/// How the relative position bias is indexed when a window is clipped to a smaller feature map.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum RelativeBiasIndex {
    /// The index matrix of the configured window, sliced to `[:n, :n]` (the reference's stage 4 on 6³:
    /// the first 216 rows of the 7³ layout, which is not a 6³ layout).
    SlicedLegacy,
    /// The index of the actual (clipped) window layout into the same `(2w-1)³` table.
    Exact,
}

/// The shared 3D Swin Transformer encoder.
#[derive(Config, Debug, PartialEq)]
pub struct SwinConfig {
    /// Image channels (4 MRI modalities for BraTS).
    #[config(default = 4)]
    pub in_channels: usize,
    /// Channels after the patch embedding; stage `i` works at `embed_dim · 2^i`.
    #[config(default = 48)]
    pub embed_dim: usize,
    /// Cubic patch edge of the patch embedding (a strided convolution).
    #[config(default = 2)]
    pub patch_size: usize,
    /// Swin blocks per stage (4 stages).
    #[config(default = "vec![2, 2, 2, 2]")]
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    #[config(default = "vec![3, 6, 12, 24]")]
    pub num_heads: Vec<usize>,
    /// Cubic window edge; clipped to the feature map where the map is smaller.
    #[config(default = 7)]
    pub window_size: usize,
    /// Hidden width of the block MLPs relative to the block width.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Bias on the query/key/value projection.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// Patch merging variant.
    #[config(default = "PatchMergingMode::Legacy")]
    pub merging: PatchMergingMode,
    /// Relative position bias indexing for clipped windows.
    #[config(default = "RelativeBiasIndex::SlicedLegacy")]
    pub relative_bias_index: RelativeBiasIndex,
    /// Apply a non-affine channel layer norm to every stage output (MONAI `normalize=True`).
    #[config(default = true)]
    pub normalize: bool,
    /// Epsilon of every layer norm.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

/// SwinUNETR-style segmentation decoder.
#[derive(Config, Debug, PartialEq)]
pub struct SegmentationConfig {
    /// Image channels (the first residual block sees the image itself).
    #[config(default = 4)]
    pub in_channels: usize,
    /// Base width; must equal the encoder's `embed_dim` because the skips are the encoder's outputs.
    #[config(default = 48)]
    pub feature_size: usize,
    /// Output channels: TC, WT, ET logits.
    #[config(default = 3)]
    pub out_channels: usize,
    /// Patch size of the encoder (the first up block restores it).
    #[config(default = 2)]
    pub patch_size: usize,
}

/// What the classification decoder reads.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum ClassifierInput {
    /// The raw segmentation logits (3 channels), as the reference does.
    Logits,
    /// Sigmoid probabilities of the segmentation concatenated with the image (3 + image channels).
    ProbabilitiesWithImage,
}

/// Normalisation layers of the classification decoder.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum ClassifierNorm {
    /// Batch norm (the reference; degenerate at batch size 1).
    Batch,
    /// Group norm with the given number of groups (independent of the batch size).
    Group(usize),
}

/// How the classification decoder pools its last feature maps into one vector.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum ClassifierPool {
    /// Global average pooling (DenseNet's and the reference's).
    Average,
    /// Global average and global max pooling, concatenated (twice the classifier's input).
    /// A sign confined to a few voxels, such as an enhancing rim that sets a high grade apart,
    /// reaches the classifier at full strength instead of diluted over the whole map.
    AverageAndMax,
}

/// DenseNet-121 3D classification decoder.
#[derive(Config, Debug, PartialEq)]
pub struct ClassificationConfig {
    /// Input of the classifier.
    #[config(default = "ClassifierInput::Logits")]
    pub input: ClassifierInput,
    /// Image channels (used by [`ClassifierInput::ProbabilitiesWithImage`]).
    #[config(default = 4)]
    pub image_channels: usize,
    /// Segmentation channels.
    #[config(default = 3)]
    pub seg_channels: usize,
    /// Width of the stem.
    #[config(default = 64)]
    pub init_features: usize,
    /// Channels each dense layer adds.
    #[config(default = 32)]
    pub growth_rate: usize,
    /// Dense layers per block.
    #[config(default = "vec![6, 12, 24, 16]")]
    pub block_config: Vec<usize>,
    /// Bottleneck width multiplier of the 1×1 convolutions.
    #[config(default = 4)]
    pub bn_size: usize,
    /// Normalisation.
    #[config(default = "ClassifierNorm::Batch")]
    pub norm: ClassifierNorm,
    /// Pooling before the linear classifier.
    #[config(default = "ClassifierPool::Average")]
    pub pool: ClassifierPool,
    /// Classes (LGG, HGG).
    #[config(default = 2)]
    pub num_classes: usize,
}

impl ClassificationConfig {
    /// Input channels implied by [`Self::input`].
    pub fn in_channels(&self) -> usize {
        match self.input {
            ClassifierInput::Logits => self.seg_channels,
            ClassifierInput::ProbabilitiesWithImage => self.seg_channels + self.image_channels,
        }
    }
}

/// Anchor layout of the detection decoder.
#[derive(Config, Debug, PartialEq)]
pub struct AnchorConfig {
    /// Anchor shapes (x, y, z extents) before scaling; their geometric mean is normalised to 1, so only the
    /// aspect ratios matter. The default is the reference's five shapes.
    #[config(
        default = "vec![[45.0, 58.0, 52.0], [40.0, 65.0, 58.0], [42.0, 58.0, 55.0], [30.0, 60.0, 40.0], [70.0, 70.0, 60.0]]"
    )]
    pub shapes: Vec<[f64; 3]>,
    /// Geometric-mean anchor edge per pyramid level, in voxels of the input.
    pub sizes: Vec<f64>,
}

impl AnchorConfig {
    /// Anchors sized to an input edge: level `l` gets `input/6 · 2^l`, clipped to the input, so every level
    /// holds anchors that fit inside the image (the reference's levels 1–3 do not).
    ///
    /// This ties the anchors to the input edge, not to the grid they sit on: it equals
    /// [`Self::sized_to_strides`] only when the input is 24 strides of the first level (the reference's
    /// 96³ with stride 4). On a 32³ input it gives 5.3-voxel anchors on a stride-4 grid.
    pub fn sized_to_input(input_edge: usize, levels: usize) -> Self {
        let base = input_edge as f64 / 6.0;
        let sizes = (0..levels)
            .map(|l| (base * f64::powi(2.0, l as i32)).min(input_edge as f64))
            .collect();
        Self::new(sizes)
    }

    /// Anchors sized to the grids they sit on (RetinaNet's rule): level `l`, of stride
    /// `first_stride · 2^l`, gets `4 · stride`, clipped to the input edge. Neighbouring anchors of a level
    /// then overlap by three quarters, so an object of a level's size always has an anchor centred within
    /// an eighth of its edge, and ATSS finds its positives on the finest grid that fits the object. For
    /// the reference (96³, stride 4) this is `[16, 32, 64, 96]`, the same as [`Self::sized_to_input`].
    pub fn sized_to_strides(input_edge: usize, first_stride: usize, levels: usize) -> Self {
        let sizes = (0..levels)
            .map(|l| (((4 * first_stride) << l) as f64).min(input_edge as f64))
            .collect();
        Self::new(sizes)
    }
}

/// ATSS matcher settings.
#[derive(Config, Debug, PartialEq)]
pub struct MatcherConfig {
    /// Candidates per level and per anchor shape (`k = num_candidates · A` closest anchors per level).
    #[config(default = 4)]
    pub num_candidates: usize,
    /// Also require an anchor's centre to lie inside the box (ATSS's rule; the reference turns it off).
    #[config(default = true)]
    pub center_in_gt: bool,
}

/// Detection losses and post-processing.
#[derive(Config, Debug, PartialEq)]
pub struct DetectionLossConfig {
    /// Focusing parameter of the sigmoid focal loss.
    #[config(default = 2.0)]
    pub focal_gamma: f64,
    /// Positive-class weight of the focal loss (`None`: unweighted, as the reference).
    #[config(default = "Some(0.25)")]
    pub focal_alpha: Option<f64>,
    /// Transition point of the smooth-L1 box loss.
    #[config(default = "1.0 / 9.0")]
    pub smooth_l1_beta: f64,
    /// Box regression loss over the positive anchors.
    #[config(default = "BoxLoss::SmoothL1")]
    pub box_loss: BoxLoss,
    /// Divide the classification loss by the number of positive anchors (RetinaNet) rather than averaging it
    /// over every anchor (the reference, which drowns the positives).
    #[config(default = true)]
    pub normalize_by_positives: bool,
}

/// Box regression loss of the detection decoder.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum BoxLoss {
    /// Smooth L1 on the box coder's offsets (RetinaNet, MONAI, the reference).
    SmoothL1,
    /// Generalised IoU of the decoded boxes (`1 − GIoU`), scale-free and scored like the evaluation.
    Giou,
    /// The sum of both.
    SmoothL1AndGiou,
}

/// Detection inference settings.
#[derive(Config, Debug, PartialEq)]
pub struct DetectionInferenceConfig {
    /// Minimum score kept.
    #[config(default = 0.05)]
    pub score_threshold: f64,
    /// Candidates kept per level before NMS.
    #[config(default = 1000)]
    pub topk_per_level: usize,
    /// IoU above which NMS suppresses a box.
    #[config(default = 0.22)]
    pub nms_iou: f64,
    /// Detections kept per image.
    #[config(default = 10)]
    pub detections_per_image: usize,
}

/// What the detection neck reads at each pyramid level.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum DetectionInput {
    /// The encoder stage alone (the reference).
    Encoder,
    /// The encoder stage concatenated with the segmentation's sigmoid probabilities and the image,
    /// average-pooled to the stage's grid. The gradient stops at the probabilities: the detection loss
    /// trains the encoder through its own path only, never the segmentation decoder.
    EncoderWithSegmentation,
}

/// RetinaNet detection decoder with a PANet neck.
#[derive(Config, Debug, PartialEq)]
pub struct DetectionConfig {
    /// Encoder widths of the levels fed to the neck (stage outputs 1–4).
    pub in_channels: Vec<usize>,
    /// What the neck reads besides the encoder (see [`DetectionInput`]).
    #[config(default = "DetectionInput::Encoder")]
    pub input: DetectionInput,
    /// Segmentation channels (read by [`DetectionInput::EncoderWithSegmentation`]).
    #[config(default = 3)]
    pub seg_channels: usize,
    /// Image channels (read by [`DetectionInput::EncoderWithSegmentation`]).
    #[config(default = 4)]
    pub image_channels: usize,
    /// Width of the neck and heads.
    #[config(default = 96)]
    pub channels: usize,
    /// Object classes (1: tumour).
    #[config(default = 1)]
    pub num_classes: usize,
    /// Conv + GroupNorm + ReLU layers of each head.
    #[config(default = 4)]
    pub head_convs: usize,
    /// Groups of the heads' GroupNorm.
    #[config(default = 8)]
    pub group_norm_groups: usize,
    /// Prior probability of the classification bias (`bias = -ln((1-p)/p)`).
    #[config(default = 0.01)]
    pub prior_probability: f64,
    /// Anchors.
    pub anchors: AnchorConfig,
    /// Matcher.
    #[config(default = "MatcherConfig::new()")]
    pub matcher: MatcherConfig,
    /// Losses.
    #[config(default = "DetectionLossConfig::new()")]
    pub loss: DetectionLossConfig,
    /// Post-processing.
    #[config(default = "DetectionInferenceConfig::new()")]
    pub inference: DetectionInferenceConfig,
}

impl DetectionConfig {
    /// Anchors per location.
    pub fn num_anchors(&self) -> usize {
        self.anchors.shapes.len()
    }

    /// Channels concatenated to every encoder level before the neck.
    pub fn guide_channels(&self) -> usize {
        match self.input {
            DetectionInput::Encoder => 0,
            DetectionInput::EncoderWithSegmentation => self.seg_channels + self.image_channels,
        }
    }
}

/// Soft Dice loss settings.
#[derive(Config, Debug, PartialEq)]
pub struct DiceConfig {
    /// Added to the numerator. Non-zero makes an empty ground truth score `1 − s/(Σp² + s)`: 0 for an
    /// empty prediction and rising, *with* a gradient, as false positives accumulate, so false positives on
    /// empty regions are penalised (the reference uses 0: a constant loss of 1 with no gradient). With a
    /// smoothing of 1 the penalty is already small once the false-positive mass is below one voxel; with
    /// MONAI's 1e-5 every voxel must reach p < 1e-5 before an empty channel's loss leaves 1.
    #[config(default = 1.0)]
    pub smooth_nr: f64,
    /// Added to the denominator.
    #[config(default = 1.0)]
    pub smooth_dr: f64,
    /// Square the predictions in the denominator (the reference does).
    #[config(default = true)]
    pub squared_pred: bool,
    /// Pool every sample of the batch into one Dice per channel (nnU-Net's batch Dice) instead of one
    /// per sample and channel (the reference). Per sample, a channel whose target is empty scores
    /// `Σp²/(Σp² + s)`, whose gradient fades as the false positives grow (at 200 voxels of p ≈ 0.9,
    /// under 1e-4 per voxel): a model that marks a whole non-enhancing core as enhancing is barely
    /// pushed back. Pooled, those voxels share a denominator with the batch's true positives.
    #[config(default = false)]
    pub batch_dice: bool,
}

/// Losses of the segmentation and classification tasks (detection's live in [`DetectionConfig`]).
#[derive(Config, Debug, PartialEq)]
pub struct LossConfig {
    /// Segmentation Dice.
    #[config(default = "DiceConfig::new()")]
    pub dice: DiceConfig,
    /// Focusing parameter of the classification focal loss (the reference: 2.8).
    #[config(default = 2.8)]
    pub cls_focal_gamma: f64,
    /// Weight of a voxel-wise binary cross-entropy added to the Dice loss (MONAI's `DiceCELoss`); 0 = Dice
    /// alone, as the reference. Dice's gradient is tiny while a channel's predicted mass is large, so Dice
    /// alone starts slowly.
    #[config(default = 0.0)]
    pub seg_bce_weight: f64,
}

/// The whole multi-task model.
#[derive(Config, Debug, PartialEq)]
pub struct ModelConfig {
    /// Preset name this configuration came from (informative).
    pub name: String,
    /// Input edge lengths (x, y, z) the model is built for (anchors and MAC counts depend on it).
    pub input_size: [usize; 3],
    /// Shared encoder.
    pub encoder: SwinConfig,
    /// Segmentation decoder.
    pub segmentation: SegmentationConfig,
    /// Classification decoder.
    pub classification: ClassificationConfig,
    /// Detection decoder.
    pub detection: DetectionConfig,
    /// Task losses.
    #[config(default = "LossConfig::new()")]
    pub loss: LossConfig,
}

/// Names of the built-in presets.
pub const PRESETS: &[&str] = &["reference", "tiny"];

impl ModelConfig {
    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "reference" => Ok(Self::reference()),
            "tiny" => Ok(Self::tiny()),
            _ => Err(ModelError::UnknownPreset {
                name: name.to_string(),
                known: PRESETS.join(", "),
            }),
        }
    }

    /// The reference implementation's structure at 96³: encoder 8,063,154 parameters, segmentation decoder
    /// 54,128,787, DenseNet-121 3D 11,288,578 (legacy merging, sliced stage-4 bias index, logits into the
    /// classifier with batch norm). The detection decoder is the corrected one (PANet with strided
    /// convolutions, anchors sized to the input), so its parameter count differs from the reference's.
    pub fn reference() -> Self {
        let encoder = SwinConfig::new();
        let widths = stage_widths(encoder.embed_dim);
        Self {
            name: "reference".into(),
            input_size: [96, 96, 96],
            segmentation: SegmentationConfig::new(),
            classification: ClassificationConfig::new(),
            detection: DetectionConfig::new(
                widths[1..].to_vec(),
                AnchorConfig::sized_to_input(96, 4),
            ),
            encoder,
            loss: LossConfig::new(),
        }
    }

    /// A small model on 32³ inputs (embed 8, window 4, a thin DenseNet and detection decoder) that trains in
    /// minutes on two CPU cores. It uses the corrected variants: all-offset merging, exact bias index,
    /// probabilities with the image into the classifier.
    ///
    /// The DenseNet has two dense blocks, not four: the stem and its pool take 32³ to 8³, and every
    /// transition halves again, so four blocks would run the last block and the final norm on 1³ maps.
    /// With two the features are still 4³ when they are pooled. Its norms are batch norms (the
    /// reference's): a per-sample norm (group norm) right before the global pool normalises away each
    /// sample's activation level within every group of channels, much of what the pool passes on. In the
    /// demo's 192 training steps the group-normed classifier learned only the class prior (the same
    /// probability for every case, with two blocks as with four); the batch-normed one ranks the cases.
    pub fn tiny() -> Self {
        let encoder = SwinConfig::new()
            .with_embed_dim(8)
            .with_num_heads(vec![1, 2, 4, 8])
            .with_window_size(4)
            .with_merging(PatchMergingMode::V2)
            .with_relative_bias_index(RelativeBiasIndex::Exact);
        let widths = stage_widths(encoder.embed_dim);
        Self {
            name: "tiny".into(),
            input_size: [32, 32, 32],
            segmentation: SegmentationConfig::new().with_feature_size(8),
            classification: ClassificationConfig::new()
                .with_input(ClassifierInput::ProbabilitiesWithImage)
                .with_init_features(8)
                .with_growth_rate(4)
                .with_block_config(vec![2, 2])
                .with_bn_size(2)
                .with_norm(ClassifierNorm::Batch)
                .with_pool(ClassifierPool::AverageAndMax),
            // Anchors 4 strides wide ([16, 32, 32, 32]): the input-sized ones (5.3, 10.7, 21, 32) put
            // the positives of 20–28-voxel tumours on the 2³ and 1³ grids only, which cannot say
            // where a tumour is. The segmentation probabilities beside the encoder give the neck an
            // input-dependent signal from the first steps: fed the encoder alone, the deep stages' near
            // constant maps (every case alike to 1 part in 10–100) dominate the neck and the heads
            // learn one box for every input.
            detection: DetectionConfig::new(
                widths[1..].to_vec(),
                AnchorConfig::sized_to_strides(32, 2 * encoder.patch_size, 4),
            )
            .with_input(DetectionInput::EncoderWithSegmentation)
            .with_channels(16)
            .with_head_convs(2)
            .with_group_norm_groups(4),
            encoder,
            // γ = 0 (plain binary cross-entropy) for the grade: with the reference's γ = 2.8 the loss
            // all but vanishes once a case is classified at p ≈ 0.6, so the trained classifier left
            // every phantom case between 0.50 and 0.73, ranked rightly but cut at 0.5 on the wrong
            // side for most low-grade cases (held-out accuracy 0.6). Batch Dice: see `batch_dice`
            // (held-out ET Dice 0.63 → 0.85, the low-grade cores no longer marked enhancing).
            loss: LossConfig::new()
                .with_dice(DiceConfig::new().with_batch_dice(true))
                .with_seg_bce_weight(1.0)
                .with_cls_focal_gamma(0.0),
        }
    }

    /// Checks the configuration and reports every inconsistency at once.
    pub fn validate(&self) -> Result<()> {
        let mut errors = Vec::new();
        let e = &self.encoder;
        if e.depths.len() != 4 || e.num_heads.len() != 4 {
            errors.push(format!(
                "encoder.depths and encoder.num_heads must have 4 entries (got {} and {})",
                e.depths.len(),
                e.num_heads.len()
            ));
        }
        for (i, (&w, &h)) in stage_widths(e.embed_dim)
            .iter()
            .zip(e.num_heads.iter())
            .enumerate()
        {
            if h == 0 || w % h != 0 {
                errors.push(format!(
                    "encoder stage {i}: width {w} is not divisible by {h} heads"
                ));
            }
        }
        if e.patch_size == 0 || e.window_size == 0 {
            errors.push("encoder.patch_size and encoder.window_size must be positive".into());
        }
        let reduction = e.patch_size * 16;
        for (axis, &s) in self.input_size.iter().enumerate() {
            if s % reduction != 0 {
                errors.push(format!(
                    "input_size[{axis}] = {s} must be a multiple of patch_size·16 = {reduction} \
                     (the decoders mirror five halvings)"
                ));
            }
        }
        if self.segmentation.feature_size != e.embed_dim {
            errors.push(format!(
                "segmentation.feature_size ({}) must equal encoder.embed_dim ({})",
                self.segmentation.feature_size, e.embed_dim
            ));
        }
        if self.segmentation.in_channels != e.in_channels {
            errors.push(format!(
                "segmentation.in_channels ({}) must equal encoder.in_channels ({})",
                self.segmentation.in_channels, e.in_channels
            ));
        }
        if self.segmentation.patch_size != e.patch_size {
            errors.push(format!(
                "segmentation.patch_size ({}) must equal encoder.patch_size ({})",
                self.segmentation.patch_size, e.patch_size
            ));
        }
        let c = &self.classification;
        if c.seg_channels != self.segmentation.out_channels {
            errors.push(format!(
                "classification.seg_channels ({}) must equal segmentation.out_channels ({})",
                c.seg_channels, self.segmentation.out_channels
            ));
        }
        if let ClassifierNorm::Group(g) = c.norm {
            let mut widths = vec![c.init_features, c.bn_size * c.growth_rate];
            let mut ch = c.init_features;
            for (i, &n) in c.block_config.iter().enumerate() {
                for l in 0..n {
                    widths.push(ch + l * c.growth_rate);
                }
                ch += n * c.growth_rate;
                widths.push(ch);
                if i + 1 < c.block_config.len() {
                    ch /= 2;
                }
            }
            if g == 0 || widths.iter().any(|w| w % g != 0) {
                errors.push(format!(
                    "classification.norm: {g} groups do not divide every DenseNet width"
                ));
            }
        }
        let d = &self.detection;
        if d.in_channels[..] != stage_widths(e.embed_dim)[1..] {
            errors.push(format!(
                "detection.in_channels {:?} must be the encoder widths of stages 1–4 {:?}",
                d.in_channels,
                &stage_widths(e.embed_dim)[1..]
            ));
        }
        if d.anchors.sizes.len() != d.in_channels.len() {
            errors.push(format!(
                "detection.anchors.sizes has {} levels, the neck has {}",
                d.anchors.sizes.len(),
                d.in_channels.len()
            ));
        }
        if d.anchors.shapes.is_empty() {
            errors.push("detection.anchors.shapes is empty".into());
        }
        if d.group_norm_groups == 0 || !d.channels.is_multiple_of(d.group_norm_groups) {
            errors.push(format!(
                "detection.channels ({}) is not divisible by group_norm_groups ({})",
                d.channels, d.group_norm_groups
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ModelError::InvalidConfig(errors.join("; ")))
        }
    }
}

/// Widths of the five encoder outputs: `embed_dim · 2^i`, i = 0..=4.
pub fn stage_widths(embed_dim: usize) -> [usize; 5] {
    [
        embed_dim,
        embed_dim * 2,
        embed_dim * 4,
        embed_dim * 8,
        embed_dim * 16,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for name in PRESETS {
            ModelConfig::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn unknown_preset_lists_known_ones() {
        let err = ModelConfig::preset("huge").unwrap_err().to_string();
        assert!(
            err.contains("huge") && err.contains("reference, tiny"),
            "{err}"
        );
    }

    #[test]
    fn validation_collects_every_error() {
        let mut cfg = ModelConfig::tiny();
        cfg.input_size = [30, 32, 32];
        cfg.segmentation.feature_size = 10;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("input_size[0] = 30"), "{err}");
        assert!(err.contains("segmentation.feature_size (10)"), "{err}");
    }

    #[test]
    fn reference_anchors_fit_the_input() {
        let cfg = ModelConfig::reference();
        assert_eq!(cfg.detection.anchors.sizes, vec![16.0, 32.0, 64.0, 96.0]);
        // the stride rule gives the reference the same anchors
        assert_eq!(
            AnchorConfig::sized_to_strides(96, 4, 4),
            cfg.detection.anchors
        );
    }

    #[test]
    fn tiny_anchors_are_four_strides_wide() {
        let cfg = ModelConfig::tiny();
        assert_eq!(cfg.detection.anchors.sizes, vec![16.0, 32.0, 32.0, 32.0]);
        assert_eq!(cfg.detection.guide_channels(), 7);
        assert_eq!(ModelConfig::reference().detection.guide_channels(), 0);
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = ModelConfig::tiny();
        let json = serde_json::to_string(&cfg).unwrap();
        let back: ModelConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }
}
