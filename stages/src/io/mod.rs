//! Reading and writing images: NIfTI, synthetic phantoms.

pub mod nifti;
pub mod nifti_stages;
pub mod phantom;
pub mod phantom_dataset;
pub mod sources;
