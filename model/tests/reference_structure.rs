//! The `reference` preset reproduces the reference implementation's structure: parameter counts of each
//! part and the encoder's output shapes for a 1×4×96³ input.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use mtmed3d_model::summary::trainable_parameters;
use mtmed3d_model::{CpuAutodiff, CpuBackend, ModelConfig};

type B = CpuBackend;

#[test]
fn reference_encoder_has_8_063_154_parameters() {
    let cfg = ModelConfig::reference();
    let encoder = cfg.encoder.init::<B>(&Default::default());
    assert_eq!(encoder.num_params(), 8_063_154);
}

#[test]
fn reference_segmentation_decoder_has_54_128_787_parameters() {
    let cfg = ModelConfig::reference();
    let decoder = cfg.segmentation.init::<B>(&Default::default());
    assert_eq!(decoder.num_params(), 54_128_787);
}

#[test]
fn reference_densenet121_3d_has_11_288_578_parameters() {
    let cfg = ModelConfig::reference();
    let classifier = cfg.classification.init::<CpuAutodiff>(&Default::default());
    assert_eq!(trainable_parameters(&classifier), 11_288_578);
    // burn's num_params also counts the batch norms' running mean and variance
    let running_stats = 2 * 41_824;
    assert_eq!(classifier.num_params(), 11_288_578 + running_stats);
}

#[test]
fn analytic_summary_agrees_with_the_built_modules() {
    for cfg in [ModelConfig::reference(), ModelConfig::tiny()] {
        let s = mtmed3d_model::summary::summary(&cfg).unwrap();
        let device = Default::default();
        let model = cfg.init::<CpuAutodiff>(&device).unwrap();
        let built = [
            trainable_parameters(&model.encoder),
            trainable_parameters(&model.segmentation),
            trainable_parameters(&model.classification),
            trainable_parameters(&model.detection),
        ];
        let counted: Vec<usize> = s.parts.iter().map(|p| p.parameters as usize).collect();
        assert_eq!(counted, built, "preset {}", cfg.name);
    }
}

#[test]
fn reference_encoder_stage_shapes_for_96_cubed() {
    let cfg = ModelConfig::reference();
    let device = Default::default();
    let encoder = cfg.encoder.init::<B>(&device);
    let x = Tensor::<B, 5>::random([1, 4, 96, 96, 96], Distribution::Normal(0.0, 1.0), &device);
    let start = Instant::now();
    let features = encoder.forward(x);
    let dims: Vec<[usize; 5]> = features.hidden.iter().map(|t| t.dims()).collect();
    eprintln!(
        "reference encoder forward, 1×4×96³: {:.2?}",
        start.elapsed()
    );
    assert_eq!(
        dims,
        vec![
            [1, 48, 48, 48, 48],
            [1, 96, 24, 24, 24],
            [1, 192, 12, 12, 12],
            [1, 384, 6, 6, 6],
            [1, 768, 3, 3, 3],
        ]
    );
    // normalised outputs: zero mean, unit variance over channels at every voxel
    let hs4 = features.hidden[4].clone();
    let mean: f32 = hs4.clone().mean_dim(1).abs().max().into_scalar();
    let var: f32 = (hs4.var_bias(1).sub_scalar(1.0)).abs().max().into_scalar();
    assert!(mean < 1e-4 && var < 1e-3, "mean {mean}, var-1 {var}");
}
