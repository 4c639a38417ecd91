//! Built-in mtmed3d stages, one module per family.
//!
//! [`registry`] lists every built-in component; a pipeline file names them. To add a stage,
//! write its config and implementation in one file and add one line to [`registry`].

pub mod augment;
pub mod basic;
pub mod eval;
pub mod fields;
pub mod intensity;
pub mod io;
pub mod labels;
#[cfg(feature = "learn")]
pub mod learn;
pub mod memory;
pub mod postprocess;
pub mod spatial;

use mtmed3d_pipeline::Registry;

/// Every built-in source, stage and sink.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.source::<basic::SyntheticSource>();
    r.source::<io::sources::BratsSource>();
    r.source::<io::sources::NiftiFilesSource>();
    r.source::<io::sources::ManifestSource>();
    r.source::<io::sources::PhantomSource>();
    r.source::<io::zarr::source::ZarrRead>();
    r.stage::<basic::Scale>();
    r.stage::<basic::RandNoise>();
    r.stage::<basic::FailCases>();
    r.stage::<basic::Delay>();
    r.stage::<io::nifti_stages::NiftiDecode>();
    r.stage::<spatial::reorient::Reorient>();
    r.stage::<intensity::Normalise>();
    r.stage::<spatial::crop::Crop>();
    r.stage::<spatial::crop::RandCrop>();
    r.stage::<spatial::crop::Patches>();
    r.stage::<labels::BratsRegions>();
    r.stage::<labels::Boxes>();
    r.stage::<postprocess::KeepLargestComponent>();
    r.stage::<io::cache::Cache>();
    r.stage::<augment::RandFlip>();
    r.stage::<augment::RandRot90>();
    r.stage::<augment::RandRotate>();
    r.stage::<augment::RandIntensity>();
    #[cfg(feature = "learn")]
    r.stage::<learn::infer::Infer>();
    r.sink::<basic::JsonWrite>();
    r.sink::<basic::Discard>();
    r.sink::<io::nifti_stages::NiftiWrite>();
    r.sink::<eval::sink::Metrics>();
    r.sink::<eval::writers::BoxesJson>();
    r.sink::<eval::writers::PngOverlay>();
    r.sink::<io::zarr::sink::ZarrWrite>();
    #[cfg(feature = "learn")]
    r.sink::<learn::train::Train>();
    r
}
