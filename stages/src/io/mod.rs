//! Reading and writing images: NIfTI, synthetic phantoms.

pub mod nifti;
pub mod phantom;
