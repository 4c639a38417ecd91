//! Which input should the grade classifier read? The reference feeds it the raw segmentation logits (with
//! batch norm at batch size 1); the `tiny` preset feeds it sigmoid probabilities concatenated with the
//! image. This trains the `tiny` model (segmentation + classification losses) for a fixed number of steps on
//! a handful of 32³ phantom cases once per variant, from the same initial seed and the same batches, and
//! reports grade accuracy and classification loss on held-out phantoms. The results are in
//! `model/README.md`.
//!
//! Minutes of training per variant, so ignored by default:
//! ```text
//! cargo test --release --test classifier_input -- --ignored --nocapture
//! ```
//! `MTMED3D_CLS_STEPS` (default 150), `MTMED3D_CLS_TRAIN` (training cases, default 8) and
//! `MTMED3D_CLS_SEEDS` (model seeds, default 1) size the run.

use mtmed3d_model::balance::TaskBalancer;
use mtmed3d_model::burn::tensor::backend::Backend;
use mtmed3d_model::burn::tensor::{Tensor, TensorData};
use mtmed3d_model::config::{ClassifierInput, ClassifierNorm};
use mtmed3d_model::decoder::detection::BoxTargets;
use mtmed3d_model::loss::classification_focal_loss;
use mtmed3d_model::training::{Trainer, inference_model};
use mtmed3d_model::{CpuAutodiff, CpuBackend, ModelConfig, Targets};
use mtmed3d_stages::io::phantom::{PhantomConfig, generate_case};

const EDGE: usize = 32;
const VOXELS: usize = EDGE * EDGE * EDGE;

/// A case as model input: z-scored image over brain voxels, TC/WT/ET masks, the WT box, the grade.
struct Case {
    image: Vec<f32>,
    seg: Vec<f32>,
    bbox: [f32; 6],
    grade: usize,
}

fn case(seed: u64, index: usize) -> Case {
    let config = PhantomConfig {
        shape: [EDGE; 3],
        hgg_fraction: 0.5,
        ..PhantomConfig::default()
    };
    let c = generate_case(&config, seed, index);
    let mut image = Vec::with_capacity(4 * VOXELS);
    for m in &c.modalities {
        let v: Vec<f32> = m.iter().copied().collect();
        let brain: Vec<f32> = v.iter().copied().filter(|&x| x != 0.0).collect();
        let n = brain.len().max(1) as f32;
        let mean = brain.iter().sum::<f32>() / n;
        let std = (brain.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        let std = if std > 0.0 { std } else { 1.0 };
        image.extend(
            v.iter()
                .map(|&x| if x == 0.0 { 0.0 } else { (x - mean) / std }),
        );
    }
    let labels: Vec<u8> = c.seg.iter().copied().collect();
    let mut seg = Vec::with_capacity(3 * VOXELS);
    for channel in [&[1u8, 4][..], &[1, 2, 4], &[4]] {
        seg.extend(labels.iter().map(|l| channel.contains(l) as u8 as f32));
    }
    let (mut lo, mut hi) = ([f32::MAX; 3], [f32::MIN; 3]);
    for (i, &l) in labels.iter().enumerate() {
        if l > 0 {
            let p = [i / (EDGE * EDGE), (i / EDGE) % EDGE, i % EDGE];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a] as f32);
                hi[a] = hi[a].max(p[a] as f32 + 1.0);
            }
        }
    }
    assert!(
        lo[0] < hi[0],
        "phantom {index} of series {seed} has no tumour at 32³"
    );
    Case {
        image,
        seg,
        bbox: [lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]],
        grade: c.grade.class_index() as usize,
    }
}

fn batch<B: Backend>(cases: &[&Case], device: &B::Device) -> (Tensor<B, 5>, Targets<B>) {
    let n = cases.len();
    let image: Vec<f32> = cases.iter().flat_map(|c| c.image.clone()).collect();
    let seg: Vec<f32> = cases.iter().flat_map(|c| c.seg.clone()).collect();
    (
        Tensor::from_data(TensorData::new(image, [n, 4, EDGE, EDGE, EDGE]), device),
        Targets {
            seg: Tensor::from_data(TensorData::new(seg, [n, 3, EDGE, EDGE, EDGE]), device),
            grades: cases.iter().map(|c| c.grade).collect(),
            boxes: cases
                .iter()
                .map(|c| BoxTargets {
                    boxes: vec![c.bbox],
                    labels: vec![0],
                })
                .collect(),
        },
    )
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Outcome {
    accuracy: f64,
    loss: f64,
    train_cls_loss: f64,
}

fn train_and_evaluate(
    config: &ModelConfig,
    train: &[Case],
    held_out: &[Case],
    steps: usize,
    seed: u64,
) -> Outcome {
    let device = Default::default();
    CpuAutodiff::seed(&device, seed);
    let mut model = config.init::<CpuAutodiff>(&device).unwrap();
    // segmentation and classification; detection does not feed the classifier
    let mut trainer = Trainer::new(
        config.clone(),
        TaskBalancer::Fixed(vec![1.0, 1.0, 0.0]),
        0.01,
    );
    let mut recent = Vec::new();
    for step in 0..steps {
        // batches of two, cycling through the training cases in a fixed order
        let a = &train[(2 * step) % train.len()];
        let b = &train[(2 * step + 1) % train.len()];
        let (image, targets) = batch::<CpuAutodiff>(&[a, b], &device);
        let (next, report) = trainer.step(model, image, &targets, 1e-3);
        model = next;
        if step + 10 >= steps {
            recent.push(report.losses[1]);
        }
    }
    let inner = inference_model(&model);
    let (mut correct, mut loss) = (0usize, 0.0);
    for c in held_out {
        let (image, targets) = batch::<CpuBackend>(&[c], &device);
        let logits = inner.forward(image).class_logits;
        let predicted = logits
            .clone()
            .argmax(1)
            .into_data()
            .iter::<i64>()
            .next()
            .unwrap_or(-1) as usize;
        correct += (predicted == c.grade) as usize;
        loss += mtmed3d_model::model::scalar(classification_focal_loss(
            logits,
            &targets.grades,
            config.loss.cls_focal_gamma,
        ));
    }
    Outcome {
        accuracy: correct as f64 / held_out.len() as f64,
        loss: loss / held_out.len() as f64,
        train_cls_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
    }
}

#[test]
#[ignore = "trains the tiny model once per variant (minutes); run with --ignored --nocapture"]
fn classifier_inputs_compared_on_held_out_phantoms() {
    let steps = env("MTMED3D_CLS_STEPS", 150);
    let n_train = env("MTMED3D_CLS_TRAIN", 8);
    let seeds = env("MTMED3D_CLS_SEEDS", 1) as u64;
    let train: Vec<Case> = (0..n_train).map(|i| case(11, i)).collect();
    let held_out: Vec<Case> = (0..16).map(|i| case(12, i)).collect();
    let hgg = |cs: &[Case]| cs.iter().filter(|c| c.grade == 1).count();
    println!(
        "train: {} cases ({} HGG), held out: {} ({} HGG), {steps} steps of batch 2, lr 1e-3",
        train.len(),
        hgg(&train),
        held_out.len(),
        hgg(&held_out)
    );
    // majority-class accuracy on the held-out cases: what a classifier that learned nothing scores
    let majority =
        hgg(&held_out).max(held_out.len() - hgg(&held_out)) as f64 / held_out.len() as f64;
    println!("majority-class accuracy on held out: {majority:.3}");
    let variants = [
        (
            "logits, batch norm (reference)",
            ClassifierInput::Logits,
            ClassifierNorm::Batch,
        ),
        (
            "logits, group norm",
            ClassifierInput::Logits,
            ClassifierNorm::Group(4),
        ),
        (
            "probabilities + image, group norm",
            ClassifierInput::ProbabilitiesWithImage,
            ClassifierNorm::Group(4),
        ),
        (
            "probabilities + image, batch norm (tiny)",
            ClassifierInput::ProbabilitiesWithImage,
            ClassifierNorm::Batch,
        ),
    ];
    println!(
        "{:<44}{:>6}{:>10}{:>12}{:>14}",
        "classifier input", "seed", "accuracy", "held loss", "train loss"
    );
    for (name, input, norm) in variants {
        let mut config = ModelConfig::tiny();
        config.classification.input = input;
        config.classification.norm = norm;
        for seed in 0..seeds {
            let o = train_and_evaluate(&config, &train, &held_out, steps, seed);
            println!(
                "{name:<44}{seed:>6}{:>10.3}{:>12.4}{:>14.4}",
                o.accuracy, o.loss, o.train_cls_loss
            );
            assert!(
                o.loss.is_finite() && o.train_cls_loss.is_finite(),
                "{name}: loss diverged"
            );
        }
    }
}
