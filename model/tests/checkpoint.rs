//! Checkpoints keep the configuration and refuse a mismatched one.

use burn::tensor::{Distribution, Tensor, Tolerance};
use mtmed3d_model::checkpoint::{load, load_with_stored_config, read_config, save};
use mtmed3d_model::{CpuBackend, ModelConfig, ModelError};

type B = CpuBackend;

#[test]
fn save_then_load_reproduces_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.ckpt");
    let cfg = ModelConfig::tiny();
    let device = Default::default();
    let model = cfg.init::<B>(&device).unwrap();
    save(&model, &cfg, &path).unwrap();
    assert_eq!(read_config(&path).unwrap(), cfg);

    let (loaded, stored) = load_with_stored_config::<B>(&path, &device).unwrap();
    assert_eq!(stored, cfg);
    let x = Tensor::<B, 5>::random([1, 4, 32, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let a = model.forward(x.clone());
    let b = loaded.forward(x);
    // flex may split reductions differently between runs: equal up to rounding
    let tol = Tolerance::<f32>::absolute(1e-4);
    a.seg_logits
        .into_data()
        .assert_approx_eq::<f32>(&b.seg_logits.into_data(), tol);
    a.class_logits
        .into_data()
        .assert_approx_eq::<f32>(&b.class_logits.into_data(), tol);
}

#[test]
fn a_mismatched_configuration_is_refused_naming_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.ckpt");
    let cfg = ModelConfig::tiny();
    let model = cfg.init::<B>(&Default::default()).unwrap();
    save(&model, &cfg, &path).unwrap();

    let mut other = ModelConfig::tiny();
    other.encoder.window_size = 7;
    let err = load::<B>(&path, &other, &Default::default()).unwrap_err();
    match &err {
        ModelError::ConfigMismatch {
            field,
            saved,
            expected,
            ..
        } => {
            assert_eq!(field, "encoder.window_size");
            assert_eq!(saved, "4");
            assert_eq!(expected, "7");
        }
        e => panic!("unexpected error {e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("`encoder.window_size` is 4 in the checkpoint but 7"),
        "{msg}"
    );
}

#[test]
fn a_foreign_file_is_not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.ckpt");
    std::fs::write(&path, b"not a checkpoint at all").unwrap();
    let err = read_config(&path).unwrap_err();
    assert!(matches!(err, ModelError::CorruptCheckpoint { .. }), "{err}");
}
