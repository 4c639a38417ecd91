//! The `tiny` preset's detector learns boxes that follow the tumour: anchors whose positives lie on
//! grids fine enough to localise 20–28-voxel tumours, a detection loss that leaves the segmentation
//! decoder alone, and a short training run whose boxes differ per crop and fit them.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use mtmed3d_model::balance::TaskBalancer;
use mtmed3d_model::config::{AnchorConfig, DetectionInput};
use mtmed3d_model::decoder::detection::anchors::{Box3, iou};
use mtmed3d_model::decoder::detection::matcher::atss_match;
use mtmed3d_model::training::{PartRates, Trainer, inference_model, seeded_init};
use mtmed3d_model::{CpuAutodiff, CpuBackend, ModelConfig, Task};

/// Tumours of whole-tumour radius 10–14 (boxes 20–28 voxels, as the demo's phantoms) in 32³ crops,
/// six of the eight cut by the crop border, as random crops cut them.
fn crops() -> Vec<common::Phantom> {
    let centres = [
        [16.0, 16.0, 16.0],
        [10.0, 20.0, 14.0],
        [22.0, 12.0, 18.0],
        [4.0, 16.0, 20.0],
        [28.0, 26.0, 8.0],
        [14.0, 6.0, 26.0],
        [20.0, 22.0, 24.0],
        [8.0, 8.0, 8.0],
    ];
    centres
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let r = 10.0 + (i % 3) as f32 * 2.0;
            common::phantom(32, *c, r, i % 2 == 0, 100 + i as u64)
        })
        .collect()
}

const LEVELS: [[usize; 3]; 4] = [[8; 3], [4; 3], [2; 3], [1; 3]];

/// Positive anchors of `gt` on levels 0–1 (the 8³ and 4³ grids) under `anchors`.
fn fine_positives(cfg: &ModelConfig, anchors: &AnchorConfig, gt: &Box3) -> usize {
    let mut c = cfg.detection.clone();
    c.anchors = anchors.clone();
    let a = mtmed3d_model::decoder::detection::Anchors::generate(&c.anchors, [32; 3], &LEVELS);
    let m = atss_match(&c.matcher, &a, &[*gt]);
    let fine = a.per_level[0] + a.per_level[1];
    m[..fine].iter().filter(|g| g.is_some()).count()
}

#[test]
fn tumour_sized_boxes_get_positives_on_the_fine_grids() {
    let cfg = ModelConfig::tiny();
    let input_sized = AnchorConfig::sized_to_input(32, 4);
    for case in crops() {
        let gt = case.boxes.boxes[0];
        // the input-sized anchors (5.3 and 10.7 voxels on the 8³ and 4³ grids) leave these tumours to
        // the 2³ and 1³ grids only
        assert_eq!(fine_positives(&cfg, &input_sized, &gt), 0, "{gt:?}");
        // anchors four strides wide give every one of them, border-cut or not, positives there
        let n = fine_positives(&cfg, &cfg.detection.anchors, &gt);
        assert!(n >= 4, "{gt:?}: {n} positives on the 8³ and 4³ grids");
    }
}

/// Sum of the absolute gradients of a module's parameters.
fn grad_mass<B: AutodiffBackend, M: Module<B>>(module: &M, grads: &B::Gradients) -> f64 {
    struct Sum<'a, B: AutodiffBackend>(&'a B::Gradients, f64);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Sum<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = param.val().grad(self.0) {
                self.1 += g.abs().sum().into_data().iter::<f64>().sum::<f64>();
            }
        }
    }
    let mut s = Sum::<B>(grads, 0.0);
    module.visit(&mut s);
    s.1
}

#[test]
fn detection_loss_trains_the_encoder_but_not_the_segmentation_decoder() {
    let cfg = ModelConfig::tiny();
    assert_eq!(cfg.detection.input, DetectionInput::EncoderWithSegmentation);
    let device = Default::default();
    let model = seeded_init::<CpuAutodiff>(&cfg, &device, 5).unwrap();
    let cases = crops();
    let (image, targets) = common::batch::<CpuAutodiff>(&cases[..2], &device);
    let features = model.encoder.forward(image.clone());
    let loss = model.task_loss(&cfg, Task::Detection, image, &features, &targets);
    let grads = loss.backward();
    let det = grad_mass::<CpuAutodiff, _>(&model.detection, &grads);
    let enc = grad_mass::<CpuAutodiff, _>(&model.encoder, &grads);
    let seg = grad_mass::<CpuAutodiff, _>(&model.segmentation, &grads);
    assert!(det > 0.0 && enc > 0.0, "detection {det}, encoder {enc}");
    assert_eq!(
        seg, 0.0,
        "the detection loss reached the segmentation decoder"
    );
}

#[test]
fn tiny_detector_boxes_follow_the_tumour() {
    let cfg = ModelConfig::tiny();
    let device = Default::default();
    let cases = crops();
    let truth: Vec<Box3> = cases.iter().map(|c| c.boxes.boxes[0]).collect();
    let mut model = seeded_init::<CpuAutodiff>(&cfg, &device, 1).unwrap();
    let mut trainer = Trainer::new(cfg.clone(), TaskBalancer::Fixed(vec![1.0; 3]), 0.0);
    // the demo's rates: 5e-3 for the encoder and the segmentation, 1e-3 for the detector
    let rates = PartRates {
        encoder: 5e-3,
        segmentation: 5e-3,
        classification: 5e-3,
        detection: 1e-3,
    };
    let steps = 60;
    for step in 0..steps {
        let i = (2 * step) % cases.len();
        let (image, targets) = common::batch::<CpuAutodiff>(&cases[i..i + 2], &device);
        let (m, report) = trainer.step_parts(model, image, &targets, rates);
        model = m;
        if step % 10 == 0 {
            eprintln!("step {step}: losses {:?}", report.losses);
        }
    }

    let infer = inference_model(&model);
    let (image, _) = common::batch::<CpuBackend>(&cases, &device);
    let detections = cfg.detections(&infer.forward(image));
    let top: Vec<Box3> = detections
        .iter()
        .map(|d| {
            *d.boxes
                .first()
                .expect("a detection above the score threshold")
        })
        .collect();
    let ious: Vec<f32> = top.iter().zip(&truth).map(|(p, t)| iou(p, t)).collect();
    let mean = ious.iter().sum::<f32>() / ious.len() as f32;
    eprintln!("top boxes {top:?}\nIoUs {ious:?} (mean {mean:.3})");

    // one box for every input (what the detector learned before) scores at best this well: the
    // training box that fits all the others best
    let constant = truth
        .iter()
        .map(|c| truth.iter().map(|t| iou(c, t)).sum::<f32>() / truth.len() as f32)
        .fold(0.0f32, f32::max);
    assert!(
        mean > constant + 0.2,
        "mean IoU {mean:.3} is not clearly above the best constant box's {constant:.3}"
    );
    assert!(
        ious.iter().all(|&v| v >= 0.5),
        "top-box IoUs on the training crops {ious:?}"
    );
    assert!(mean >= 0.65, "mean top-box IoU {mean:.3}");
}
