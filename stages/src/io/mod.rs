//! Reading and writing images: NIfTI, Zarr case stores, synthetic phantoms.

pub mod cache;
pub mod nifti;
pub mod nifti_stages;
pub mod phantom;
pub mod phantom_dataset;
pub mod sources;
pub mod zarr;
