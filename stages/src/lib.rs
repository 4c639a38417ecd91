//! Built-in mtmed3d stages, one module per family.
//!
//! [`registry`] lists every built-in component; a pipeline file names them. To add a stage,
//! write its config and implementation in one file and add one line to [`registry`].

pub mod augment;
pub mod basic;
pub mod fields;
pub mod io;
pub mod spatial;

use mtmed3d_pipeline::Registry;

/// Every built-in source, stage and sink.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.source::<basic::SyntheticSource>();
    r.stage::<basic::Scale>();
    r.stage::<basic::RandNoise>();
    r.stage::<basic::FailCases>();
    r.stage::<basic::Delay>();
    r.stage::<augment::RandFlip>();
    r.stage::<augment::RandRot90>();
    r.stage::<augment::RandRotate>();
    r.stage::<augment::RandIntensity>();
    r.sink::<basic::JsonWrite>();
    r.sink::<basic::Discard>();
    r
}
